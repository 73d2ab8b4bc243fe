"""Relay routing through a live rendezvous, with raw websocket peers speaking protobuf.

Grace periods are 0.3 s here (see conftest), so timer-driven resets are fast to observe.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import defaultdict
from collections.abc import Callable

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

from exec_server.relay.control import CONTROL_SUBPROTOCOL
from exec_server.relay.frame_codec import (
    RelayFrame,
    data_frame,
    decode_frame,
    encode_frame,
    resume_frame,
)
from exec_server.relay.proto.relay_v1_pb2 import RelayData, RelayMessageFrame, RelayResume
from exec_server.rendezvous import RendezvousServer, Router

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


def stream_owner(router: Router, environment_id: str, stream_id: str) -> object | None:
    """The socket that owns a stream in the router's table, or ``None``."""
    route = router._routes.get(environment_id)
    stream = route.streams.get(stream_id) if route else None
    return stream.owner if stream else None


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
    await wait_for(lambda: stream_owner(peers.server.router, ENV, "s-1") is None)

    stranger, _ = await peers.harness()  # a different /connect URL: another nonce
    await stranger.send_bytes(resume("s-1"))
    await expect_reset(stranger, "s-1", "stream_owned_by_another_harness")

    again, _ = await peers.harness(url=url)  # the same URL: the same harness reconnecting
    await again.send_bytes(data("s-1", 1, b"{}"))  # not before it resumes the stream
    await expect_reset(again, "s-1", "stream_owned_by_another_harness")
    await again.send_bytes(resume("s-1"))
    assert (await recv_frame(env)).kind == "resume"
    await again.send_bytes(data("s-1", 1, b"{}"))
    assert (await recv_frame(env)).stream_id == "s-1"
    await env.send_bytes(data("s-1", 0, b"{}"))
    assert (await recv_frame(again)).stream_id == "s-1"
    await asyncio.sleep(0.5)  # past the grace: no harness_offline reset for a reclaimed stream
    await expect_silence(env, 0.05)
    samples = await scrape(peers.http, peers.base)
    assert samples["exec_server_rendezvous_stream_reclaims_total"] == 1


async def test_two_live_sockets_on_one_url_cannot_steal_a_stream(peers: Peers) -> None:
    """The bad-input run of issue 8: sockets reusing a good harness's URL send ``data``
    and ``reset`` for its stream. Nothing is forwarded and the owner keeps its stream."""
    env = await peers.environment()
    owner, url = await peers.harness()
    intruder, _ = await peers.harness(url=url)  # same URL, same nonce, newer socket
    await owner.send_bytes(resume("s-1"))
    await recv_frame(env)

    await intruder.send_bytes(data("s-1", 5, b'{"id":9,"method":"process/start"}'))
    await expect_reset(intruder, "s-1", "stream_owned_by_another_harness")
    await intruder.send_bytes(reset("s-1", "hijack"))  # refused, not forwarded, not answered
    await expect_silence(env, 0.1)
    await expect_silence(intruder, 0.05)

    await owner.send_bytes(data("s-1", 0, b'{"id":1}'))
    assert (await recv_frame(env)).data.payload == b'{"id":1}'
    await env.send_bytes(data("s-1", 0, b'{"id":1,"result":{}}'))
    assert (await recv_frame(owner)).data.payload == b'{"id":1,"result":{}}'
    await expect_silence(intruder, 0.05)
    assert peers.server.router.stats.reclaims == 0
    assert await peers.dropped("stream_owned_by_another_harness") == 2


