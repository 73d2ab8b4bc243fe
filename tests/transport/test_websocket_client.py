"""The SDK's websocket client (picows) against aiohttp servers: framing, close, limits."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from aiohttp import WSMsgType, web

from exec_server.transport.channel import ChannelClosed
from exec_server.transport.websocket_client import (
    WebSocketDialError,
    connect_websocket_client,
)

Handler = Callable[[web.WebSocketResponse, web.Request], Awaitable[None]]


@pytest.fixture
async def ws_server() -> AsyncIterator[Callable[[Handler], Awaitable[str]]]:
    runners: list[web.AppRunner] = []

    async def serve(handler: Handler) -> str:
        async def endpoint(request: web.Request) -> web.StreamResponse:
            if request.headers.get("Authorization") == "Bearer refuse":
                return web.Response(status=403)
            ws = web.WebSocketResponse(max_msg_size=0)
            await ws.prepare(request)
            await handler(ws, request)
            return ws

        app = web.Application()
        app.router.add_get("/", endpoint)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        runners.append(runner)
        host, port = runner.addresses[0][:2]
        return f"ws://{host}:{port}/"

    yield serve
    for runner in runners:
        await runner.cleanup()


async def test_echo_text_binary_and_large_messages(
    ws_server: Callable[[Handler], Awaitable[str]],
) -> None:
    async def echo(ws: web.WebSocketResponse, request: web.Request) -> None:
        async for msg in ws:
            if msg.type is WSMsgType.TEXT:
                assert request.headers["Authorization"] == "Bearer tok"
                await ws.send_str(msg.data)
                await ws.send_bytes(msg.data.encode())

    url = await ws_server(echo)
    channel = await connect_websocket_client(url, headers={"Authorization": "Bearer tok"})
    big = b'{"x":"' + b"a" * (3 * 1024 * 1024) + b'"}'
    for message in (b'{"id":1}', big):
        await channel.send(message)
        assert await channel.receive() == message  # a Text frame, as bytes
        assert await channel.receive() == message  # a Binary frame
    await channel.close("done")
    with pytest.raises(ChannelClosed, match="done"):
        await channel.receive()


async def test_fragmented_messages_are_reassembled(
    ws_server: Callable[[Handler], Awaitable[str]],
) -> None:
    async def fragments(ws: web.WebSocketResponse, request: web.Request) -> None:
        writer = ws._writer
        assert writer is not None
        await writer.send_frame(b'{"par', WSMsgType.TEXT, compress=None)
        writer._fin = False  # not used by send_frame; fragments are written by hand below
        await ws.receive()

    # aiohttp cannot send fragments through its public API, so write raw frames.
    async def raw_fragments(ws: web.WebSocketResponse, request: web.Request) -> None:
        transport = request.transport
        assert transport is not None
        transport.write(bytes([0x01, 5]) + b'{"par')  # Text, FIN clear
        transport.write(bytes([0x00, 4]) + b'ts":')  # Continuation, FIN clear
        transport.write(bytes([0x80, 3]) + b"[]}")  # Continuation, FIN set
        await ws.receive()

    del fragments
    url = await ws_server(raw_fragments)
    channel = await connect_websocket_client(url)
    assert await asyncio.wait_for(channel.receive(), 5) == b'{"parts":[]}'
    await channel.close()


async def test_server_close_ends_the_channel_with_its_code(
    ws_server: Callable[[Handler], Awaitable[str]],
) -> None:
    async def hello_then_close(ws: web.WebSocketResponse, request: web.Request) -> None:
        await ws.send_str('{"hello":1}')
        await ws.close(code=4000, message=b"go away")

    url = await ws_server(hello_then_close)
    channel = await connect_websocket_client(url)
    assert await channel.receive() == b'{"hello":1}'  # delivered before the close
    with pytest.raises(ChannelClosed, match=r"code 4000: go away"):
        await asyncio.wait_for(channel.receive(), 5)
    with pytest.raises(ChannelClosed):
        await channel.send(b"{}")


async def test_oversized_messages_fail_the_connection(
    ws_server: Callable[[Handler], Awaitable[str]],
) -> None:
    async def too_big(ws: web.WebSocketResponse, request: web.Request) -> None:
        await ws.send_str("x" * 5000)
        await ws.receive()

    url = await ws_server(too_big)
    channel = await connect_websocket_client(url, max_message_bytes=4096)
    with pytest.raises(ChannelClosed):
        await asyncio.wait_for(channel.receive(), 5)
    await channel.close()  # collects the error picows kept (no "never retrieved" warning)


async def test_dial_errors(ws_server: Callable[[Handler], Awaitable[str]]) -> None:
    async def idle(ws: web.WebSocketResponse, request: web.Request) -> None:
        await ws.receive()

    url = await ws_server(idle)
    with pytest.raises(WebSocketDialError, match="HTTP 403 Forbidden") as info:
        await connect_websocket_client(url, headers={"Authorization": "Bearer refuse"})
    assert (info.value.status, info.value.transient) == (403, False)
    with pytest.raises(WebSocketDialError, match="failed to connect") as info:
        await connect_websocket_client("ws://127.0.0.1:1/")
    assert info.value.transient and info.value.status is None


async def test_a_slow_reader_pauses_the_socket(
    ws_server: Callable[[Handler], Awaitable[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    import exec_server.transport.websocket_client as module

    monkeypatch.setattr(module, "MAX_INBOX_BYTES", 64 * 1024)
    sent = asyncio.Event()

    async def flood(ws: web.WebSocketResponse, request: web.Request) -> None:
        for i in range(64):
            await ws.send_str(f'{{"i":{i},"pad":"{"p" * 16384}"}}')
        sent.set()
        await ws.receive()

    url = await ws_server(flood)
    channel = await connect_websocket_client(url)
    await asyncio.sleep(0.3)
    assert channel._inbox.paused  # the inbox passed its limit, reading stopped
    assert channel._inbox.counted < 64 * 16500
    received = [await asyncio.wait_for(channel.receive(), 5) for _ in range(64)]
    assert [int(m.split(b",")[0][5:]) for m in received] == list(range(64))
    assert not channel._inbox.paused
    await asyncio.wait_for(sent.wait(), 5)
    await channel.close()
