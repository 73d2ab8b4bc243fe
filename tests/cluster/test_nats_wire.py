"""The core NATS protocol without sockets: parsing split anywhere, encoding, errors."""

from __future__ import annotations

import itertools
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from exec_server.rendezvous.cluster.nats_wire import (
    MAX_CONTROL_LINE,
    MAX_PAYLOAD_CEILING,
    OK,
    PING,
    PONG,
    ConnectOptions,
    Event,
    Msg,
    Parser,
    ProtocolError,
    ServerError,
    ServerInfo,
    connect_command,
    publish_parts,
    sub_command,
    unsub_command,
)

INFO = b'INFO {"server_id":"S1","version":"2.10.0","max_payload":4096,"headers":true}\r\n'
STREAM = (
    INFO
    + b"PING\r\n+OK\r\n"
    + b"MSG a.b 1 5\r\nhello\r\n"
    + b"MSG a.c 2 reply.to 4\r\n\r\n\r\n\r\n"  # a payload that is itself CRLFs
    + b"HMSG h.x 3 33 36\r\nNATS/1.0\r\nExs: env h n1-1 1 7\r\n\r\nabc\r\n"
    + b"HMSG h.y 3 _INBOX.1 16 16\r\nNATS/1.0 503\r\n\r\n\r\n"
    + b"MSG empty 4 0\r\n\r\n"
    + b"PONG\r\n-ERR 'Permissions Violation for Publish to \"x\"'\r\n"
)


def describe(events: list[Event]) -> list[object]:
    out: list[object] = []
    for event in events:
        if isinstance(event, Msg):
            out.append(
                (
                    "msg",
                    event.subject,
                    event.sid,
                    event.reply,
                    event.data,
                    event.headers,
                    event.status,
                )
            )
        else:
            out.append(event)
    return out


EXPECTED = [
    ServerInfo(server_id="S1", version="2.10.0", max_payload=4096, headers=True),
    PING,
    OK,
    ("msg", "a.b", 1, None, b"hello", None, None),
    ("msg", "a.c", 2, "reply.to", b"\r\n\r\n", None, None),
    ("msg", "h.x", 3, None, b"abc", {"Exs": "env h n1-1 1 7"}, None),
    ("msg", "h.y", 3, "_INBOX.1", b"", {}, "503"),
    ("msg", "empty", 4, None, b"", None, None),
    PONG,
    ServerError('Permissions Violation for Publish to "x"'),
]


def test_a_stream_in_one_read() -> None:
    parser = Parser()
    assert describe(parser.feed(STREAM)) == EXPECTED
    assert parser.buffered == 0
    assert parser.max_payload == 4096  # taken from INFO


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=len(STREAM)), max_size=40))
def test_any_split_gives_the_same_events(cuts: list[int]) -> None:
    parser = Parser()
    events: list[Event] = []
    points = [0, *sorted(cuts), len(STREAM)]
    for start, stop in itertools.pairwise(points):
        events.extend(parser.feed(STREAM[start:stop]))
    assert describe(events) == EXPECTED
    assert parser.buffered == 0


@settings(max_examples=200, deadline=None)
@given(
    payloads=st.lists(st.binary(max_size=300), min_size=1, max_size=8),
    header_value=st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126), max_size=40),
    chunk=st.integers(min_value=1, max_value=97),
)
def test_what_we_publish_parses_back_as_delivered(
    payloads: list[bytes], header_value: str, chunk: int
) -> None:
    """HPUB/PUB as we write them, turned into what the server delivers (HMSG/MSG with a
    sid), parse back to the same payloads and headers, whatever the read size."""
    wire = b""
    for index, payload in enumerate(payloads):
        headers = {"Exs": header_value} if index % 2 else None
        head, body = publish_parts(f"sub.{index}", payload, headers)
        verb, subject, *sizes = head.split(b"\r\n", 1)[0].split()
        delivered = b"%s %s 9 %s\r\n" % (
            b"HMSG" if verb == b"HPUB" else b"MSG",
            subject,
            b" ".join(sizes),
        )
        wire += delivered + head.split(b"\r\n", 1)[1] + body + b"\r\n"
    parser = Parser()
    events: list[Event] = []
    for start in range(0, len(wire), chunk):
        events.extend(parser.feed(wire[start : start + chunk]))
    assert [e.data for e in events if isinstance(e, Msg)] == payloads
    for index, event in enumerate(events):
        assert isinstance(event, Msg)
        assert event.subject == f"sub.{index}" and event.sid == 9
        assert event.headers == ({"Exs": header_value} if index % 2 else None)


def test_a_large_payload_in_many_reads_is_not_reparsed_each_time() -> None:
    parser = Parser(max_payload=1 << 20)
    payload = bytes(range(256)) * 4096
    wire = b"MSG big 1 %d\r\n" % len(payload) + payload + b"\r\n"
    events: list[Event] = []
    for start in range(0, len(wire), 1000):
        events.extend(parser.feed(wire[start : start + 1000]))
        if start + 1000 < len(wire):
            assert events == []
    assert len(events) == 1 and isinstance(events[0], Msg) and events[0].data == payload


@pytest.mark.parametrize(
    ("wire", "reason"),
    [
        (b"BOGUS\r\n", "unknown protocol line"),
        (b"MSG a\r\n", "malformed message line"),
        (b"MSG a 1 x\r\n", "malformed message line"),
        (b"HMSG a 1 10 5\r\n", "malformed message line"),
        (b"MSG a 1 3\r\nabcXY", "does not end with CRLF"),
        (b"MSG a 1 2000000\r\n", "above the server's max_payload"),
        (b"INFO not json\r\n", "INFO is not JSON"),
        (b"INFO []\r\n", "not a JSON object"),
        (b'INFO {"max_payload": -1}\r\n', "invalid max_payload"),
        (b"HMSG a 1 6 6\r\nHTTP/1\r\n\r\n", "without NATS/1.0"),
        (b"HMSG a 1 21 21\r\nNATS/1.0\r\nnocolon\r\n\r\n\r\n", "malformed message header"),
    ],
)
def test_what_is_not_the_protocol_is_refused(wire: bytes, reason: str) -> None:
    with pytest.raises(ProtocolError, match=reason):
        Parser().feed(wire)


