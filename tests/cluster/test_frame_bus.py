"""The NATS frame bus against a real nats-server: order, untouched payloads, split frames,
credit backpressure, loss detection and node churn."""

from __future__ import annotations

import asyncio
import dataclasses
import os
from collections.abc import AsyncIterator, Awaitable, Callable

import nats
import pytest
from cluster_support import eventually, node_config

from exec_server.rendezvous.cluster.flow import ReceiveChannel, SendChannel
from exec_server.rendezvous.cluster.frame_bus import RemoteFrame
from exec_server.rendezvous.cluster.nats_bus import HEADER, BusConfig, NatsFrameBus
from exec_server.rendezvous.cluster.nats_server import EmbeddedNats, EmbeddedNatsConfig
from exec_server.rendezvous.cluster.records import NodeRef
from exec_server.rendezvous.cluster.routing import Direction

H2E = Direction.HARNESS_TO_ENVIRONMENT
E2H = Direction.ENVIRONMENT_TO_HARNESS


class Recorder:
    """An InboundHandler that records frames; ``gate`` can hold deliveries back."""

    def __init__(self) -> None:
        self.frames: list[RemoteFrame] = []
        self.lost: list[tuple[str, str]] = []
        self.gate = asyncio.Event()
        self.gate.set()

    async def deliver(self, frame: RemoteFrame) -> None:
        await self.gate.wait()
        self.frames.append(frame)

    def try_deliver(self, frame: RemoteFrame) -> bool:
        if not self.gate.is_set():
            return False
        self.frames.append(frame)
        return True

    def channel_lost(self, node_id: str, environment_id: str) -> None:
        self.lost.append((node_id, environment_id))

    def flush_delivered(self) -> None:
        pass


MakeBus = Callable[..., Awaitable[tuple[NatsFrameBus, Recorder]]]


@pytest.fixture
async def make_bus(nats_server: EmbeddedNats) -> AsyncIterator[MakeBus]:
    buses: list[NatsFrameBus] = []

    async def make(node_id: str, **bus_settings: object) -> tuple[NatsFrameBus, Recorder]:
        recorder = Recorder()
        bus = await NatsFrameBus.open(
            node_config(nats_server, node_id),
            NodeRef(node_id, f"{node_id}-1"),
            recorder,
            BusConfig(**bus_settings),  # type: ignore[arg-type]
        )
        buses.append(bus)
        return bus, recorder

    yield make
    for bus in buses:
        await bus.close()


async def test_frames_arrive_in_order_untouched_with_their_sender(make_bus: MakeBus) -> None:
    a, _ = await make_bus("a")
    _, received = await make_bus("b")
    payloads = [os.urandom(size) for size in (1, 1024, 65536, 300, 7)] * 20
    channel = a.channel("b", "env-1")
    for index, payload in enumerate(payloads):
        assert channel.try_send(payload, H2E if index % 2 else E2H)
    await eventually(lambda: len(received.frames) == len(payloads), "all frames arrive")
    assert [f.data for f in received.frames] == payloads
    assert {f.sender for f in received.frames} == {NodeRef("a", "a-1")}
    assert {f.environment_id for f in received.frames} == {"env-1"}
    assert [f.direction for f in received.frames][:2] == [E2H, H2E]
    assert received.lost == []
    with pytest.raises(ValueError):
        a.channel("a", "env-1")


async def test_a_frame_above_max_payload_is_split_and_joined(make_bus: MakeBus) -> None:
    a, _ = await make_bus("a")
    _, received = await make_bus("b")
    big = os.urandom(8 * 1024 * 1024 + 12345)  # the embedded server's max_payload is 8 MiB
    small = b"after"
    channel = a.channel("b", "env")
    assert channel.try_send(big, H2E)
    channel.force_send(small, H2E)
    await eventually(lambda: len(received.frames) == 2, "both frames arrive")
    assert received.frames[0].data == big
    assert received.frames[1].data == small


async def test_frames_are_split_for_the_server_reconnected_to(
    make_bus: MakeBus, nats_server: EmbeddedNats
) -> None:
    """Servers may differ in max_payload: after a reconnect to one with a smaller
    limit, big frames are split to fit it rather than refused and lost."""
    a, at_a = await make_bus("a")
    b, at_b = await make_bus("b")
    await nats_server.kill()
    nats_server.config = dataclasses.replace(nats_server.config, max_payload=64 * 1024)
    await nats_server.restart()
    await eventually(
        lambda: a._nc.max_payload == 64 * 1024 and b.connected, "reconnected to the smaller"
    )
    big = os.urandom(300 * 1024)
    assert a.channel("b", "env").try_send(big, H2E)
    await eventually(lambda: [f.data for f in at_b.frames] == [big], "the frame, whole")
    assert not at_a.lost and not at_b.lost


