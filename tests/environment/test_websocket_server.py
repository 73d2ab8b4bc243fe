"""The local websocket listener: framing, health, auth, origins, limits."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import msgspec
import picows
import pytest

from exec_server.environment.server import (
    ExecServer,
    ListenUrlError,
    ServerConfig,
    parse_listen_url,
)
from exec_server.environment.session import SessionConfig


@pytest.fixture
async def make_server() -> AsyncIterator[Any]:
    servers: list[ExecServer] = []

    async def start(**config: Any) -> tuple[ExecServer, str]:
        server = ExecServer(ServerConfig(**config))
        servers.append(server)
        url = await server.start_websocket("127.0.0.1", 0)
        return server, url

    yield start
    for server in servers:
        await server.close()


async def _initialize(ws: aiohttp.ClientWebSocketResponse) -> str:
    await ws.send_str('{"id":1,"method":"initialize","params":{"clientName":"t"}}')
    reply = msgspec.json.decode((await ws.receive(timeout=5)).data)
    await ws.send_str('{"method":"initialized","params":{}}')
    session_id: str = reply["result"]["sessionId"]
    return session_id


async def test_readyz_and_url_line_shape(make_server: Any) -> None:
    _, url = await make_server()
    assert url.startswith("ws://127.0.0.1:") and int(url.rsplit(":", 1)[1]) > 0
    async with (
        aiohttp.ClientSession() as http,
        http.get(url.replace("ws://", "http://") + "/readyz") as resp,
    ):
        assert resp.status == 200
        assert await resp.read() == b""


async def test_text_replies_binary_json_accepted_and_malformed_kept(make_server: Any) -> None:
    _, url = await make_server()
    async with aiohttp.ClientSession() as http, http.ws_connect(url, compress=0) as ws:
        await ws.send_str("{this is not json")
        msg = await ws.receive(timeout=5)
        assert msg.type is aiohttp.WSMsgType.TEXT
        reply = msgspec.json.decode(msg.data)
        assert reply["id"] == -1 and reply["error"]["code"] == -32600
        assert reply["error"]["message"].startswith(
            "failed to parse websocket JSON-RPC message from exec-server websocket"
        )
        await ws.send_bytes(b'{"id":1,"method":"initialize","params":{"clientName":"b"}}')
        msg = await ws.receive(timeout=5)
        assert msg.type is aiohttp.WSMsgType.TEXT
        assert "sessionId" in msgspec.json.decode(msg.data)["result"]
        assert b"jsonrpc" not in msg.data.encode()


async def test_compression_is_never_negotiated(make_server: Any) -> None:
    _, url = await make_server()
    async with aiohttp.ClientSession() as http, http.ws_connect(url, compress=15) as ws:
        assert ws.compress == 0
        assert await _initialize(ws)


async def test_token_gates_upgrade_but_not_readyz(make_server: Any) -> None:
    _, url = await make_server(token="s3cret")
    async with aiohttp.ClientSession() as http:
        async with http.get(url.replace("ws://", "http://") + "/readyz") as resp:
            assert resp.status == 200
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic s3cret"}):
            with pytest.raises(aiohttp.WSServerHandshakeError) as info:
                await http.ws_connect(url, compress=0, headers=headers)
            assert info.value.status == 401
        async with http.ws_connect(
            url, compress=0, headers={"Authorization": "Bearer s3cret"}
        ) as ws:
            assert await _initialize(ws)


async def test_browser_origins_are_refused_unless_allowed(make_server: Any) -> None:
    _, url = await make_server(allowed_origins=frozenset({"https://ok.example"}))
    async with aiohttp.ClientSession() as http:
        with pytest.raises(aiohttp.WSServerHandshakeError) as info:
            await http.ws_connect(url, compress=0, headers={"Origin": "https://evil.example"})
        assert info.value.status == 403
        async with http.ws_connect(url, compress=0, headers={"Origin": "https://ok.example"}) as ws:
            assert await _initialize(ws)


async def test_oversized_message_closes_with_1009_and_session_is_resumable(
    make_server: Any,
) -> None:
    _, url = await make_server(
        max_message_bytes=64 * 1024, session=SessionConfig(detached_ttl_s=5.0)
    )
    async with aiohttp.ClientSession() as http:
        ws = await http.ws_connect(url, compress=0)
        session_id = await _initialize(ws)
        await ws.send_str('{"id":2,"method":"fs/getMetadata","params":{"path":"/' + "a" * 70000)
        msg = await ws.receive(timeout=5)
        assert msg.type is aiohttp.WSMsgType.CLOSE
        assert ws.close_code == 1009
        await ws.close()
        async with http.ws_connect(url, compress=0) as ws2:
            await ws2.send_str(
                msgspec.json.encode(
                    {
                        "id": 1,
                        "method": "initialize",
                        "params": {"clientName": "t", "resumeSessionId": session_id},
                    }
                ).decode()
            )
            reply = msgspec.json.decode((await ws2.receive(timeout=5)).data)
            assert reply["result"]["sessionId"] == session_id


class _Peer(picows.WSListener):
    """A raw websocket client: sends frames as given, records what comes back."""

    def __init__(self) -> None:
        self.received: asyncio.Queue[tuple[picows.WSMsgType, bytes, int | None]] = asyncio.Queue()

    def on_ws_frame(self, transport: picows.WSTransport, frame: picows.WSFrame) -> None:
        code = None
        if frame.msg_type == picows.WSMsgType.CLOSE:
            code = int(frame.get_close_code())
        self.received.put_nowait((frame.msg_type, frame.get_payload_as_bytes(), code))

    async def next(self) -> tuple[picows.WSMsgType, bytes, int | None]:
        return await asyncio.wait_for(self.received.get(), 5)


async def _raw_peer(url: str) -> tuple[picows.WSTransport, _Peer]:
    transport, peer = await picows.ws_connect(_Peer, url)
    assert isinstance(peer, _Peer)
    return transport, peer


async def test_fragmented_messages_are_reassembled(make_server: Any) -> None:
    _, url = await make_server()
    transport, peer = await _raw_peer(url)
    try:
        request = b'{"id":1,"method":"initialize","params":{"clientName":"frag"}}'
        transport.send(picows.WSMsgType.TEXT, request[:10], fin=False)
        transport.send(picows.WSMsgType.CONTINUATION, request[10:30], fin=False)
        transport.send(picows.WSMsgType.CONTINUATION, request[30:], fin=True)
        kind, payload, _ = await peer.next()
        assert kind == picows.WSMsgType.TEXT
        assert "sessionId" in msgspec.json.decode(payload)["result"]
    finally:
        transport.disconnect()


async def test_fragments_over_the_limit_close_with_1009(make_server: Any) -> None:
    _, url = await make_server(max_message_bytes=64 * 1024)
    transport, peer = await _raw_peer(url)
    try:
        part = b" " * (30 * 1024)
        transport.send(picows.WSMsgType.TEXT, part, fin=False)
        transport.send(picows.WSMsgType.CONTINUATION, part, fin=False)
        transport.send(picows.WSMsgType.CONTINUATION, part, fin=True)
        kind, _, code = await peer.next()
        assert (kind, code) == (picows.WSMsgType.CLOSE, 1009)
    finally:
        transport.disconnect()


async def test_text_that_is_not_utf8_closes_with_1007(make_server: Any) -> None:
    _, url = await make_server()
    transport, peer = await _raw_peer(url)
    try:
        transport.send(picows.WSMsgType.TEXT, b'{"id":1,"method":"\xff"}')
        kind, _, code = await peer.next()
        assert (kind, code) == (picows.WSMsgType.CLOSE, 1007)
    finally:
        transport.disconnect()


async def test_server_close_ends_every_connection_with_a_reason(make_server: Any) -> None:
    server, url = await make_server()
    peers = [await _raw_peer(url) for _ in range(3)]
    try:
        await server.close()
        for _, peer in peers:
            kind, payload, code = await peer.next()
            assert (kind, code) == (picows.WSMsgType.CLOSE, 1000)
            assert payload.endswith(b"server shutting down")
        with pytest.raises(OSError):
            await _raw_peer(url)
    finally:
        for transport, _ in peers:
            transport.disconnect()


async def test_non_upgrade_request_to_root_is_400(make_server: Any) -> None:
    _, url = await make_server()
    async with (
        aiohttp.ClientSession() as http,
        http.get(url.replace("ws://", "http://") + "/") as resp,
    ):
        assert resp.status == 400


async def test_abrupt_client_drop_detaches_without_killing_server(make_server: Any) -> None:
    server, url = await make_server()
    async with aiohttp.ClientSession() as http:
        ws = await http.ws_connect(url, compress=0)
        session_id = await _initialize(ws)
        # Drop TCP without a close frame, as the Codex harness does on exit.
        ws._response.connection.transport.abort()  # type: ignore[union-attr]
        for _ in range(100):
            session = server.registry.get(session_id)
            if session is not None and not session.attached:
                break
            await asyncio.sleep(0.02)
        session = server.registry.get(session_id)
        assert session is not None and not session.attached


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("ws://127.0.0.1:0", ("127.0.0.1", 0, False)),
        ("ws://0.0.0.0:8080", ("0.0.0.0", 8080, False)),
        ("ws://[::1]:9", ("::1", 9, False)),
        ("stdio", ("127.0.0.1", 0, True)),
        ("stdio://", ("127.0.0.1", 0, True)),
    ],
)
def test_parse_listen_url(url: str, expected: tuple[str, int, bool]) -> None:
    addr = parse_listen_url(url)
    assert (addr.host, addr.port, addr.stdio) == expected


@pytest.mark.parametrize(
    "url",
    ["http://127.0.0.1:1", "ws://localhost:1", "ws://127.0.0.1", "ws://127.0.0.1:1/x", "tcp://x"],
)
def test_parse_listen_url_rejects(url: str) -> None:
    with pytest.raises(ListenUrlError, match="expected `ws://IP:PORT` or `stdio`"):
        parse_listen_url(url)