def test_bytes_that_are_not_text_where_text_belongs_are_a_protocol_error() -> None:
    """A subject or reply that is not UTF-8 is the server breaking the protocol: a
    ProtocolError (the connection drops and redials), not a UnicodeDecodeError escaping
    the socket's read."""
    for wire in (b"MSG \xff.x 1 0\r\n\r\n", b"MSG a 1 \xfe 0\r\n\r\n"):
        with pytest.raises(ProtocolError, match="not UTF-8"):
            Parser().feed(wire)


def test_a_server_cannot_announce_an_unbounded_max_payload() -> None:
    """The parser holds one message whole, up to the announced max_payload: an INFO
    above NATS's own ceiling (or not a number) is refused, so memory stays bounded."""
    Parser().feed(b'INFO {"max_payload": %d}\r\n' % MAX_PAYLOAD_CEILING)
    for bad in (MAX_PAYLOAD_CEILING + 1, 1 << 40, "true"):
        with pytest.raises(ProtocolError, match="invalid max_payload"):
            Parser().feed(b'INFO {"max_payload": %s}\r\n' % str(bad).encode())


def test_a_control_line_without_end_is_bounded() -> None:
    parser = Parser()
    parser.feed(b"INFO " + b"x" * 1000)
    with pytest.raises(ProtocolError, match="longer than the limit"):
        parser.feed(b"x" * MAX_CONTROL_LINE)


def test_server_errors_say_whether_they_close_the_connection() -> None:
    assert not ServerError("Permissions Violation for Publish to x").closes_connection
    assert ServerError("Stale Connection").closes_connection
    assert ServerError("Slow Consumer").closes_connection
    assert ServerError("Maximum Payload Violation").closes_connection
    # nats-server keeps the connection after these (client.go maxSubsExceeded).
    assert not ServerError("maximum subscriptions exceeded").closes_connection
    assert not ServerError("Invalid Subject").closes_connection
    assert ServerError("Authorization Violation").is_authorization
    assert not ServerError("Maximum Payload Violation").is_authorization


def test_commands() -> None:
    assert sub_command("a.*.c", 7) == b"SUB a.*.c 7\r\n"
    assert sub_command("a.>", 8, "workers") == b"SUB a.> workers 8\r\n"
    assert unsub_command(7) == b"UNSUB 7\r\n"
    assert unsub_command(7, 3) == b"UNSUB 7 3\r\n"
    assert publish_parts("s.t", b"hi") == (b"PUB s.t 2\r\n", b"hi")
    head, body = publish_parts("s.t", b"hi", {"Exs": "a b"})
    assert head == b"HPUB s.t 22 24\r\nNATS/1.0\r\nExs: a b\r\n\r\n" and body == b"hi"
    for bad in ("", "a b", "a\r\nPUB x 1"):
        with pytest.raises(ValueError, match="invalid NATS subject"):
            publish_parts(bad, b"")
    with pytest.raises(ValueError, match="header name"):
        publish_parts("s", b"", {"a:b": "c"})
    with pytest.raises(ValueError, match="line break"):
        publish_parts("s", b"", {"k": "v\r\nX: y"})


def test_connect_command() -> None:
    line = connect_command(ConnectOptions(name="n", user="u", password="p", echo=False), "1.2")
    assert line.startswith(b"CONNECT ") and line.endswith(b"\r\n")
    body = json.loads(line[8:])
    assert body["verbose"] is False and body["pedantic"] is False
    assert body["headers"] is True and body["echo"] is False and body["protocol"] == 1
    assert (body["user"], body["pass"], body["name"], body["version"]) == ("u", "p", "n", "1.2")
    assert "auth_token" not in body
    token = json.loads(connect_command(ConnectOptions(token="t"), "1")[8:])
    assert token["auth_token"] == "t" and "user" not in token


def test_single_message_reads_parse_the_same_as_the_loop() -> None:
    """A read holding exactly one HMSG takes a shorter path once its subject is known;
    it gives what the general loop gives, and anything irregular still goes through the
    loop's checks."""
    parser = Parser()
    first = b"HMSG f.n1.n2 7 33 37\r\nNATS/1.0\r\nExs: env h n2-1 1 1\r\n\r\nbody\r\n"
    for read in (first, first, first.replace(b"Exs: env h n2-1 1 1", b"Exs: env h n2-1 1 2")):
        (event,) = parser.feed(read)
        assert isinstance(event, Msg)
        assert (event.subject, event.sid, event.reply, event.data) == ("f.n1.n2", 7, None, b"body")
        assert event.headers is not None and event.headers["Exs"].startswith("env h n2-1 1 ")
    two = first + first
    assert len(parser.feed(two)) == 2
    status = b"HMSG f.n1.n2 7 16 16\r\nNATS/1.0 503\r\n\r\n\r\n"
    (event,) = parser.feed(status)
    assert isinstance(event, Msg) and event.status == "503" and event.headers == {}
    with pytest.raises(ProtocolError, match="does not end with CRLF"):
        parser.feed(first[:-2] + b"XY")
    with pytest.raises(ProtocolError, match="above the server's max_payload"):
        Parser(max_payload=2).feed(first)