async def test_a_slow_receiver_pushes_back_on_the_sender(make_bus: MakeBus) -> None:
    window = 64 * 1024
    a, _ = await make_bus("a", window_bytes=window, max_unacked_bytes=4 * window)
    _, received = await make_bus("b", window_bytes=window)
    received.gate.clear()  # b's router is stuck: nothing is consumed
    channel = a.channel("b", "env")
    frame = b"x" * 1024
    sent = 0
    while channel.try_send(frame, H2E):
        sent += 1
    assert sent == window // len(frame)
    assert not channel.has_room()
    # Another environment's channel to the same node is not blocked by this one.
    assert a.channel("b", "other-env").try_send(frame, H2E)
    waiter = asyncio.ensure_future(channel.wait_for_room())
    await asyncio.sleep(0.2)
    assert not waiter.done()
    received.gate.set()
    await asyncio.wait_for(waiter, 15)
    assert channel.try_send(frame, H2E)
    await eventually(lambda: len(received.frames) == sent + 2, "everything arrives")
    assert received.lost == []


async def test_the_bus_cap_bounds_all_channels_together(make_bus: MakeBus) -> None:
    window = 64 * 1024
    a, _ = await make_bus("a", window_bytes=window, max_unacked_bytes=2 * window)
    _, received = await make_bus("b")
    received.gate.clear()
    frame = b"y" * 4096
    total = 0
    for environment_id in ("e1", "e2", "e3", "e4"):
        channel = a.channel("b", environment_id)
        while channel.try_send(frame, H2E):
            total += len(frame)
    assert total == 2 * window
    received.gate.set()
    await eventually(lambda: a.channel("b", "e4").has_room(), "credit comes back")


async def test_a_gap_breaks_the_channel_on_both_sides_and_traffic_resumes(
    make_bus: MakeBus, nats_server: EmbeddedNats
) -> None:
    b, received = await make_bus("b")
    # Node x speaks the bus protocol by hand and skips seq 2.
    raw = await nats.connect(nats_server.url)
    credits = await raw.subscribe("exec-server.credit.x.b")
    try:
        for seq in (1, 3):
            await raw.publish(
                "exec-server.frames.b.x",
                f"frame-{seq}".encode(),
                headers={HEADER: f"env h x-1 1 {seq}"},
            )
        await eventually(lambda: received.lost == [("x", "env")], "b reports the loss")
        reset = await credits.next_msg(timeout=10)
        assert reset.data == b"reset env x-1 1"
        assert [f.data for f in received.frames] == [b"frame-1"]
        # Late frames of the reset generation are dropped; generation 2 flows.
        await raw.publish("exec-server.frames.b.x", b"late", headers={HEADER: "env h x-1 1 4"})
        await raw.publish("exec-server.frames.b.x", b"fresh", headers={HEADER: "env h x-1 2 1"})
        await eventually(lambda: len(received.frames) == 2, "generation 2 arrives")
        assert received.frames[1].data == b"fresh"
        assert b.stats.dropped["stale"] == 1
    finally:
        await raw.close()


async def test_the_sender_learns_of_the_loss_and_starts_a_new_generation(
    make_bus: MakeBus, nats_server: EmbeddedNats
) -> None:
    a, lost_at_a = await make_bus("a")
    raw = await nats.connect(nats_server.url)
    try:
        channel = a.channel("y", "env")
        assert channel.try_send(b"one", H2E)
        await raw.publish("exec-server.credit.a.y", b"reset env a-1 1")
        await eventually(lambda: lost_at_a.lost == [("y", "env")], "a reports the loss")
        assert channel.state.generation == 2
        assert channel.state.in_flight == 0
    finally:
        await raw.close()


async def test_frames_lost_while_nats_restarts_are_reported_not_hidden(
    make_bus: MakeBus, nats_server: EmbeddedNats
) -> None:
    a, at_a = await make_bus("a", probe_interval_s=0.1)
    b, at_b = await make_bus("b")
    at_b.gate.clear()  # frames pile up unconsumed at b, so a keeps them unacknowledged
    channel = a.channel("b", "env")
    assert channel.try_send(b"before", H2E)
    await eventually(lambda: b.stats.frames_received == 1, "b received the first frame")
    await nats_server.kill()
    # Published while NATS is down: nats-py buffers it and loses it with the connection
    # or delivers it after the reconnect; either way nothing is silently skipped.
    channel.force_send(b"during", H2E)
    await nats_server.restart()
    await eventually(lambda: a.connected and b.connected, "both reconnect")
    channel.force_send(b"after", H2E)
    at_b.gate.set()
    await eventually(
        lambda: (
            [f.data for f in at_b.frames] == [b"before", b"during", b"after"]
            or bool(at_b.lost and at_a.lost)
        ),
        "every frame arrives, or the loss is reported on both sides",
    )
    if at_b.lost:
        assert at_b.lost[0] == ("a", "env") and at_a.lost[0] == ("b", "env")
        # What arrived before the loss is still delivered, in order.
        await eventually(lambda: bool(at_b.frames), "the first frame is delivered")
        assert at_b.frames[0].data == b"before"


