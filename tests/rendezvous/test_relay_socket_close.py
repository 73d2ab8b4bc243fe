"""A relay socket's answers to a hostile or broken peer, on a real socket pair: a
framing error ends the connection without waiting for a reply it will never read, pings
never make it buffer more than one pong, a connection whose peer stops reading is
dropped a bounded time after the close, and a TLS transport is never written around."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from typing import Any

import pytest
from rendezvous_support import client_frame, feed, server_frame

from exec_server.rendezvous import relay_socket
from exec_server.rendezvous.relay_socket import RelaySocket
from exec_server.rendezvous.url_signing import UrlRole

WAIT_S = 10.0


class Far:
    """The client's end of the pair (it reads only when told to)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._buffer = b""

    async def frame(self) -> tuple[int, bytes] | None:
        """The next frame the relay socket wrote (first byte, payload); None at EOF."""
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(WAIT_S):
            while True:
                parsed = server_frame(self._buffer)
                if parsed is not None:
                    first, payload, self._buffer = parsed
                    return first, payload
                chunk = await loop.sock_recv(self.sock, 65536)
                if not chunk:
                    return None
                self._buffer += chunk


@pytest.fixture
async def pair() -> AsyncIterator[tuple[RelaySocket, Far]]:
    ours, theirs = socket.socketpair()
    theirs.setblocking(False)
    sock = RelaySocket(UrlRole.HARNESS, "env", False, 1 << 20, lambda s: None)
    transport, _ = await asyncio.get_running_loop().connect_accepted_socket(lambda: sock, ours)
    yield sock, Far(theirs)
    transport.abort()
    theirs.close()
    await asyncio.sleep(0)


async def test_a_framing_error_half_closes_without_waiting_for_the_reply(
    pair: tuple[RelaySocket, Far],
) -> None:
    """After a framing error the reader reads nothing more (RFC 6455 7.1.7), so no
    close reply can be waited for: the close frame is followed by the end of the
    stream at once, and a peer that then closes its end ends the connection."""
    sock, far = pair
    feed(sock, client_frame(b"x", 0xC2))  # a reserved bit: 1002
    first, payload = await far.frame() or (0, b"")
    assert (first, payload[:2]) == (0x88, (1002).to_bytes(2, "big"))
    assert await far.frame() is None, "the close frame must be followed by the end of stream"
    far.sock.close()
    async with asyncio.timeout(WAIT_S):
        await sock.close()
    assert sock._disconnected.is_set()


async def test_a_ping_flood_is_answered_with_one_pong_per_read(
    pair: tuple[RelaySocket, Far],
) -> None:
    """A peer may answer only the latest of the pings it has not answered yet (RFC 6455
    5.5.3): one read of a thousand pings costs one pong, with the last ping's payload."""
    sock, far = pair
    pings = b"".join(client_frame(i.to_bytes(2, "big"), 0x89) for i in range(1000))
    buffer = sock.get_buffer(-1)
    assert len(buffer) >= len(pings)
    buffer[: len(pings)] = pings
    sock.buffer_updated(len(pings))
    feed(sock, client_frame(b"end", 0x89))
    assert await far.frame() == (0x8A, (999).to_bytes(2, "big"))
    assert await far.frame() == (0x8A, b"end")


async def test_pings_while_writing_is_paused_leave_one_pong_for_later(
    pair: tuple[RelaySocket, Far],
) -> None:
    """While the transport is paused for writing (the peer reads nothing), pings
    buffer nothing: the latest one is answered once writing resumes."""
    sock, far = pair
    sock.pause_writing()
    for i in range(100):
        feed(sock, client_frame(b"p" * 120 + i.to_bytes(2, "big"), 0x89))
    await asyncio.sleep(0)
    with pytest.raises(BlockingIOError):
        far.sock.recv(1)  # nothing was written while paused
    sock.resume_writing()
    assert await far.frame() == (0x8A, b"p" * 120 + (99).to_bytes(2, "big"))


async def test_a_closed_connection_whose_peer_reads_nothing_is_dropped(
    pair: tuple[RelaySocket, Far], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A graceful close waits for the written bytes to leave, which they never do when
    the peer stops reading: the connection is dropped a bounded time after the close."""
    monkeypatch.setattr(relay_socket, "SOCKET_CLOSE_TIMEOUT_S", 0.05)
    sock, _far = pair
    while sock._writable.is_set():
        assert sock.write_now(b"x" * 65536)
    async with asyncio.timeout(WAIT_S):
        await sock.close()
        await sock._disconnected.wait()


class _TlsTransport(asyncio.Transport):
    """What an SSL transport reports: the raw socket under it, and its SSL context."""

    def __init__(self, raw: socket.socket) -> None:
        super().__init__()
        self._raw = raw
        self.written: list[bytes] = []

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"socket": self._raw, "sslcontext": object(), "peername": None}.get(name, default)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written.append(bytes(data))

    def get_write_buffer_size(self) -> int:
        return 0

    def is_closing(self) -> bool:
        return False


async def test_a_tls_transport_is_never_written_around() -> None:
    """Frames go to the kernel directly only on a plain socket: on a TLS one they
    would leave unencrypted, so everything goes through the transport."""
    ours, theirs = socket.socketpair()
    with ours, theirs:
        theirs.setblocking(False)
        transport = _TlsTransport(ours)
        sock = RelaySocket(UrlRole.HARNESS, "env", False, 1 << 20, lambda s: None)
        sock.connection_made(transport)
        assert sock.write_now(b"y" * 40_000)
        with pytest.raises(BlockingIOError):
            theirs.recv(65536)
        assert b"".join(transport.written).endswith(b"y" * 40_000)
