"""Relay routing through a live rendezvous, with raw websocket peers speaking protobuf.

Grace periods are 0.3 s here (see conftest), so timer-driven resets are fast to observe.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict

import aiohttp
import pytest
from rendezvous_support import (
    WAIT_S,
    MakeRendezvous,
    Ws,
    data,
    dial,
    expect_reset,
    expect_silence,
    harness_url,
    recv_bytes,
    recv_frame,
    register,
    reset,
    resume,
    scrape,
    wait_for,
)

from exec_server.relay.frame_codec import data_frame, encode_frame
from exec_server.relay.proto.relay_v1_pb2 import RelayData, RelayMessageFrame, RelayResume
from exec_server.rendezvous import RendezvousServer

ENV = "env-1"
DROPPED = "exec_server_rendezvous_frames_dropped_total"


class Peers:
    """Dials environment and harness sockets of one rendezvous."""

    def __init__(self, server: RendezvousServer, http: aiohttp.ClientSession) -> None:
        self.server = server
        self.http = http
        self.base = server.base_url

    async def environment(self, environment_id: str = ENV) -> Ws:
        ws = await dial(self.http, await register(self.http, self.base, environment_id))
        await wait_for(lambda: self.server.router.is_online(environment_id))
        return ws

    async def harness(self, environment_id: str = ENV, url: str | None = None) -> tuple[Ws, str]:
        url = url or await harness_url(self.http, self.base, environment_id)
        return await dial(self.http, url), url

    async def dropped(self, reason: str) -> float:
        return (await scrape(self.http, self.base)).get(f'{DROPPED}{{reason="{reason}"}}', 0.0)


@pytest.fixture
def peers(rendezvous: RendezvousServer, http: aiohttp.ClientSession) -> Peers:
    return Peers(rendezvous, http)


async def test_two_harnesses_interleaved_streams_no_cross_talk_bytes_untouched(
    peers: Peers,
) -> None:
    env = await peers.environment()
    a, _ = await peers.harness()
    b, _ = await peers.harness()
    streams = {a: ["a-1", "a-2"], b: ["b-1"]}
    sent: dict[str, list[bytes]] = defaultdict(list)
    for ws, ids in streams.items():
        for stream_id in ids:
            frame = resume(stream_id)
            sent[stream_id].append(frame)
            await ws.send_bytes(frame)
    for seq in range(20):
        for ws, ids in streams.items():
            for stream_id in ids:
                # Non-default ack/ack_bits/trace fields must survive untouched too.
                frame = encode_frame(
                    data_frame(
                        stream_id,
                        seq,
                        b'{"id":%d,"method":"m","params":{"s":"%s"}}' % (seq, stream_id.encode()),
                        ack=seq,
                        ack_bits=0xA5A5,
                        traceparent="00-" + "1" * 32 + "-" + "2" * 16 + "-01",
                    )
                )
                sent[stream_id].append(frame)
                await ws.send_bytes(frame)

    received: dict[str, list[bytes]] = defaultdict(list)
    for _ in range(sum(len(frames) for frames in sent.values())):
        raw = await recv_bytes(env)
        received[RelayMessageFrame.FromString(raw).stream_id].append(raw)
    assert received == sent  # same bytes, per-stream order kept
    await expect_silence(env, 0.05)

    replies: dict[str, list[bytes]] = defaultdict(list)
    for seq in range(10):
        for stream_id in ("a-1", "b-1", "a-2"):
            frame = data(stream_id, seq, b'{"id":%d,"result":{}}' % seq)
            replies[stream_id].append(frame)
            await env.send_bytes(frame)
    for ws, ids in streams.items():
        got: dict[str, list[bytes]] = defaultdict(list)
        for _ in range(10 * len(ids)):
            raw = await recv_bytes(ws)
            got[RelayMessageFrame.FromString(raw).stream_id].append(raw)
        assert got == {stream_id: replies[stream_id] for stream_id in ids}
        await expect_silence(ws, 0.05)
    samples = await scrape(peers.http, peers.base)
    routed = "exec_server_rendezvous_frames_routed_total"
    assert samples[f'{routed}{{direction="harness_to_environment"}}'] == 63
    assert samples[f'{routed}{{direction="environment_to_harness"}}'] == 30
    assert samples['exec_server_rendezvous_sockets{role="harness"}'] == 2
    assert samples["exec_server_rendezvous_streams"] == 3


async def test_second_harness_cannot_inject_into_a_stream_it_does_not_own(peers: Peers) -> None:
    env = await peers.environment()
    owner, _ = await peers.harness()
    intruder, _ = await peers.harness()
    await owner.send_bytes(resume("s-1"))
    assert (await recv_frame(env)).stream_id == "s-1"

    await intruder.send_bytes(data("s-1", 0, b'{"id":1,"method":"process/start"}'))
    await expect_reset(intruder, "s-1", "stream_owned_by_another_harness")
    await intruder.send_bytes(reset("s-1", "go away"))  # not forwarded, not answered
    await expect_silence(env)
    await expect_silence(intruder, 0.05)
    assert await peers.dropped("stream_owned_by_another_harness") == 2

    # The owner is unaffected in both directions.
    await owner.send_bytes(data("s-1", 0, b"{}"))
    assert (await recv_frame(env)).stream_id == "s-1"
    await env.send_bytes(data("s-1", 0, b"{}"))
    assert (await recv_frame(owner)).stream_id == "s-1"
    await expect_silence(intruder, 0.05)


async def test_reclaim_after_disconnect_only_with_the_same_url_nonce(peers: Peers) -> None:
    env = await peers.environment()
    first, url = await peers.harness()
    await first.send_bytes(resume("s-1"))
    await recv_frame(env)
    await first.close()
    await wait_for(lambda: peers.server.router.stream_owner(ENV, "s-1") is None)

    stranger, _ = await peers.harness()  # a different /connect URL: another nonce
    await stranger.send_bytes(resume("s-1"))
    await expect_reset(stranger, "s-1", "stream_owned_by_another_harness")

    again, _ = await peers.harness(url=url)  # the same URL: the same harness reconnecting
    await again.send_bytes(data("s-1", 1, b"{}"))
    assert (await recv_frame(env)).stream_id == "s-1"
    await env.send_bytes(data("s-1", 0, b"{}"))
    assert (await recv_frame(again)).stream_id == "s-1"
    await asyncio.sleep(0.5)  # past the grace: no harness_offline reset for a reclaimed stream
    await expect_silence(env, 0.05)
    samples = await scrape(peers.http, peers.base)
    assert samples["exec_server_rendezvous_stream_reclaims_total"] == 1


async def test_same_nonce_takes_over_from_a_live_but_stale_socket(peers: Peers) -> None:
    """A harness that reconnects before we noticed its old socket die keeps its stream."""
    env = await peers.environment()
    old, url = await peers.harness()
    await old.send_bytes(resume("s-1"))
    await recv_frame(env)
    new, _ = await peers.harness(url=url)
    await new.send_bytes(data("s-1", 0, b"{}"))
    await recv_frame(env)
    await env.send_bytes(data("s-1", 0, b"{}"))
    assert (await recv_frame(new)).stream_id == "s-1"
    await expect_silence(old, 0.1)


async def test_harness_offline_reset_reaches_the_environment_after_the_grace(
    peers: Peers,
) -> None:
    env = await peers.environment()
    harness, _ = await peers.harness()
    await harness.send_bytes(resume("s-1"))
    await harness.send_bytes(resume("s-2"))
    await recv_frame(env)
    await recv_frame(env)
    await harness.send_bytes(reset("s-2", "done"))  # ended streams get no offline reset
    assert (await recv_frame(env)).reset.reason == "done"
    closed_at = time.monotonic()
    await harness.close()
    await wait_for(lambda: peers.server.router.stream_owner(ENV, "s-1") is None)
    await env.send_bytes(data("s-1", 0, b"{}"))  # within grace: dropped
    await expect_reset(env, "s-1", "harness_offline")
    assert time.monotonic() - closed_at >= 0.25
    await expect_silence(env, 0.1)
    await env.send_bytes(data("s-1", 1, b"{}"))  # the stream is gone now
    await wait_for(lambda: peers.server.router.stats.dropped["unknown_stream"] == 1)
    assert await peers.dropped("harness_offline") == 1
    samples = await scrape(peers.http, peers.base)
    assert samples['exec_server_rendezvous_resets_sent_total{reason="harness_offline"}'] == 1
    assert samples["exec_server_rendezvous_streams"] == 0


async def test_new_environment_socket_replaces_the_old_and_keeps_streams(peers: Peers) -> None:
    env_old = await peers.environment()
    harness, _ = await peers.harness()
    await harness.send_bytes(resume("s-1"))
    await recv_frame(env_old)

    env_new = await dial(peers.http, await register(peers.http, peers.base, ENV))
    msg = await asyncio.wait_for(env_old.receive(), WAIT_S)
    assert msg.type is aiohttp.WSMsgType.CLOSE and msg.data == 4000

    await harness.send_bytes(data("s-1", 0, b'{"id":1}'))
    assert (await recv_frame(env_new)).data.payload == b'{"id":1}'
    await env_new.send_bytes(data("s-1", 0, b'{"id":1,"result":{}}'))
    assert (await recv_frame(harness)).data.payload == b'{"id":1,"result":{}}'
    await asyncio.sleep(0.4)  # no environment_offline reset: it never was offline
    await expect_silence(harness, 0.05)
    assert peers.server.router.stream_count(ENV) == 1


async def test_environment_reconnecting_within_grace_keeps_streams(peers: Peers) -> None:
    env = await peers.environment()
    harness, _ = await peers.harness()
    await harness.send_bytes(resume("s-1"))
    await recv_frame(env)
    await env.close()
    await wait_for(lambda: not peers.server.router.is_online(ENV))
    await harness.send_bytes(data("s-1", 0, b"lost"))  # offline within grace: dropped
    await wait_for(lambda: peers.server.router.stats.dropped["environment_offline"] == 1)

    env = await peers.environment()
    await harness.send_bytes(data("s-1", 1, b"kept"))
    assert (await recv_frame(env)).data.payload == b"kept"
    await asyncio.sleep(0.4)
    await expect_silence(harness, 0.05)


async def test_environment_offline_reset_after_the_grace(peers: Peers) -> None:
    env = await peers.environment()
    a, _ = await peers.harness()
    b, _ = await peers.harness()
    await a.send_bytes(resume("a-1"))
    await a.send_bytes(resume("a-2"))
    await b.send_bytes(resume("b-1"))
    for _ in range(3):
        await recv_frame(env)
    closed_at = time.monotonic()
    await env.close()
    await wait_for(lambda: not peers.server.router.is_online(ENV))
    await a.send_bytes(resume("a-3"))  # a new stream within grace is held, then reset too
    resets = {(await recv_frame(a)).stream_id, (await recv_frame(a)).stream_id}
    resets.add((await recv_frame(a)).stream_id)
    assert resets == {"a-1", "a-2", "a-3"}
    await expect_reset(b, "b-1", "environment_offline")
    assert time.monotonic() - closed_at >= 0.25
    # After the grace, a frame for the offline environment is answered at once.
    await b.send_bytes(resume("b-2"))
    await expect_reset(b, "b-2", "environment_offline", timeout=0.2)
    samples = await scrape(peers.http, peers.base)
    assert samples['exec_server_rendezvous_resets_sent_total{reason="environment_offline"}'] == 5
    assert samples[f'{DROPPED}{{reason="environment_offline"}}'] == 2


async def test_registration_without_socket_holds_harness_frames(peers: Peers) -> None:
    await asyncio.sleep(0.35)  # past the startup grace of this rendezvous
    ghost, _ = await peers.harness("ghost")
    await ghost.send_bytes(resume("g-1"))
    await expect_reset(ghost, "g-1", "environment_offline", timeout=0.2)

    url = await register(peers.http, peers.base, "late")
    harness, _ = await peers.harness("late")
    await harness.send_bytes(resume("l-1"))  # held (dropped, not reset) while it connects
    await expect_silence(harness, 0.1)
    env = await dial(peers.http, url)
    await wait_for(lambda: peers.server.router.is_online("late"))
    await harness.send_bytes(data("l-1", 0, b"{}"))
    assert (await recv_frame(env)).stream_id == "l-1"


async def test_environment_reset_ends_the_stream(peers: Peers) -> None:
    env = await peers.environment()
    a, _ = await peers.harness()
    b, _ = await peers.harness()
    await a.send_bytes(resume("s-1"))
    await recv_frame(env)
    await env.send_bytes(reset("s-1", "stream_closed"))
    await expect_reset(a, "s-1", "stream_closed")
    await wait_for(lambda: peers.server.router.stream_count(ENV) == 0)
    # The id is free again: the first harness to use it owns it.
    await b.send_bytes(resume("s-1"))
    assert (await recv_frame(env)).stream_id == "s-1"
    await env.send_bytes(data("s-1", 0, b"{}"))
    assert (await recv_frame(b)).stream_id == "s-1"
    await expect_silence(a, 0.05)


async def test_invalid_and_text_frames_are_dropped_and_counted(peers: Peers) -> None:
    env = await peers.environment()
    harness, _ = await peers.harness()
    bad_frames = {
        "undecodable": b"\xff\xff\xff",
        "bad_version": RelayMessageFrame(
            version=2, stream_id="s", resume=RelayResume()
        ).SerializeToString(),
        "missing_stream_id": RelayMessageFrame(
            version=1, stream_id=" ", resume=RelayResume()
        ).SerializeToString(),
        "missing_body": RelayMessageFrame(version=1, stream_id="s").SerializeToString(),
        "empty_payload": RelayMessageFrame(
            version=1, stream_id="s", data=RelayData(segment_count=1)
        ).SerializeToString(),
        "bad_segment": RelayMessageFrame(
            version=1, stream_id="s", data=RelayData(segment_count=0, payload=b"x")
        ).SerializeToString(),
    }
    for ws in (harness, env):
        await ws.send_str('{"not":"binary"}')
        for frame in bad_frames.values():
            await ws.send_bytes(frame)
    await env.send_bytes(data("nobody", 0, b"{}"))
    # Both sockets stay usable.
    await harness.send_bytes(resume("s-ok"))
    assert (await recv_frame(env)).stream_id == "s-ok"
    await env.send_bytes(data("s-ok", 0, b"{}"))
    assert (await recv_frame(harness)).stream_id == "s-ok"
    await expect_silence(harness, 0.05)
    samples = await scrape(peers.http, peers.base)
    assert samples[f'{DROPPED}{{reason="text_frame"}}'] == 2
    for reason in bad_frames:
        assert samples[f'{DROPPED}{{reason="{reason}"}}'] == 2, reason
    assert samples[f'{DROPPED}{{reason="unknown_stream"}}'] == 1


async def test_slow_harness_does_not_stall_other_streams(
    make_rendezvous: MakeRendezvous, http: aiohttp.ClientSession
) -> None:
    server = await make_rendezvous(max_queue_bytes=256 * 1024)
    peers = Peers(server, http)
    env = await peers.environment()
    slow, _ = await peers.harness()  # never reads
    fast, _ = await peers.harness()
    await slow.send_bytes(resume("slow"))
    await fast.send_bytes(resume("fast"))
    await recv_frame(env)
    await recv_frame(env)

    big = b"x" * (64 * 1024)
    fast_frames = 50
    received: list[float] = []

    async def read_fast() -> None:
        for _ in range(fast_frames):
            frame = await recv_frame(fast)
            assert frame.stream_id == "fast"
            received.append(time.monotonic())

    reader = asyncio.ensure_future(read_fast())
    sent_at: list[float] = []
    # 50 MB for the slow harness: far beyond kernel buffers plus its 256 KiB queue.
    for i in range(800):
        await env.send_bytes(data("slow", i, big))
        if i % 16 == 0:
            sent_at.append(time.monotonic())
            await env.send_bytes(data("fast", i, b"tick"))
    await asyncio.wait_for(reader, WAIT_S)
    assert len(received) == fast_frames
    worst = max(got - sent for got, sent in zip(received, sent_at, strict=True))
    assert worst < 1.0, f"the fast harness waited {worst:.3f}s for a frame"
    await wait_for(lambda: server.router.stats.dropped["harness_queue_full"] > 0)
    queued = [p.queued_bytes for p in server.router.peers if p.role.value == "harness"]
    assert max(queued) <= 256 * 1024 + len(big) + 64


async def test_thousand_concurrent_streams_on_one_environment_socket(peers: Peers) -> None:
    env = await peers.environment()
    harnesses = [(await peers.harness())[0] for _ in range(4)]
    per_harness = 250
    owner: dict[str, int] = {}
    for index, ws in enumerate(harnesses):
        for n in range(per_harness):
            stream_id = f"h{index}-s{n:03d}"
            owner[stream_id] = index
            await ws.send_bytes(resume(stream_id))
            await ws.send_bytes(data(stream_id, 0, stream_id.encode()))
    seen: dict[str, list[str]] = defaultdict(list)
    for _ in range(2 * len(owner)):
        frame = await recv_frame(env)
        seen[frame.stream_id].append(frame.kind or "")
        if frame.kind == "data":
            assert frame.data.payload == frame.stream_id.encode()
            # Echo the same bytes back, as an environment answering on that stream.
            await env.send_bytes(encode_frame(frame))
    assert len(seen) == 1000
    assert all(kinds == ["resume", "data"] for kinds in seen.values())
    assert peers.server.router.stream_count(ENV) == 1000

    async def drain(index: int, ws: Ws) -> set[str]:
        got: set[str] = set()
        for _ in range(per_harness):
            frame = await recv_frame(ws)
            assert owner[frame.stream_id] == index, "frame delivered to the wrong harness"
            assert frame.data.payload == frame.stream_id.encode()
            got.add(frame.stream_id)
        return got

    results = await asyncio.gather(*(drain(i, ws) for i, ws in enumerate(harnesses)))
    for index, got in enumerate(results):
        assert got == {s for s, o in owner.items() if o == index}
    for ws in harnesses:
        await expect_silence(ws, 0.02)
