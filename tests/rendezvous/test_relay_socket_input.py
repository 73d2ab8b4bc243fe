"""Input rules of the picows sockets, fed frames directly (no network): waiting
messages are bounded by count as well as bytes, and framing errors close with 1002."""

from __future__ import annotations

from dataclasses import dataclass, field

import picows
import pytest
from rendezvous_support import PicowsFrame as Frame
from rendezvous_support import client_frame, feed

from exec_server.environment import ws_listener
from exec_server.environment.ws_listener import WebSocketServerChannel
from exec_server.rendezvous import relay_socket
from exec_server.rendezvous.relay_socket import RelaySocket
from exec_server.rendezvous.url_signing import UrlRole
from exec_server.transport.read_inbox import MESSAGE_OVERHEAD_BYTES

B = picows.WSMsgType.BINARY
T = picows.WSMsgType.TEXT
C = picows.WSMsgType.CONTINUATION


@dataclass
class Transport:
    closes: list[int] = field(default_factory=list)
    is_close_frame_sent: bool = False

    def send_close(self, code: picows.WSCloseCode, message: bytes = b"") -> None:
        self.closes.append(int(code.value))
        self.is_close_frame_sent = True

    def disconnect(self) -> None:
        pass


def _relay_socket() -> tuple[RelaySocket, list[bool], list[int]]:
    sock = RelaySocket(UrlRole.HARNESS, "env", False, 1 << 20, lambda s: None)
    paused: list[bool] = []
    closes: list[int] = []
    sock._pause_reading = paused.append  # type: ignore[method-assign]
    sock._send_close = lambda code, message: closes.append(code)  # type: ignore[method-assign,assignment]
    return sock, paused, closes


async def test_relay_socket_stops_reading_on_many_empty_messages() -> None:
    sock, paused, _ = _relay_socket()
    limit = relay_socket.MAX_INBOX_BYTES // MESSAGE_OVERHEAD_BYTES
    feed(sock, client_frame(b"") * (limit + 1))
    assert paused == [True], "empty frames must count against the inbox bound"


@pytest.mark.parametrize(
    "frames",
    [
        [client_frame(b"x", 0xC2)],
        [client_frame(b"a", 0x02), client_frame(b"b")],
        [client_frame(b"a", 0x02), client_frame(b"b", 0x81)],
        [client_frame(b"b", 0x80)],
    ],
    ids=["reserved-bit", "binary-inside-fragments", "text-inside-fragments", "lone-continuation"],
)
async def test_relay_socket_framing_errors_close_with_1002(frames: list[bytes]) -> None:
    sock, _, closes = _relay_socket()
    feed(sock, b"".join(frames))
    assert closes == [1002]
    assert not sock._inbox


def _channel() -> tuple[WebSocketServerChannel, list[bool]]:
    channel = WebSocketServerChannel(1 << 20, lambda c: None)
    paused: list[bool] = []
    channel._pause_reading = paused.append  # type: ignore[method-assign]
    return channel, paused


async def test_local_listener_stops_reading_on_many_empty_messages() -> None:
    channel, paused = _channel()
    limit = ws_listener.MAX_INBOX_BYTES // MESSAGE_OVERHEAD_BYTES
    for _ in range(limit + 1):
        channel.on_ws_frame(Transport(), Frame(B))  # type: ignore[arg-type]
    assert paused == [True]
    while channel.take() is not None:
        pass
    assert channel._inbox.counted == 0


@pytest.mark.parametrize(
    "frames",
    [
        [Frame(T, b"{}", rsv1=True)],
        [Frame(T, b"{", fin=False), Frame(T, b"}")],
        [Frame(C, b"{}")],
    ],
    ids=["reserved-bit", "text-inside-fragments", "lone-continuation"],
)
async def test_local_listener_framing_errors_close_with_1002(frames: list[Frame]) -> None:
    channel, _ = _channel()
    transport = Transport()
    for frame in frames:
        channel.on_ws_frame(transport, frame)  # type: ignore[arg-type]
    assert transport.closes == [1002]
    assert channel.take() is None
    assert channel.end_reason is not None


async def test_local_listener_delivers_nothing_after_a_failure() -> None:
    channel, _ = _channel()
    transport = Transport()
    channel.on_ws_frame(transport, Frame(T, b"\xff"))  # type: ignore[arg-type]
    assert transport.closes == [1007]
    channel.on_ws_frame(transport, Frame(T, b"{}"))  # type: ignore[arg-type]
    assert channel.take() is None