async def test_a_newer_socket_resuming_with_the_same_url_takes_the_stream_over(
    peers: Peers,
) -> None:
    """What our harness does when it redials before the rendezvous noticed its old socket
    die (half-open TCP): the new socket's ``resume`` moves the stream, the old socket's
    claim ends, and the old socket cannot take it back."""
    env = await peers.environment()
    old, url = await peers.harness()
    await old.send_bytes(resume("s-1"))
    await recv_frame(env)
    new, _ = await peers.harness(url=url)
    await new.send_bytes(resume("s-1"))
    assert (await recv_frame(env)).kind == "resume"
    await expect_reset(old, "s-1", "stream_reclaimed")
    await env.send_bytes(data("s-1", 0, b"{}"))
    assert (await recv_frame(new)).stream_id == "s-1"

    await old.send_bytes(resume("s-1"))  # an older socket never reclaims
    await expect_reset(old, "s-1", "stream_owned_by_another_harness")
    await old.send_bytes(data("s-1", 1, b"{}"))
    await expect_reset(old, "s-1", "stream_owned_by_another_harness")
    await expect_silence(env, 0.1)
    await env.send_bytes(data("s-1", 1, b"{}"))
    assert (await recv_frame(new)).stream_id == "s-1"
    assert peers.server.router.stats.reclaims == 1


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
    await wait_for(lambda: stream_owner(peers.server.router, ENV, "s-1") is None)
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


