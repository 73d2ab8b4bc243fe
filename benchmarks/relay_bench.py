#!/usr/bin/env python3
"""Relay benchmark: the remote (relay) path measured side by side with the direct websocket.

One run starts, each as its own process:

* **direct**: ``exec-server serve --listen ws://127.0.0.1:0``;
* **forwarder**: a minimal forwarding rendezvous (this file, ``--serve-forwarder``): the
  registry endpoint plus a websocket router that forwards binary frames by ``stream_id``
  and reads nothing else. A harness socket whose URL carries ``&loss=P`` has a fraction
  ``P`` of its frames dropped, seeded, in both directions; other sockets are lossless;
* **relay environment**: ``exec-server serve --remote <forwarder> --environment-id bench``;
* when ``exec_server.rendezvous.RendezvousServer`` is importable and works, the real
  rendezvous (``--serve-rendezvous``) with a second relay environment, for extra rows.

The client side uses the SDK's transports (``connect_websocket`` for direct,
``connect_harness_relay`` for the relay: the reliable relay stream as a harness uses it)
under one minimal JSON-RPC client, so the two columns differ only in the transport.

Measured (samples alternate between the columns, the order flipping every round):

* ``output_128mib``: one process writing 128 MiB (``head -c ... /dev/zero``), start to
  ``process/closed``; byte count checked. Output chunks are the SDK's 128 KiB (the
  ``outputChunkBytes`` extension, asked for on both columns). Goal: relay throughput
  >= 0.8x direct.
* ``output_128mib_codex_chunks``: the same with Codex's 8 KiB chunks (what a Codex
  harness gets): sixteen times the messages, so the per-message cost shows. Reported.

  The output rows also give the CPU seconds each process spent per run (the client;
  the direct server; the forwarder or rendezvous and the relay environment), each
  relay process's CPU as a multiple of the direct server's for the same bytes (goals:
  environment <= 1.5x, rendezvous <= 1.0x), and the throughput each path would reach
  with one core per process (its busiest process sets the pace). On 2 CPUs a wall-time
  ratio cannot show a relay that would be fast on separate machines; these can.
* ``rendezvous_output_128mib`` and ``rendezvous_output_128mib_codex_chunks``: the same
  two rows through the project's ``RendezvousServer`` instead of the minimal forwarder.
* ``getmetadata_p50``: one ``fs/getMetadata`` round trip. Goal: the relay adds <= 1 ms.
* ``lossy_goodput``: process output through the relay with 2% of frames lost in each
  direction vs through the lossless relay. Goal: >= 0.5x the lossless goodput.
* ``streams_1000``: 1,000 harnesses at once, each dialing its own socket, initializing
  and making one request; all their streams share the environment's one socket. Total
  time and p50/p99 latency (dial to answer), with 1,000 direct websockets for reference.

    python benchmarks/relay_bench.py            # full run (about 1 minute)
    python benchmarks/relay_bench.py --quick    # smoke run
    python benchmarks/relay_bench.py --json

Every server process runs the way the real commands do: the direct server and the relay
environments are ``exec-server serve`` (uvloop, ``cli/event_loop.py``), and the forwarder
and the rendezvous run on the same loop (``EXEC_SERVER_EVENT_LOOP=asyncio`` selects the
stdlib loop for all of them). The client stays on the stdlib loop, as ``exec-server run``.

With two or more CPUs the client is pinned to the first and the servers (and the
processes they spawn) to the second, as in ``run.py``; the forwarder and the rendezvous
are left to the scheduler. ``--no-pin`` turns pinning off. Nothing passes or fails on
numbers (exit status 1 only when a benchmark errored, e.g. lost output).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import WSMsgType, web

BENCH_SCRIPT = Path(__file__).resolve()
REPO_ROOT = BENCH_SCRIPT.parents[1]
sys.path.insert(0, str(REPO_ROOT / "src"))

from bench_support import START_TIMEOUT_S, Child, Ids, ProcState, RpcState, run_bounded  # noqa: E402

from exec_server.cli import event_loop  # noqa: E402
from exec_server.client import DEFAULT_OUTPUT_CHUNK_BYTES  # noqa: E402
from exec_server.malloc_tuning import tune_malloc  # noqa: E402
from exec_server.transport.channel import ChannelClosed, MessageChannel  # noqa: E402
from exec_server.transport.harness_relay import connect_harness_relay  # noqa: E402
from exec_server.transport.websocket import connect_websocket  # noqa: E402

ENVIRONMENT_ID = "bench"
REGISTRATION_TOKEN = "relay-bench-token"
REGISTRATION_TOKEN_ENV = "EXEC_SERVER_REGISTRATION_TOKEN"
OP_TIMEOUT_S = 120.0

MIB = 1024 * 1024
OUTPUT_BYTES = 128 * MIB
#: Output chunk size the SDK asks for (``outputChunkBytes`` on ``process/start``) ...
SDK_CHUNK_BYTES = DEFAULT_OUTPUT_CHUNK_BYTES
#: ... and the size a Codex harness gets (it does not send the extension).
CODEX_CHUNK_BYTES = 8192
LOSS_RATE = 0.02
LOSS_SEED = 1729


# ------------------------------------------------------------------------------------
# the minimal forwarding rendezvous (runs in its own process)
# ------------------------------------------------------------------------------------


def frame_stream_id(data: bytes) -> str | None:
    """The ``stream_id`` of a frame as our endpoints encode it (``version`` 1, then a
    ``stream_id`` shorter than 128 bytes), or ``None``: all this forwarder reads."""
    if data[:3] != b"\x08\x01\x12" or len(data) < 4 or data[3] >= 0x80:
        return None
    try:
        return data[4 : 4 + data[3]].decode()
    except UnicodeDecodeError:
        return None


class Forwarder:
    """Registry + router: one environment socket, any number of harness sockets."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.env: web.WebSocketResponse | None = None
        # stream id -> (harness socket, loss rate of that socket)
        self.routes: dict[str, tuple[web.WebSocketResponse, float]] = {}
        self.dropped = 0
        self.forwarded = 0

    async def register(self, request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != f"Bearer {REGISTRATION_TOKEN}":
            return web.json_response({"error": {"message": "bad token"}}, status=401)
        host = request.host
        return web.json_response(
            {
                "environment_id": request.match_info["env_id"],
                "url": f"ws://{host}/relay/environment?role=environment",
            }
        )

    async def status(self, request: web.Request) -> web.Response:
        online = self.env is not None and not self.env.closed
        return web.json_response(
            {"environment": online, "dropped": self.dropped, "forwarded": self.forwarded}
        )

    def _lose(self, loss: float) -> bool:
        if loss and self.rng.random() < loss:
            self.dropped += 1
            return True
        self.forwarded += 1
        return False

    async def environment(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(compress=False, max_msg_size=0)
        await ws.prepare(request)
        self.env = ws
        async for msg in ws:
            if msg.type is not WSMsgType.BINARY:
                continue
            data: bytes = msg.data
            sid = frame_stream_id(data)
            route = self.routes.get(sid) if sid is not None else None
            if route is None:
                continue
            harness, loss = route
            if not self._lose(loss) and not harness.closed:
                with contextlib.suppress(ConnectionError, RuntimeError):
                    await harness.send_bytes(data)
        return ws

    async def harness(self, request: web.Request) -> web.WebSocketResponse:
        loss = float(request.query.get("loss", "0"))
        ws = web.WebSocketResponse(compress=False, max_msg_size=0)
        await ws.prepare(request)
        owned: list[str] = []
        try:
            async for msg in ws:
                if msg.type is not WSMsgType.BINARY:
                    continue
                data: bytes = msg.data
                sid = frame_stream_id(data)
                if sid is not None and self.routes.get(sid, (None,))[0] is not ws:
                    self.routes[sid] = (ws, loss)
                    owned.append(sid)
                env = self.env
                if env is not None and not env.closed and not self._lose(loss):
                    with contextlib.suppress(ConnectionError, RuntimeError):
                        await env.send_bytes(data)
        finally:
            for sid in owned:
                if self.routes.get(sid, (None,))[0] is ws:
                    del self.routes[sid]
        return ws


async def serve_forwarder(seed: int) -> None:
    forwarder = Forwarder(seed)
    app = web.Application()
    app.router.add_post("/cloud/environment/{env_id}/register", forwarder.register)
    app.router.add_get("/relay/environment", forwarder.environment)
    app.router.add_get("/relay/harness", forwarder.harness)
    app.router.add_get("/status", forwarder.status)
    await _serve_until_signal(
        app,
        lambda base: {
            "base_url": base,
            "harness_url": base.replace("http://", "ws://") + "/relay/harness?role=harness",
            "status_url": f"{base}/status",
        },
    )


async def _stop_signal() -> None:
    """Return on SIGTERM or SIGINT (how the runner stops its helper processes)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


async def serve_rendezvous() -> None:
    """The project's RendezvousServer, for the extra rows."""
    from exec_server.rendezvous import RendezvousConfig, RendezvousServer

    server = RendezvousServer(RendezvousConfig(token=REGISTRATION_TOKEN))
    base = await server.start("127.0.0.1", 0)
    info = {"base_url": base, "harness_url": server.harness_url(ENVIRONMENT_ID)}
    print(json.dumps(info), flush=True)
    try:
        await _stop_signal()
    finally:
        await server.close()


async def _serve_until_signal(
    app: web.Application, describe: Callable[[str], dict[str, str]]
) -> None:
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    base = f"http://127.0.0.1:{runner.addresses[0][1]}"
    print(json.dumps(describe(base)), flush=True)
    try:
        await _stop_signal()
    finally:
        await runner.cleanup()


# ------------------------------------------------------------------------------------
# child processes
# ------------------------------------------------------------------------------------


def exec_server_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "exec_server", *args]


def remote_environment(name: str, base_url: str, cpu: int | None) -> Child:
    return Child(
        name,
        # The cleartext relay (this benchmark's subject; noise_relay_bench.py measures
        # the encrypted one, the default since Codex 0.171).
        exec_server_argv(
            "serve",
            "--remote",
            base_url,
            "--environment-id",
            ENVIRONMENT_ID,
            "--remote-transport",
            "legacy",
        ),
        cpu,
        env={REGISTRATION_TOKEN_ENV: REGISTRATION_TOKEN},
        wait_line=False,
    )


# ------------------------------------------------------------------------------------
# client
# ------------------------------------------------------------------------------------


class Client(RpcState):
    """Minimal JSON-RPC client over any MessageChannel: one reader task."""

    def __init__(self, channel: MessageChannel) -> None:
        super().__init__()
        self.channel = channel
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def open(cls, channel: MessageChannel) -> Client:
        client = cls(channel)
        try:
            await client.call("initialize", {"clientName": "relay-bench", "resumeSessionId": None})
            await channel.send(b'{"method":"initialized","params":{}}')
        except BaseException:
            await client.close()
            raise
        return client

    async def _read(self) -> None:
        try:
            while True:
                raw = await self.channel.receive()
                if not isinstance(raw, bytes | str):
                    break
                self._dispatch(raw)
        except ChannelClosed:
            pass
        finally:
            self._fail_pending()

    async def call(self, method: str, params: Any) -> Any:
        data, fut = self._request(method, params)
        await self.channel.send(data)
        return await asyncio.wait_for(fut, OP_TIMEOUT_S)

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.channel.close("benchmark done")
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._reader


async def open_direct(url: str) -> Client:
    return await Client.open(await connect_websocket(url))


async def open_relay(url: str) -> Client:
    return await Client.open(await connect_harness_relay(url))


OUTPUT_MESSAGES: list[int] = []
"""``process/output`` notifications per :func:`run_output` call, in order."""


async def run_output(c: Client, size: int, chunk_bytes: int | None = SDK_CHUNK_BYTES) -> float:
    pid = Ids.next("out")
    state = c.procs[pid] = ProcState()
    t0 = time.perf_counter()
    params = {
        "processId": pid,
        "argv": ["/usr/bin/head", "-c", str(size), "/dev/zero"],
        "cwd": "/",
        "env": {},
        "tty": False,
    }
    if chunk_bytes is not None:
        params["outputChunkBytes"] = chunk_bytes
    await c.call("process/start", params)
    await asyncio.wait_for(state.closed.wait(), OP_TIMEOUT_S)
    elapsed = time.perf_counter() - t0
    del c.procs[pid]
    if state.out_bytes != size:
        raise RuntimeError(f"received {state.out_bytes} of {size} output bytes")
    OUTPUT_MESSAGES.append(state.out_messages)
    return elapsed


async def run_getmetadata(c: Client, path: str) -> float:
    t0 = time.perf_counter()
    await c.call("fs/getMetadata", {"path": path})
    return time.perf_counter() - t0


# ------------------------------------------------------------------------------------
# measurements
# ------------------------------------------------------------------------------------


@dataclass
class Row:
    key: str
    title: str
    left_label: str
    left: str
    right_label: str
    right: str
    comparison: str
    goal: str
    met: bool | None
    numbers: dict[str, Any] = field(default_factory=dict)


async def alternate(
    sides: dict[str, Callable[[], Awaitable[float]]], count: int, warmup: int
) -> dict[str, list[float]]:
    """``count`` samples per side in small batches, alternating, order flipping per round."""
    names = list(sides)
    for name in names:
        for _ in range(warmup):
            await sides[name]()
    samples: dict[str, list[float]] = {n: [] for n in names}
    batch = max(1, count // 20)
    round_no = 0
    while len(samples[names[0]]) < count:
        n = min(batch, count - len(samples[names[0]]))
        for name in names if round_no % 2 == 0 else names[::-1]:
            for _ in range(n):
                samples[name].append(await sides[name]())
        round_no += 1
    return samples


#: CPUs the whole benchmark may use (taken before the client pins itself to one).
AVAILABLE_CPUS = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1


def process_cpu_seconds(pid: int | None) -> float:
    """CPU time (user + system) of process ``pid`` (``None``: this process) so far;
    children it spawned and reaped, like ``head``, are not included."""
    if pid is None:
        return time.process_time()
    # The scheduler's run time of each thread, in nanoseconds: /proc/<pid>/stat counts
    # 10 ms ticks, too coarse for the differences these rows measure.
    with contextlib.suppress(OSError, IndexError, ValueError):
        return (
            sum(
                int(Path(task, "schedstat").read_text().split()[0])
                for task in Path(f"/proc/{pid}/task").iterdir()
            )
            / 1e9
        )
    tick = os.sysconf("SC_CLK_TCK")
    with contextlib.suppress(OSError, IndexError, ValueError):
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / tick
    return 0.0


def cpu_by_process(procs: dict[str, int | None]) -> dict[str, float]:
    return {name: process_cpu_seconds(pid) for name, pid in procs.items()}


def fmt_s(seconds: float) -> str:
    return f"{seconds * 1000:.3f} ms" if seconds < 0.01 else f"{seconds:.3f} s"


def mib_s(size: int, seconds: float) -> str:
    return f"{size / MIB / seconds:.0f} MiB/s"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def describe_cpu(cpu: dict[str, float]) -> str:
    return ", ".join(f"{name} {seconds:.2f}" for name, seconds in cpu.items())


async def bench_output(
    key: str,
    title: str,
    direct: Client,
    relay: Client,
    size: int,
    count: int,
    chunk_bytes: int | None = SDK_CHUNK_BYTES,
    goal: bool = True,
    *,
    direct_procs: dict[str, int | None],
    relay_procs: dict[str, int | None],
) -> Row:
    """Wall time, plus CPU seconds per process on each path (``None`` is this client
    process), and the throughput each path would reach with one core per process: the
    busiest process sets the pace when every process has its own core."""
    cpu: dict[str, list[dict[str, float]]] = {"direct": [], "relay": []}
    messages: dict[str, list[int]] = {"direct": [], "relay": []}

    def metered(
        side: str, c: Client, procs: dict[str, int | None]
    ) -> Callable[[], Awaitable[float]]:
        async def run() -> float:
            before = cpu_by_process(procs)
            elapsed = await run_output(c, size, chunk_bytes)
            after = cpu_by_process(procs)
            cpu[side].append({name: after[name] - before[name] for name in procs})
            messages[side].append(OUTPUT_MESSAGES[-1])
            return elapsed

        return run

    samples = await alternate(
        {
            "direct": metered("direct", direct, direct_procs),
            "relay": metered("relay", relay, relay_procs),
        },
        count,
        warmup=1,
    )
    d, r = statistics.median(samples["direct"]), statistics.median(samples["relay"])
    d_cpu = {n: statistics.median(s[n] for s in cpu["direct"]) for n in direct_procs}
    r_cpu = {n: statistics.median(s[n] for s in cpu["relay"]) for n in relay_procs}
    d_core = size / max(d_cpu.values())
    r_core = size / max(r_cpu.values())
    server = d_cpu.get("server", 0.0)
    ratios = {
        f"{name}_vs_direct_server": seconds / server
        for name, seconds in r_cpu.items()
        if name != "client" and server > 0
    }
    ratio = d / r
    cores = AVAILABLE_CPUS
    per_process = ", ".join(f"{name} {value:.2f}x" for name, value in ratios.items())
    return Row(
        key,
        title,
        "direct",
        f"{fmt_s(d)} ({mib_s(size, d)}); CPU-s {describe_cpu(d_cpu)}; "
        f"one core each: {d_core / MIB:.0f} MiB/s",
        "relay",
        f"{fmt_s(r)} ({mib_s(size, r)}); CPU-s {describe_cpu(r_cpu)}; "
        f"one core each: {r_core / MIB:.0f} MiB/s",
        f"{ratio:.2f}x throughput; CPU vs direct server: {per_process}",
        ">= 0.80x" if goal else "report",
        ratio >= 0.8 if goal else None,
        {
            "direct_s": d,
            "relay_s": r,
            "ratio": ratio,
            "bytes": size,
            "output_chunk_bytes": chunk_bytes or CODEX_CHUNK_BYTES,
            "direct_cpu_s": d_cpu,
            "relay_cpu_s": r_cpu,
            "direct_one_core_each_bytes_per_s": d_core,
            "relay_one_core_each_bytes_per_s": r_core,
            "cpu_vs_direct_server": ratios,
            "cores": cores,
            "samples": samples,
            "cpu_samples": cpu,
            # process/output notifications per sample: the bytes per message each
            # path sends (the environment reads what the pipe holds, up to the chunk)
            "output_messages": messages,
        },
    )


async def bench_getmetadata(
    key: str, title: str, direct: Client, relay: Client, path: str, count: int
) -> Row:
    samples = await alternate(
        {
            "direct": lambda: run_getmetadata(direct, path),
            "relay": lambda: run_getmetadata(relay, path),
        },
        count,
        warmup=100,
    )
    d, r = statistics.median(samples["direct"]), statistics.median(samples["relay"])
    added = r - d
    return Row(
        key,
        title,
        "direct",
        fmt_s(d),
        "relay",
        fmt_s(r),
        f"+{added * 1000:.3f} ms",
        "<= +1 ms",
        added <= 0.001,
        {
            "direct_p50_s": d,
            "relay_p50_s": r,
            "added_s": added,
            "direct_p99_s": percentile(samples["direct"], 0.99),
            "relay_p99_s": percentile(samples["relay"], 0.99),
            "samples": count,
        },
    )


async def bench_lossy(lossless: Client, lossy: Client, size: int, count: int) -> Row:
    samples = await alternate(
        {"lossless": lambda: run_output(lossless, size), "lossy": lambda: run_output(lossy, size)},
        count,
        warmup=0,
    )
    ok, bad = statistics.median(samples["lossless"]), statistics.median(samples["lossy"])
    ratio = ok / bad
    return Row(
        "lossy_goodput",
        f"{size // MIB} MiB output, {LOSS_RATE:.0%} frame loss each way",
        "lossless relay",
        f"{fmt_s(ok)} ({mib_s(size, ok)})",
        "lossy relay",
        f"{fmt_s(bad)} ({mib_s(size, bad)})",
        f"{ratio:.2f}x goodput",
        ">= 0.50x",
        ratio >= 0.5,
        {"lossless_s": ok, "lossy_s": bad, "ratio": ratio, "bytes": size, "samples": samples},
    )


@dataclass
class StreamsResult:
    total_s: float
    latencies: list[float]
    request_latencies: list[float]
    failures: int

    def describe(self) -> str:
        if not self.latencies:
            return f"all {self.failures} failed"
        p50, p99 = percentile(self.latencies, 0.5), percentile(self.latencies, 0.99)
        text = f"{fmt_s(self.total_s)} total, p50 {fmt_s(p50)}, p99 {fmt_s(p99)}"
        return text + (f", {self.failures} failed" if self.failures else "")


async def many_clients(
    count: int, dial: Callable[[], Awaitable[Client]], path: str
) -> StreamsResult:
    """``count`` clients at once: each dials, initializes and makes one request."""
    latencies: list[float] = []
    request_latencies: list[float] = []
    clients: list[Client] = []
    failures = 0
    start = asyncio.Event()

    async def one() -> None:
        nonlocal failures
        await start.wait()
        t0 = time.perf_counter()
        try:
            client = await asyncio.wait_for(dial(), OP_TIMEOUT_S)
        except Exception:
            failures += 1
            return
        clients.append(client)
        try:
            request_latencies.append(await run_getmetadata(client, path))
        except Exception:
            failures += 1
            return
        latencies.append(time.perf_counter() - t0)

    tasks = [asyncio.create_task(one()) for _ in range(count)]
    await asyncio.sleep(0)
    t0 = time.perf_counter()
    start.set()
    await asyncio.gather(*tasks)
    total = time.perf_counter() - t0
    await asyncio.gather(*(c.close() for c in clients))
    return StreamsResult(total, latencies, request_latencies, failures)


async def bench_streams(count: int, direct_url: str, relay_url: str, path: str) -> Row:
    direct = await many_clients(count, lambda: open_direct(direct_url), path)
    relay = await many_clients(count, lambda: open_relay(relay_url), path)

    def numbers(r: StreamsResult) -> dict[str, Any]:
        if not r.latencies:
            return {"total_s": r.total_s, "failures": r.failures}
        return {
            "total_s": r.total_s,
            "p50_s": percentile(r.latencies, 0.5),
            "p99_s": percentile(r.latencies, 0.99),
            "request_p50_s": percentile(r.request_latencies, 0.5),
            "request_p99_s": percentile(r.request_latencies, 0.99),
            "failures": r.failures,
        }

    return Row(
        "streams_1000",
        f"{count} harnesses at once (dial, init, 1 request)",
        f"{count} direct websockets",
        direct.describe(),
        f"{count} streams, one env socket",
        relay.describe(),
        f"{direct.total_s / relay.total_s:.2f}x total" if relay.latencies else "-",
        "report",
        None if relay.failures == 0 else False,
        {"direct": numbers(direct), "relay": numbers(relay)},
    )


# ------------------------------------------------------------------------------------
# runner
# ------------------------------------------------------------------------------------


def pick_cpus(pin: bool) -> tuple[int | None, int | None]:
    if not pin or not hasattr(os, "sched_getaffinity"):
        return None, None
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return None, None
    return cpus[0], cpus[1]


async def wait_forwarder_online(http: aiohttp.ClientSession, status_url: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        with contextlib.suppress(aiohttp.ClientError):
            async with http.get(status_url) as resp:
                if (await resp.json())["environment"]:
                    return
        await asyncio.sleep(0.05)
    raise RuntimeError("the relay environment never connected to the forwarder")


async def open_relay_when_online(url: str) -> Client:
    """Dial until the environment behind a rendezvous answers ``initialize``."""
    deadline = time.monotonic() + START_TIMEOUT_S
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            return await asyncio.wait_for(open_relay(url), 3.0)
        except Exception as exc:
            last = exc
            await asyncio.sleep(0.2)
    raise RuntimeError(f"no environment answered through the rendezvous: {last}")


def rendezvous_available() -> str | None:
    """Why the RendezvousServer rows cannot run, or ``None`` when they can."""
    try:
        from exec_server.rendezvous import RendezvousServer  # noqa: F401
    except Exception as exc:
        return f"exec_server.rendezvous.RendezvousServer is not importable: {exc}"
    return None


async def main_async(args: argparse.Namespace) -> int:
    client_cpu, server_cpu = pick_cpus(not args.no_pin)
    if client_cpu is not None:
        os.sched_setaffinity(0, {client_cpu})
    quick = args.quick
    output_samples = args.samples or (1 if quick else 3)
    lossy_bytes = (32 if quick else 64) * MIB
    meta_samples = 300 if quick else 2000
    streams = args.streams or (200 if quick else 1000)

    me = [sys.executable, str(BENCH_SCRIPT)]
    direct_server = Child(
        "direct", exec_server_argv("serve", "--listen", "ws://127.0.0.1:0"), server_cpu
    )
    forwarder = Child("forwarder", [*me, "--serve-forwarder", "--seed", str(LOSS_SEED)])
    children: list[Child] = [direct_server, forwarder]
    rows: list[Row] = []
    errors: list[str] = []
    notes: list[str] = []
    tmp = Path(tempfile.mkdtemp(prefix="relay-bench-"))
    clients: list[Client] = []

    def progress(text: str) -> None:
        if not args.json:
            print(text, file=sys.stderr, flush=True)

    try:
        await direct_server.start()
        await forwarder.start()
        fwd = forwarder.info()
        environment = remote_environment("relay-env", fwd["base_url"], server_cpu)
        children.append(environment)
        await environment.start()
        async with aiohttp.ClientSession() as http:
            await wait_forwarder_online(http, fwd["status_url"])
        direct_url = direct_server.line
        relay_url = fwd["harness_url"]
        direct_procs: dict[str, int | None] = {"client": None, "server": direct_server.pid}
        relay_procs: dict[str, int | None] = {
            "client": None,
            "forwarder": forwarder.pid,
            "environment": environment.pid,
        }
        direct = await open_direct(direct_url)
        relay = await open_relay(relay_url)
        lossy = await open_relay(f"{relay_url}&loss={LOSS_RATE}")
        clients += [direct, relay, lossy]

        async def attempt(name: str, make: Callable[[], Awaitable[Row]]) -> None:
            if args.only and name not in args.only:
                return
            progress(f"running {name} ...")
            try:
                rows.append(await make())
            except Exception as exc:
                errors.append(f"{name}: {type(exc).__name__}: {exc}")

        await attempt(
            "output_128mib",
            lambda: bench_output(
                "output_128mib",
                f"128 MiB process output ({SDK_CHUNK_BYTES // 1024} KiB chunks, SDK default)",
                direct,
                relay,
                OUTPUT_BYTES,
                output_samples,
                direct_procs=direct_procs,
                relay_procs=relay_procs,
            ),
        )
        await attempt(
            "output_128mib_codex_chunks",
            lambda: bench_output(
                "output_128mib_codex_chunks",
                f"128 MiB process output ({CODEX_CHUNK_BYTES // 1024} KiB chunks, as Codex's)",
                direct,
                relay,
                OUTPUT_BYTES,
                output_samples,
                None,
                goal=False,
                direct_procs=direct_procs,
                relay_procs=relay_procs,
            ),
        )
        await attempt(
            "getmetadata_p50",
            lambda: bench_getmetadata(
                "getmetadata_p50",
                "fs/getMetadata round trip, p50",
                direct,
                relay,
                str(tmp),
                meta_samples,
            ),
        )
        await attempt(
            "lossy_goodput", lambda: bench_lossy(relay, lossy, lossy_bytes, output_samples)
        )
        await attempt(
            "streams_1000", lambda: bench_streams(streams, direct_url, relay_url, str(tmp))
        )

        if args.no_rendezvous:
            notes.append("RendezvousServer rows skipped (--no-rendezvous)")
        elif (why := rendezvous_available()) is not None:
            notes.append(f"RendezvousServer rows skipped: {why}")
        else:
            try:
                progress("starting RendezvousServer ...")
                rendezvous = Child("rendezvous", [*me, "--serve-rendezvous"])
                children.append(rendezvous)
                await rendezvous.start()
                rdv = rendezvous.info()
                environment2 = remote_environment("rdv-env", rdv["base_url"], server_cpu)
                children.append(environment2)
                await environment2.start()
                via_rdv = await open_relay_when_online(rdv["harness_url"])
                clients.append(via_rdv)
                rendezvous_procs: dict[str, int | None] = {
                    "client": None,
                    "rendezvous": rendezvous.pid,
                    "environment": environment2.pid,
                }
            except Exception as exc:
                notes.append(f"RendezvousServer rows skipped: {type(exc).__name__}: {exc}")
            else:
                await attempt(
                    "rendezvous_output_128mib",
                    lambda: bench_output(
                        "rendezvous_output_128mib",
                        "128 MiB output via RendezvousServer",
                        direct,
                        via_rdv,
                        OUTPUT_BYTES,
                        output_samples,
                        direct_procs=direct_procs,
                        relay_procs=rendezvous_procs,
                    ),
                )
                await attempt(
                    "rendezvous_output_128mib_codex_chunks",
                    lambda: bench_output(
                        "rendezvous_output_128mib_codex_chunks",
                        f"128 MiB output via RendezvousServer ({CODEX_CHUNK_BYTES // 1024} KiB "
                        "chunks)",
                        direct,
                        via_rdv,
                        OUTPUT_BYTES,
                        output_samples,
                        None,
                        goal=False,
                        direct_procs=direct_procs,
                        relay_procs=rendezvous_procs,
                    ),
                )
                await attempt(
                    "rendezvous_getmetadata_p50",
                    lambda: bench_getmetadata(
                        "rendezvous_getmetadata_p50",
                        "getMetadata p50 via RendezvousServer",
                        direct,
                        via_rdv,
                        str(tmp),
                        meta_samples,
                    ),
                )
    finally:
        for client in clients:
            await client.close()
        for child in reversed(children):
            await child.stop()
        shutil.rmtree(tmp, ignore_errors=True)

    return report(
        rows, errors, notes, as_json=args.json, quick=quick, pinned=(client_cpu, server_cpu)
    )


def report(
    rows: list[Row],
    errors: list[str],
    notes: list[str],
    *,
    as_json: bool,
    quick: bool,
    pinned: tuple[int | None, int | None],
) -> int:
    """Print the rows as JSON or as a table (with notes and errors); the exit status."""
    if as_json:
        print(
            json.dumps(
                {
                    "quick": quick,
                    "pinned": {"client_cpu": pinned[0], "server_cpu": pinned[1]},
                    "results": [
                        {
                            "key": r.key,
                            "title": r.title,
                            r.left_label: r.left,
                            r.right_label: r.right,
                            "comparison": r.comparison,
                            "goal": r.goal,
                            "met": r.met,
                            "numbers": r.numbers,
                        }
                        for r in rows
                    ],
                    "errors": errors,
                    "notes": notes,
                },
                indent=2,
            )
        )
    else:
        print(render_table(rows))
        for note in notes:
            print(f"  note: {note}")
        for error in errors:
            print(f"  ! {error}")
    return 1 if errors else 0


def render_table(rows: list[Row]) -> str:
    header = ["benchmark", "baseline", "relay", "relay vs baseline", "goal", "met"]
    table = [header]
    for r in rows:
        met = "-" if r.met is None else "yes" if r.met else "NO"
        table.append(
            [
                r.title,
                f"{r.left_label}: {r.left}",
                f"{r.right_label}: {r.right}",
                r.comparison,
                r.goal,
                met,
            ]
        )
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    lines = []
    for i, row in enumerate(table):
        cells = " | ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True))
        lines.append(f"| {cells} |")
        if i == 0:
            lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer samples, 200 streams")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--streams", type=int, help="concurrent harnesses (default 1000)")
    parser.add_argument(
        "--samples", type=int, help="samples per side of each output row (default 3, 1 quick)"
    )
    parser.add_argument("--no-pin", action="store_true", help="do not pin client and servers")
    parser.add_argument(
        "--only",
        type=lambda text: set(text.split(",")),
        help="run only these rows (comma-separated keys, e.g. output_128mib)",
    )
    parser.add_argument(
        "--no-rendezvous", action="store_true", help="skip the RendezvousServer rows"
    )
    parser.add_argument(
        "--timeout", type=float, default=900.0, help="abort the whole run after this many seconds"
    )
    parser.add_argument("--serve-forwarder", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--serve-rendezvous", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=LOSS_SEED, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # As the exec-server CLI does for every command; the client process here serves
    # both columns, so each side gets the same allocator.
    tune_malloc()
    # The helper servers run on the loop the real long-running commands use
    # (``exec-server serve``/``rendezvous``: uvloop unless EXEC_SERVER_EVENT_LOOP says
    # otherwise); the environments and the direct server are ``exec-server serve`` itself.
    if args.serve_forwarder:
        event_loop.run(serve_forwarder(args.seed))
        return 0
    if args.serve_rendezvous:
        event_loop.run(serve_rendezvous())
        return 0
    return run_bounded(lambda: main_async(args), args.timeout)


if __name__ == "__main__":
    raise SystemExit(main())
