"""HarnessSockets: the harness's relay sockets, redialed through alternates until a
deadline, against plain loopback websocket servers (no rendezvous needed)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest
from aiohttp import ClientSession, web

from exec_server.relay.stream_mux import MuxRole
from exec_server.transport.harness_sockets import HarnessSockets
from exec_server.transport.relay_connection import RelayConnection
from exec_server.transport.relay_status import RelayStatus


class Node:
    """A websocket server on loopback that counts upgrades and can drop its sockets."""

    def __init__(self) -> None:
        self.upgrades = 0
        self.sockets: list[web.WebSocketResponse] = []
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def _relay(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        self.upgrades += 1
        self.sockets.append(ws)
        async for _ in ws:
            pass
        return ws

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/relay/env", self._relay)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"ws://127.0.0.1:{port}/relay/env?role=harness"

    async def drop_sockets(self) -> None:
        for ws in self.sockets:
            await ws.close()

    async def stop(self) -> None:
        """The node goes away: its sockets close and it no longer accepts."""
        if self.runner is not None:
            await self.drop_sockets()
            await self.runner.cleanup()
            self.runner = None


@contextlib.asynccontextmanager
async def nodes(count: int) -> AsyncIterator[list[Node]]:
    started = [Node() for _ in range(count)]
    try:
        for node in started:
            await node.start()
        yield started
    finally:
        for node in started:
            await node.stop()


class Seen:
    """What the sockets reported: statuses and give-up reasons, each with an event."""

    def __init__(self) -> None:
        self.statuses: list[RelayStatus] = []
        self.reconnected = asyncio.Event()
        self.ended: list[str] = []
        self.gave_up = asyncio.Event()

    def status(self, status: RelayStatus) -> None:
        self.statuses.append(status)
        if status.state == "reconnected":
            self.reconnected.set()

    def give_up(self, why: str) -> None:
        self.ended.append(why)
        self.gave_up.set()


def sockets_for(
    url: str, alternates: list[str], deadline_s: float, seen: Seen | None = None
) -> HarnessSockets:
    connection = RelayConnection(
        MuxRole.HARNESS, on_status=seen.status if seen is not None else None
    )
    sockets = HarnessSockets(
        url,
        ClientSession(),
        connection,
        stream_id="s1",
        reconnect_deadline_s=deadline_s,
        max_message_bytes=1 << 20,
        alternates=alternates,
    )
    return sockets


async def test_a_dead_url_moves_to_the_alternate_that_answers() -> None:
    async with nodes(2) as (first, second):
        dead = first.url
        await first.stop()
        sockets = sockets_for(dead, [second.url], deadline_s=5.0)
        try:
            ws = await sockets.dial()
            await ws.close()
            assert sockets.url == second.url and sockets.alternates == [dead]
            assert second.upgrades == 1
        finally:
            await sockets.close()


async def test_a_lost_socket_is_redialed_and_counted() -> None:
    async with nodes(2) as (first, second):
        seen = Seen()
        sockets = sockets_for(first.url, [second.url], deadline_s=10.0, seen=seen)
        try:
            sockets.supervise(await sockets.dial(), finished=lambda: False, give_up=seen.give_up)
            await first.stop()  # the first node goes with its socket: the next one answers
            await asyncio.wait_for(seen.reconnected.wait(), 10)
            assert sockets.reconnects == 1 and sockets.url == second.url
            assert second.upgrades == 1 and not seen.ended
            assert [s.state for s in seen.statuses] == ["reconnecting", "reconnected"]
        finally:
            await sockets.close()


async def test_no_socket_back_before_the_deadline_gives_up_with_the_reason() -> None:
    async with nodes(1) as (only,):
        seen = Seen()
        sockets = sockets_for(only.url, [], deadline_s=0.5, seen=seen)
        try:
            sockets.supervise(await sockets.dial(), finished=lambda: False, give_up=seen.give_up)
            await only.stop()
            await asyncio.wait_for(seen.gave_up.wait(), 10)
            assert len(seen.ended) == 1 and seen.ended[0].startswith("relay reconnect failed: ")
            assert "last error: " in seen.ended[0]
            assert sockets.reconnects == 0
        finally:
            await sockets.close()


async def test_a_finished_stream_does_not_redial() -> None:
    async with nodes(1) as (only,):
        sockets = sockets_for(only.url, [], deadline_s=5.0)
        ended: list[str] = []
        try:
            sockets.supervise(await sockets.dial(), finished=lambda: True, give_up=ended.append)
            await only.drop_sockets()
            await asyncio.sleep(0.3)
            assert only.upgrades == 1 and sockets.reconnects == 0 and not ended
        finally:
            await sockets.close()


@pytest.mark.parametrize("supervised", [False, True])
async def test_close_leaves_no_task_and_closes_the_socket(supervised: bool) -> None:
    async with nodes(1) as (only,):
        sockets = sockets_for(only.url, [], deadline_s=5.0)
        ws = await sockets.dial()
        if supervised:
            sockets.supervise(ws, finished=lambda: False, give_up=lambda _: None)
        else:
            sockets.ws = ws
        before = asyncio.all_tasks()
        await sockets.close()
        assert ws.closed
        assert not [t for t in asyncio.all_tasks() - before if not t.done()]
        assert all(not t.get_name().startswith("relay supervisor") for t in asyncio.all_tasks())