BAD_FRAMES = {
    "undecodable": b"\xff\xff\xff",
    "truncated": encode_frame(data_frame("s", 1, b"x" * 100))[:-10],
    "absurd_length": b"\x08\x01\x12\xff\xff\xff\xff\x0f",
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
"""Invalid frames; the first three are counted as ``undecodable``, the others by name."""


async def expect_close(ws: Ws, code: int) -> str:
    msg = await asyncio.wait_for(ws.receive(), WAIT_S)
    assert msg.type is aiohttp.WSMsgType.CLOSE, (msg.type, msg.data)
    assert msg.data == code, msg
    reason: str = msg.extra
    assert reason, "a close for a protocol error names it"
    return reason


@pytest.mark.parametrize("role", ["harness", "environment"])
async def test_protocol_errors_close_only_the_offending_socket(peers: Peers, role: str) -> None:
    env = await peers.environment()
    good, _ = await peers.harness()
    await good.send_bytes(resume("s-ok"))
    assert (await recv_frame(env)).stream_id == "s-ok"
    reasons: list[str] = []
    for name, frame in BAD_FRAMES.items():
        if role == "harness":
            bad, _ = await peers.harness()
        else:
            bad = await dial(peers.http, await register(peers.http, peers.base, f"other-{name}"))
        await bad.send_bytes(frame)
        reasons.append(await expect_close(bad, 1002))
    text, _ = await peers.harness()
    await text.send_str('{"not":"binary"}')
    assert await expect_close(text, 1003) == "text message on a binary relay socket"

    # The good stream never noticed.
    await good.send_bytes(data("s-ok", 0, b"{}"))
    assert (await recv_frame(env)).stream_id == "s-ok"
    await env.send_bytes(data("s-ok", 0, b"{}"))
    assert (await recv_frame(good)).stream_id == "s-ok"
    assert all(reason.startswith("invalid relay frame: ") for reason in reasons)
    samples = await scrape(peers.http, peers.base)
    errors = "exec_server_rendezvous_protocol_errors_total"
    assert samples[f'{errors}{{reason="undecodable"}}'] == 3
    for reason in ("bad_version", "missing_stream_id", "missing_body", "empty_payload"):
        assert samples[f'{errors}{{reason="{reason}"}}'] == 1, reason
    assert samples[f'{errors}{{reason="bad_segment"}}'] == 1
    assert samples[f'{errors}{{reason="text_frame"}}'] == 1


async def test_a_message_over_the_size_limit_closes_with_1009(
    make_rendezvous: MakeRendezvous, http: aiohttp.ClientSession
) -> None:
    server = await make_rendezvous(max_message_bytes=64 * 1024)
    peers = Peers(server, http)
    env = await peers.environment()
    good, _ = await peers.harness()
    big, _ = await peers.harness()
    await big.send_bytes(data("s-big", 0, b"x" * (65 * 1024)))
    assert await expect_close(big, 1009) == "relay message over the size limit"
    await good.send_bytes(resume("s-ok"))
    assert (await recv_frame(env)).stream_id == "s-ok"
    samples = await scrape(http, server.base_url)
    assert samples['exec_server_rendezvous_protocol_errors_total{reason="oversize"}'] == 1


async def test_unknown_stream_frames_from_the_environment_are_dropped_and_counted(
    peers: Peers,
) -> None:
    env = await peers.environment()
    await env.send_bytes(data("nobody", 0, b"{}"))
    await wait_for(lambda: peers.server.router.stats.dropped["unknown_stream"] == 1)
    harness, _ = await peers.harness()
    await harness.send_bytes(resume("s-ok"))
    assert (await recv_frame(env)).stream_id == "s-ok"


def flagged(stream_id: str, seq: int, payload: bytes) -> bytes:
    """A data frame from one of our reliable endpoints (capability flag set)."""
    return encode_frame(data_frame(stream_id, seq, payload, ack_bits=1))


async def control_environment(server: RendezvousServer, http: aiohttp.ClientSession) -> Ws:
    """An environment socket that negotiated control messages (as ours does)."""
    env = await http.ws_connect(
        await register(http, server.base_url, ENV),
        compress=0,
        max_msg_size=0,
        protocols=(CONTROL_SUBPROTOCOL,),
    )
    assert env.protocol == CONTROL_SUBPROTOCOL
    await wait_for(lambda: server.router.is_online(ENV))
    return env


async def fast_stream_keeps_flowing(
    env: Ws, slow_frame: Callable[[int], bytes], fast: Ws, count: int
) -> int:
    """Send ``count`` slow-stream frames with a fast-stream frame every 16, while the slow
    harness reads nothing; return how many fast frames arrived (all must)."""
    fast_frames = count // 16
    received = 0

    async def read_fast() -> None:
        nonlocal received
        for _ in range(fast_frames):
            frame = await recv_frame(fast)
            assert frame.stream_id == "fast"
            received += 1

    reader = asyncio.ensure_future(read_fast())
    for i in range(count):
        await env.send_bytes(slow_frame(i))
        if i % 16 == 15:
            await env.send_bytes(data("fast", i, b"tick"))
    await asyncio.wait_for(reader, 4 * WAIT_S)
    return received


async def test_slow_harness_reliable_stream_frames_are_dropped_not_queued(
    make_rendezvous: MakeRendezvous, http: aiohttp.ClientSession
) -> None:
    server = await make_rendezvous(max_queue_bytes=256 * 1024)
    peers = Peers(server, http)
    env = await peers.environment()
    slow, _ = await peers.harness()  # never reads
    fast, _ = await peers.harness()
    await slow.send_bytes(encode_frame(resume_frame("slow", 0, ack_bits=1)))
    await fast.send_bytes(resume("fast"))
    await recv_frame(env)
    await recv_frame(env)
    big = b"x" * (64 * 1024)
    # 50 MB for the slow harness: far beyond kernel buffers plus its 256 KiB queue.
    assert await fast_stream_keeps_flowing(env, lambda i: flagged("slow", i + 1, big), fast, 800)
    await wait_for(lambda: server.router.stats.dropped["harness_queue_full"] > 0)
    queued = [p.queued_bytes for p in server.router.peers if p.role.value == "harness"]
    assert max(queued) <= 256 * 1024 + len(big) + 64
    assert server.router.stats.resets_sent["harness_too_slow"] == 0


class ControlLog:
    """Reads an environment socket in the background: relay frames and control texts."""

    def __init__(self, env: Ws) -> None:
        self.env = env
        self.controls: list[dict[str, str]] = []
        self.frames: list[RelayFrame] = []
        self._task = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        while True:
            msg = await self.env.receive()
            if msg.type is aiohttp.WSMsgType.TEXT:
                self.controls.append(json.loads(msg.data))
            elif msg.type is aiohttp.WSMsgType.BINARY:
                self.frames.append(decode_frame(msg.data))
            else:
                return

    def kinds(self) -> list[str]:
        return [c["type"] for c in self.controls]

    async def close(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


async def test_slow_legacy_harness_is_paused_at_the_environment_never_dropped(
    make_rendezvous: MakeRendezvous, http: aiohttp.ClientSession
) -> None:
    """A stream that cannot retransmit loses nothing: the environment is told to pause
    that stream (its other streams keep flowing) and to resume once the harness caught up."""
    server = await make_rendezvous(max_queue_bytes=1024 * 1024, stream_pause_bytes=512 * 1024)
    peers = Peers(server, http)
    env = await control_environment(server, http)
    slow, _ = await peers.harness()
    fast, _ = await peers.harness()
    await slow.send_bytes(resume("slow"))
    await fast.send_bytes(resume("fast"))
    await recv_frame(env)
    await recv_frame(env)
    log = ControlLog(env)
    chunk = b"y" * (64 * 1024)
    # 16 MiB (beyond what kernel buffers absorb) into a 32 MiB hard bound: paused,
    # never cut, nothing dropped, while the other stream keeps flowing.
    count = 256
    assert await fast_stream_keeps_flowing(env, lambda i: data("slow", i, chunk), fast, count)
    await wait_for(lambda: "pause_output" in log.kinds())
    assert log.controls[0] == {"type": "pause_output", "stream_id": "slow"}
    for i in range(count):  # the slow harness reads at last: all of it, in order
        frame = await recv_frame(slow)
        assert (frame.stream_id, frame.data.seq, frame.data.payload) == ("slow", i, chunk)
    await wait_for(lambda: log.kinds()[-1] == "resume_output")
    await log.close()
    stats = server.router.stats
    assert stats.dropped["harness_queue_full"] == 0 and stats.dropped["harness_too_slow"] == 0
    assert stats.pauses >= 1 and stats.resets_sent["harness_too_slow"] == 0


async def read_until_reset(ws: Ws) -> list[int]:
    """Data seqs received on ``ws`` up to a ``reset{harness_too_slow}``."""
    seqs = []
    while True:
        frame = await recv_frame(ws)
        if frame.kind == "reset":
            assert frame.reset.reason == "harness_too_slow"
            return seqs
        seqs.append(frame.data.seq)


async def test_legacy_harness_too_slow_gets_everything_queued_then_an_explicit_reset(
    make_rendezvous: MakeRendezvous, http: aiohttp.ClientSession
) -> None:
    """With an environment that cannot be paused (Codex's), a legacy stream past its bound
    ends with ``reset{harness_too_slow}`` on both sides: no gap, no silent drop."""
    server = await make_rendezvous(
        max_queue_bytes=256 * 1024,
        stream_pause_bytes=256 * 1024,
        max_stream_buffer_bytes=1024 * 1024,
    )
    peers = Peers(server, http)
    env = await peers.environment()  # no control subprotocol: a Codex environment
    slow, _ = await peers.harness()
    await slow.send_bytes(resume("slow"))
    await recv_frame(env)
    chunk = b"z" * (64 * 1024)
    for i in range(256):  # 16 MiB: past kernel buffers and the 1 MiB bound
        await env.send_bytes(data("slow", i, chunk))
    await expect_reset(env, "slow", "harness_too_slow")
    seqs = await read_until_reset(slow)
    assert seqs == list(range(len(seqs))) and len(seqs) >= 16  # a prefix, then the reset
    assert server.router.stream_count(ENV) == 0
    assert server.router.stats.resets_sent["harness_too_slow"] == 2


async def test_paused_legacy_stream_is_reset_after_the_slow_harness_timeout(
    make_rendezvous: MakeRendezvous, http: aiohttp.ClientSession
) -> None:
    server = await make_rendezvous(
        max_queue_bytes=256 * 1024, stream_pause_bytes=128 * 1024, slow_harness_timeout_s=0.3
    )
    env = await control_environment(server, http)
    slow, _ = await Peers(server, http).harness()
    await slow.send_bytes(resume("slow"))
    await recv_frame(env)
    log = ControlLog(env)
    for i in range(256):  # 16 MiB, far below the 32 MiB hard bound: only the timer cuts
        await env.send_bytes(data("slow", i, b"w" * (64 * 1024)))
    await wait_for(lambda: any(f.kind == "reset" for f in log.frames))
    await log.close()
    assert [(f.stream_id, f.reset.reason) for f in log.frames] == [("slow", "harness_too_slow")]
    assert "pause_output" in log.kinds()
    seqs = await read_until_reset(slow)
    assert seqs == list(range(len(seqs)))


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
