"""WHATWG URL parsing for ``http/request``.

Each expectation is what Codex 0.133 reported for the same ``http/request`` URL:
``url is invalid: <reason>``, or the normalized URL it named in ``error sending request
for url (<url>)`` (probed 2026-11-24 against the binary).
"""

from __future__ import annotations

import pytest

from exec_server.environment.http_url import Url, UrlError, parse_url

CASES = {
    # Relative or missing scheme.
    "": "E relative URL without a base",
    " ": "E relative URL without a base",
    "/x": "E relative URL without a base",
    "example.com/x": "E relative URL without a base",
    # Authority.
    "http://": "E empty host",
    "http://:80/": "E empty host",
    "http://user:pw@/": "E empty host",
    "http:///x": "http://x/",
    "http://@127.0.0.1:8/": "http://127.0.0.1:8/",
    "http://user:pa ss@a:1/": "http://user:pa%20ss@a:1/",
    # Ports.
    "http://a:99999/": "E invalid port number",
    "http://a:-1/": "E invalid port number",
    "http://a:8x/": "E invalid port number",
    "http://a:/x": "http://a/x",
    "http://a:80/": "http://a/",
    "https://a:443/": "https://a/",
    "http://127.0.0.1:9": "http://127.0.0.1:9/",
    # IPv6.
    "http://[::1": "E invalid IPv6 address",
    "http://[::1]x/": "E invalid IPv6 address",
    "http://[1:2]/": "E invalid IPv6 address",
    "http://[::ffff:127.0.0.1]:1/": "http://[::ffff:7f00:1]:1/",
    "http://[0:0:0:0:0:0:0:1]:1/": "http://[::1]:1/",
    # IPv4, WHATWG style.
    "http://999.1.1.1/": "E invalid IPv4 address",
    "http://1.2.3.4.5/": "E invalid IPv4 address",
    "http://256.0.0.1:1/": "E invalid IPv4 address",
    "http://0x100000000:1/": "E invalid IPv4 address",
    "http://08:1/": "E invalid IPv4 address",
    "http://1.2.3.09:1/": "E invalid IPv4 address",
    "http://0x7f.1:8/ok": "http://127.0.0.1:8/ok",
    "http://4294967295:1/": "http://255.255.255.255:1/",
    "http://1.2.3.4.:1/": "http://1.2.3.4:1/",
    # Domains.
    "http://exa mple.com/": "E invalid international domain name",
    "http://a%20b/": "E invalid international domain name",
    "http://a<b/": "E invalid international domain name",
    "http://a^b:1/": "E invalid international domain name",
    "http://a|b:1/": "E invalid international domain name",
    "http://a%:1/": "E invalid international domain name",
    "http://xn--a/": "E invalid international domain name",
    "http://\u00fc.com:1/": "http://xn--tda.com:1/",
    "http://%41:1/": "http://a:1/",
    "http://A.COM.:1/": "http://a.com.:1/",
    "http://a..b:1/": "http://a..b:1/",
    "http://-a.b:1/": "http://-a.b:1/",
    "http://a_b:1/": "http://a_b:1/",
    "http://a*b:1/": "http://a*b:1/",
    "http://a\tb:1/": "http://ab:1/",
    # Other schemes are parsed only far enough to be refused by name.
    "mailto:x": "mailto:x",
    "ftp://": "E empty host",
    "ws://a/": "ws://a/",
    # Normalization of the rest.
    "\t http://127.0.0.1:1/ \n": "http://127.0.0.1:1/",
    "HTTP://h:8/A B?q=a b#frag": "http://h:8/A%20B?q=a%20b#frag",
    "http:h:8/x": "http://h:8/x",
    "http:\\\\h:8\\y\\..\\z": "http://h:8/z",
    "http://h/%zz/\u00fc/\"<>`{}'?q='\"<>`{}\u00fc": (
        "http://h/%zz/%C3%BC/%22%3C%3E%60%7B%7D'?q=%27%22%3C%3E`{}%C3%BC"
    ),
    "http://a.b/%2e%2E/c/./d/../e:1": "http://a.b/c/e:1",
    "http://a:1/p/%2e%2E/c/./d/../e": "http://a:1/c/e",
}


def outcome(text: str, base: Url | None = None) -> str:
    try:
        return str(parse_url(text, base))
    except UrlError as exc:
        return f"E {exc}"


@pytest.mark.parametrize(("text", "expected"), list(CASES.items()))
def test_parse_like_codex(text: str, expected: str) -> None:
    assert outcome(text) == expected


@pytest.mark.parametrize(
    ("location", "expected"),
    [
        ("/t", "http://h:1/t"),
        ("t", "http://h:1/a/t"),
        ("../t", "http://h:1/t"),
        (".", "http://h:1/a/"),
        ("?x", "http://h:1/a/b?x"),
        ("#g", "http://h:1/a/b?q#g"),
        ("", "http://h:1/a/b?q"),
        ("//o/p", "http://o/p"),
        ("\\\\o\\p", "http://o/p"),
        ("http:t", "http://h:1/a/t"),
        ("https://z/", "https://z/"),
        ("ftp://x/", "ftp://x/"),
        ("http://[bad", "E invalid IPv6 address"),
    ],
)
def test_relative_to_a_base(location: str, expected: str) -> None:
    """Redirect ``Location`` values resolve against the URL that answered."""
    assert outcome(location, parse_url("http://h:1/a/b?q#f")) == expected


def test_parts() -> None:
    url = parse_url("http://us%65r:p%3A@[::1]:8080/a?b#c")
    assert (url.scheme, url.host, url.port, url.effective_port) == ("http", "[::1]", 8080, 8080)
    assert (url.username, url.password) == ("us%65r", "p%3A")
    assert (url.authority, url.target) == ("[::1]:8080", "/a?b")
    assert str(url.without_credentials()) == "http://[::1]:8080/a?b#c"
    assert parse_url("https://h/").effective_port == 443
    assert parse_url("http://h:80/").origin_key() == parse_url("http://h/").origin_key()