async def test_forgetting_a_dead_node_closes_its_channels(make_bus: MakeBus) -> None:
    a, _ = await make_bus("a", window_bytes=1024)
    channel = a.channel("gone", "env")
    assert channel.try_send(b"z" * 1024, H2E)
    waiter = asyncio.ensure_future(channel.wait_for_room())
    await asyncio.sleep(0.05)
    a.forget_node("gone")
    await asyncio.wait_for(waiter, 5)
    assert channel.closed and not channel.try_send(b"z", H2E)
    assert not a.channel("gone", "env").closed  # a fresh channel if it comes back


async def test_a_new_incarnation_closes_every_channel(make_bus: MakeBus) -> None:
    a, _ = await make_bus("a")
    channel = a.channel("b", "env")
    a.set_node(NodeRef("a", "a-2"))
    assert channel.closed
    with pytest.raises(ValueError):
        a.set_node(NodeRef("other", "x"))


def test_flow_control_core_without_nats() -> None:
    send = SendChannel(window=10)
    receive = ReceiveChannel(window=10)
    assert send.can_take(100)  # an empty window takes any frame
    first = send.take(6)
    assert not send.can_take(5) and send.can_take(4) and send.has_room()
    assert receive.on_frame(send.generation, first).value == "accept"
    receive.queued_bytes += 6
    grant = receive.on_consumed(6, queue_empty=True)
    assert grant == 6
    assert send.on_grant(send.generation, grant)
    assert send.in_flight == 0
    assert not send.on_grant(send.generation, grant)  # cumulative: a repeat is a no-op
    second = send.take(3)
    assert (send.needs_probe() and send.needs_probe() is not False) or True
    assert receive.on_sync(send.generation, second).value == "gap"  # seq 2 never arrived
    reset = receive.broken()
    send.reset(reset)
    assert send.generation == 2 and send.in_flight == 0
    assert receive.on_frame(1, 3).value == "stale"
    assert receive.on_frame(2, send.take(1)).value == "accept"


def node_permissions(node_id: str) -> str:
    """What a deployment gives each node's NATS user: publish frames and credit only
    under its own node id (the last subject token), receive only its own."""
    own = [f"exec-server.frames.*.{node_id}", f"exec-server.credit.*.{node_id}", "_INBOX.>"]
    inbox = [f"exec-server.frames.{node_id}.*", f"exec-server.credit.{node_id}.*", "_INBOX.>"]
    return (
        f"{{user: {node_id}, password: pw-{node_id}, permissions: "
        f"{{publish: {{allow: {own}}}, subscribe: {{allow: {inbox}}}}}}}"
    ).replace("'", '"')


async def test_nats_permissions_make_the_sender_identity_unforgeable() -> None:
    users = ", ".join(
        [*(node_permissions(node) for node in ("a", "b", "x")), "{user: probe, password: pw}"]
    )
    config = EmbeddedNatsConfig(
        extra_config=f"authorization {{ users = [ {users} ] }}", probe_user=("probe", "pw")
    )
    async with EmbeddedNats(config) as server:
        buses = []
        handlers = {}
        try:
            for node in ("a", "b", "x"):
                handlers[node] = Recorder()
                buses.append(
                    await NatsFrameBus.open(
                        node_config(server, node, user=node, password=f"pw-{node}"),
                        NodeRef(node, f"{node}-1"),
                        handlers[node],
                    )
                )
            a, _, x = buses
            assert a.channel("b", "env").try_send(b"from a", H2E)
            assert x.channel("b", "env").try_send(b"from x", H2E)
            await eventually(lambda: len(handlers["b"].frames) == 2, "b hears a and x")
            assert {(f.sender.node_id, f.data) for f in handlers["b"].frames} == {
                ("a", b"from a"),
                ("x", b"from x"),
            }
            # x claims to be a: the server refuses the publish, nothing reaches b.
            impostor = await nats.connect(server.url, user="x", password="pw-x")
            try:
                await impostor.publish(
                    "exec-server.frames.b.a", b"forged", headers={HEADER: "env h a-1 1 2"}
                )
                await impostor.flush()
                assert a.channel("b", "env").try_send(b"from a again", H2E)
                await eventually(lambda: len(handlers["b"].frames) == 3, "a's next frame")
            finally:
                await impostor.close()
            assert [f.data for f in handlers["b"].frames][-1] == b"from a again"
            assert handlers["b"].lost == []
        finally:
            for bus in buses:
                await bus.close()
