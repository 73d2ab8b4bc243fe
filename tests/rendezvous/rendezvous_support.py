"""Test support: raw HTTP and websocket clients speaking to a :class:`RendezvousServer`.

Relay traffic here is built with :mod:`exec_server.relay.frame_codec` and sent over plain
aiohttp websockets (no compression), the way a Codex peer talks to a rendezvous.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import picows
from aiohttp import WSMsgType

from exec_server.relay.frame_codec import (
    RelayFrame,
    data_frame,
    decode_frame,
    encode_frame,
    reset_frame,
    resume_frame,
)
from exec_server.rendezvous import RendezvousServer

TOKEN = "test-rendezvous-token"
WAIT_S = 5.0
"""Upper bound on any single wait in these tests."""

Ws = aiohttp.ClientWebSocketResponse
MakeRendezvous = Callable[..., Awaitable[RendezvousServer]]
"""The ``make_rendezvous`` fixture: keyword overrides of :class:`RendezvousConfig`."""


def auth(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def register(
    http: aiohttp.ClientSession,
    base_url: str,
    environment_id: str,
    *,
    flavour: str = "environment",
    token: str = TOKEN,
) -> str:
    async with http.post(
        f"{base_url}/cloud/{flavour}/{environment_id}/register", headers=auth(token)
    ) as resp:
        assert resp.status == 200, await resp.text()
        body = await resp.json()
    url: str = body["url"]
    return url


async def harness_url(
    http: aiohttp.ClientSession, base_url: str, environment_id: str, token: str = TOKEN
) -> str:
    async with http.post(
        f"{base_url}/cloud/environment/{environment_id}/connect", headers=auth(token)
    ) as resp:
        assert resp.status == 200, await resp.text()
        body = await resp.json()
    url: str = body["url"]
    return url


async def dial(http: aiohttp.ClientSession, url: str) -> Ws:
    return await asyncio.wait_for(
        http.ws_connect(url, compress=0, max_msg_size=0, autoping=True), WAIT_S
    )


def data(stream_id: str, seq: int, payload: bytes) -> bytes:
    return encode_frame(data_frame(stream_id, seq, payload))


def resume(stream_id: str) -> bytes:
    return encode_frame(resume_frame(stream_id, 0))


def reset(stream_id: str, reason: str) -> bytes:
    return encode_frame(reset_frame(stream_id, reason))


async def recv_bytes(ws: Ws, timeout: float = WAIT_S) -> bytes:
    """The next binary message (fails on anything else)."""
    msg = await asyncio.wait_for(ws.receive(), timeout)
    assert msg.type is WSMsgType.BINARY, f"expected a binary message, got {msg.type} {msg.data!r}"
    payload: bytes = msg.data
    return payload


async def recv_frame(ws: Ws, timeout: float = WAIT_S) -> RelayFrame:
    return decode_frame(await recv_bytes(ws, timeout))


async def expect_reset(ws: Ws, stream_id: str, reason: str, timeout: float = WAIT_S) -> None:
    frame = await recv_frame(ws, timeout)
    assert frame.kind == "reset", frame
    assert (frame.stream_id, frame.reset.reason) == (stream_id, reason)


async def expect_silence(ws: Ws, seconds: float = 0.2) -> None:
    """Nothing arrives on ``ws`` for ``seconds``."""
    with contextlib.suppress(TimeoutError):
        msg = await asyncio.wait_for(ws.receive(), seconds)
        raise AssertionError(f"unexpected message {msg.type}: {msg.data!r}")


async def scrape(http: aiohttp.ClientSession, base_url: str) -> dict[str, float]:
    """``/metrics`` as ``{"name{labels}": value}``."""
    async with http.get(f"{base_url}/metrics") as resp:
        assert resp.status == 200
        text = await resp.text()
    samples: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            samples[key] = float(value)
    return samples


async def wait_for(predicate: Any, timeout: float = WAIT_S, interval: float = 0.01) -> None:
    """Poll ``predicate()`` until true."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(interval)


def query_param(url: str, key: str) -> str:
    match = re.search(rf"[?&]{key}=([^&]*)", url)
    assert match, (url, key)
    return match.group(1)


@dataclass
class PicowsFrame:
    """What the relay sockets read of a picows frame, for feeding ``on_ws_frame``
    directly (no network)."""

    msg_type: picows.WSMsgType
    payload: bytes = b""
    fin: bool = True
    rsv1: bool = False
    rsv2: bool = False
    rsv3: bool = False

    @property
    def payload_size(self) -> int:
        return len(self.payload)

    def get_payload_as_bytes(self) -> bytes:
        return self.payload

    def get_payload_as_memoryview(self) -> memoryview:
        return memoryview(self.payload)


def client_frame(
    payload: bytes, first: int = 0x82, key: bytes = b"\x1f\x8b\x3c\xa5", *, long_form: bool = False
) -> bytes:
    """A frame as a websocket client writes it (masked with ``key``; RFC 6455 5.2);
    ``first``: the first header byte (FIN, RSV1-3, opcode). ``long_form`` writes the
    length in 8 bytes whatever it is (not the shortest form: refused by servers)."""
    size = len(payload)
    if long_form or size > 0xFFFF:
        length = bytes((0x80 | 127,)) + size.to_bytes(8, "big")
    elif size > 125:
        length = bytes((0x80 | 126,)) + size.to_bytes(2, "big")
    else:
        length = bytes((0x80 | size,))
    masked = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    return bytes((first,)) + length + key + masked


def feed(protocol: asyncio.BufferedProtocol, data: bytes, step: int | None = None) -> None:
    """Give ``data`` to a buffered protocol as its transport would (at most ``step`` bytes
    per read)."""
    view = memoryview(data)
    while view:
        buffer = memoryview(protocol.get_buffer(-1))
        size = min(len(buffer), len(view), step or len(view))
        buffer[:size] = view[:size]
        protocol.buffer_updated(size)
        view = view[size:]


def server_frame(data: bytes) -> tuple[int, bytes, bytes] | None:
    """The first whole (unmasked) frame a server wrote in ``data``: ``(first header
    byte, payload, the bytes after it)``, or None while it is not all there."""
    if len(data) < 2:
        return None
    size, pos = data[1] & 0x7F, 2
    if size == 126:
        if len(data) < 4:
            return None
        (size,) = struct.unpack_from("!H", data, 2)
        pos = 4
    elif size == 127:
        if len(data) < 10:
            return None
        (size,) = struct.unpack_from("!Q", data, 2)
        pos = 10
    if len(data) < pos + size:
        return None
    return data[0], data[pos : pos + size], data[pos + size :]


def upgrade_request(relay_url: str, host_port: str) -> bytes:
    """A websocket upgrade request for ``relay_url``, as a client writes it."""
    path = "/" + relay_url.split("://", 1)[1].split("/", 1)[1]
    return (
        f"GET {path} HTTP/1.1\r\nHost: {host_port}\r\nUpgrade: websocket\r\n"
        "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n"
    ).encode()
