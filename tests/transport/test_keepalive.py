"""Keepalive of relay websockets: pings every interval, gives up on a silent peer, and
the rendezvous answers (and sends) pings."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest
from aiohttp import WSMsgType, web

from exec_server.relay.control import (
    PauseOutput,
    PeerOffline,
    PeerOnline,
    ResumeOutput,
    decode_control,
    encode_control,
)
from exec_server.relay.stream_mux import MuxRole
from exec_server.rendezvous import RendezvousConfig, RendezvousServer
from exec_server.transport.relay_connection import RelayConfig, RelayConnection, dial_relay_socket
from exec_server.transport.websocket import PONG_TIMEOUT, KeepaliveConfig

sys.path.insert(0, str(Path(__file__).parents[1] / "rendezvous"))
from rendezvous_support import wait_for

FAST = KeepaliveConfig(ping_interval_s=0.05, pong_timeout_s=0.4)

Handler = Callable[[web.WebSocketResponse], Awaitable[None]]


@pytest.fixture
async def ws_server() -> AsyncIterator[Callable[[Handler, bool], Awaitable[str]]]:
    runners: list[web.AppRunner] = []

    async def start(handler: Handler, autoping: bool) -> str:
        async def endpoint(request: web.Request) -> web.WebSocketResponse:
            ws = web.WebSocketResponse(autoping=autoping)
            await ws.prepare(request)
            await handler(ws)
            return ws

        app = web.Application()
        app.router.add_get("/", endpoint)
        runner = web.AppRunner(app, handle_signals=False)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        runners.append(runner)
        return f"ws://127.0.0.1:{runner.addresses[0][1]}/"

    yield start
    for runner in runners:
        await runner.cleanup()


async def run_for(url: str, seconds: float) -> str | None:
    """Drive a relay connection over a socket to ``url``; its end reason, or None if
    it was still up after ``seconds``."""
    async with aiohttp.ClientSession() as http:
        ws = await dial_relay_socket(http, url)
        connection = RelayConnection(MuxRole.HARNESS, RelayConfig(keepalive=FAST))
        try:
            return await asyncio.wait_for(connection.run_socket(ws), seconds)
        except TimeoutError:
            return None
        finally:
            await ws.close()


async def test_a_peer_that_never_answers_pings_is_given_up(
    ws_server: Callable[[Handler, bool], Awaitable[str]],
) -> None:
    done = asyncio.Event()

    async def deaf(ws: web.WebSocketResponse) -> None:
        await done.wait()  # never reads: pings are never answered

    reason = await run_for(await ws_server(deaf, False), 10.0)
    done.set()
    assert reason == f"relay websocket given up: {PONG_TIMEOUT}"


async def test_a_peer_that_answers_pings_stays_connected(
    ws_server: Callable[[Handler, bool], Awaitable[str]],
) -> None:
    pings = 0

    async def answering(ws: web.WebSocketResponse) -> None:
        nonlocal pings
        async for msg in ws:
            if msg.type is WSMsgType.PING:
                pings += 1
                await ws.pong(msg.data)

    # Several pong timeouts long: the answered pings keep it up.
    assert await run_for(await ws_server(answering, False), 1.5) is None
    assert pings >= 5


@pytest.fixture
async def rendezvous() -> AsyncIterator[RendezvousServer]:
    server = RendezvousServer(RendezvousConfig(token="t", ping_interval_s=0.05, pong_timeout_s=0.4))
    await server.start()
    yield server
    await server.close()


async def test_the_rendezvous_answers_pings(rendezvous: RendezvousServer) -> None:
    async with aiohttp.ClientSession() as http:
        ws = await http.ws_connect(rendezvous.harness_url("e"), autoping=False)
        await ws.ping(b"hello")
        while True:
            msg = await asyncio.wait_for(ws.receive(), 5)
            if msg.type is WSMsgType.PONG:
                assert msg.data == b"hello"
                break
            assert msg.type is WSMsgType.PING  # its own keepalive pings
            await ws.pong(msg.data)
        await ws.close()


async def test_the_rendezvous_drops_a_silent_socket(rendezvous: RendezvousServer) -> None:
    async with aiohttp.ClientSession() as http:
        ws = await http.ws_connect(rendezvous.harness_url("e"), autoping=False)
        await wait_for(lambda: len(rendezvous.router.peers) == 1)
        # This socket reads nothing, so the rendezvous's pings go unanswered.
        await wait_for(lambda: not rendezvous.router.peers, 10.0)
        with contextlib.suppress(Exception):
            await ws.close()


def test_control_messages_round_trip_and_unknown_ones_are_ignored() -> None:
    for message in (
        PauseOutput("s"),
        ResumeOutput("s"),
        PeerOffline("environment", 2.5),
        PeerOnline("environment"),
    ):
        assert decode_control(encode_control(message)) == message
    assert encode_control(PauseOutput("s")) == '{"type":"pause_output","stream_id":"s"}'
    assert decode_control('{"type":"from_the_future"}') is None
    assert decode_control("not json") is None
