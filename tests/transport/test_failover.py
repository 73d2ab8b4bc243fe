"""Several rendezvous base URLs: parsing, moving on, and relay URLs on another node."""

from __future__ import annotations

import pytest

from exec_server.transport.failover import Failover, parse_base_urls, rebase_url


def test_base_urls_are_trimmed_deduplicated_and_required() -> None:
    assert parse_base_urls(" http://a:1/ , http://b:2,,http://a:1") == ("http://a:1", "http://b:2")
    assert parse_base_urls(["https://x"]) == ("https://x",)
    with pytest.raises(ValueError):
        parse_base_urls(" , ")


def test_failover_goes_round_and_says_when_a_whole_round_failed() -> None:
    nodes = Failover("http://a,http://b,http://c")
    assert nodes.current == "http://a" and nodes.others() == ["http://b", "http://c"]
    assert not nodes.failed() and nodes.current == "http://b"
    assert not nodes.failed() and nodes.current == "http://c"
    assert nodes.failed() and nodes.current == "http://a"  # all three failed: back off
    assert not nodes.failed()
    nodes.succeeded()  # b worked: a new round starts from it
    assert nodes.current == "http://b" and nodes.others() == ["http://c", "http://a"]
    assert not nodes.failed() and not nodes.failed() and nodes.failed()


def test_a_relay_url_is_rebased_onto_another_node() -> None:
    url = "wss://one.example/prefix/relay/env-1?role=harness&exp=9&nonce=n&sig=s"
    assert rebase_url(url, "http://10.0.0.2:7000") == (
        "ws://10.0.0.2:7000/relay/env-1?role=harness&exp=9&nonce=n&sig=s"
    )
    assert rebase_url(url, "https://two.example/other/") == (
        "wss://two.example/other/relay/env-1?role=harness&exp=9&nonce=n&sig=s"
    )
    with pytest.raises(ValueError):
        rebase_url("ws://one/not-a-relay", "http://two")
