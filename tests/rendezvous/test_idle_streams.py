"""Fault matrix row: 10,000 idle streams opened and abandoned; everything is reclaimed.

Codex-style harnesses (one ``resume`` and one ``initialize`` per stream, then nothing)
open streams through our rendezvous to our environment and vanish without a reset, in
rounds of 2,000 (an environment socket carries at most 4,096 streams). The rendezvous
resets each orphaned stream after its harness grace, the environment ends the stream,
its session detaches and expires: nothing is left in either process.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc

import aiohttp
import msgspec
from rendezvous_support import TOKEN, WAIT_S, MakeRendezvous, data, dial, recv_frame, resume

from exec_server.environment.remote import RemoteEnvironment, RemoteEnvironmentConfig
from exec_server.environment.server import ExecServer, ServerConfig
from exec_server.environment.session import SessionConfig

ENV = "idle"
ROUNDS = 5
STREAMS_PER_ROUND = 2000
SOCKETS_PER_ROUND = 4
PER_SOCKET = STREAMS_PER_ROUND // SOCKETS_PER_ROUND


async def test_ten_thousand_idle_streams_opened_and_abandoned_are_all_reclaimed(
    make_rendezvous: MakeRendezvous, http: aiohttp.ClientSession
) -> None:
    rendezvous = await make_rendezvous(environment_grace_s=5.0, harness_grace_s=0.2)
    server = ExecServer(ServerConfig(session=SessionConfig(detached_ttl_s=0.2)))
    remote = RemoteEnvironment(
        server,
        RemoteEnvironmentConfig(
            transport="legacy",  # raw cleartext frames below
            base_url=rendezvous.base_url,
            environment_id=ENV,
            token=TOKEN,
            initial_backoff_s=0.05,
        ),
    )
    task = asyncio.ensure_future(remote.run())
    router = rendezvous.router
    mux = remote.connection.mux
    try:
        await asyncio.wait_for(remote.connected.wait(), WAIT_S)
        opened = 0
        for round_no in range(ROUNDS):
            sockets = [
                await dial(http, rendezvous.harness_url(ENV)) for _ in range(SOCKETS_PER_ROUND)
            ]
            for index, ws in enumerate(sockets):
                for n in range(PER_SOCKET):
                    stream_id = f"r{round_no}-h{index}-s{n}"
                    await ws.send_bytes(resume(stream_id))
                    await ws.send_bytes(
                        data(
                            stream_id,
                            0,
                            b'{"id":1,"method":"initialize","params":{"clientName":"idle"}}',
                        )
                    )

            async def answers(ws: aiohttp.ClientWebSocketResponse) -> int:
                got = 0
                while got < PER_SOCKET:
                    frame = await recv_frame(ws, 60.0)
                    if frame.kind == "data":
                        assert "sessionId" in msgspec.json.decode(frame.data.payload)["result"]
                        got += 1
                return got

            assert sum(await asyncio.gather(*(answers(ws) for ws in sockets))) == (
                STREAMS_PER_ROUND
            )
            opened += STREAMS_PER_ROUND
            assert len(server.registry) >= STREAMS_PER_ROUND
            for ws in sockets:  # the harnesses vanish: no reset, just gone
                await ws.close()
            await _until(lambda: router.stream_count() == 0 and not mux.streams, 60.0)
        assert opened == 10_000
        await _until(lambda: len(server.registry) == 0, 30.0)
        await _until(lambda: not remote.connection.channels and not mux._closing, 30.0)
        assert [p.role.value for p in router.peers] == ["environment"]
        assert router.stats.resets_sent["harness_offline"] == 10_000
        assert router.stream_count() == 0 and router.route_count() == 1
        assert len(mux._retired) <= mux.config.max_retired_stream_ids
        assert not mux._timers and not mux._pending_output and not mux._ready
        gc.collect()
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
        await server.close()


async def _until(predicate: object, timeout: float) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():  # type: ignore[operator]
        assert loop.time() < deadline, "not reclaimed in time"
        await asyncio.sleep(0.05)
