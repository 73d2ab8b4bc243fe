#!/usr/bin/env python3
"""Rendezvous benchmark: routing capacity and the latency one rendezvous hop adds.

Three processes: this client, an echo peer that sends every binary websocket message
straight back (the "environment"), and, for the rendezvous runs, ``exec-server
rendezvous``. Each measurement runs twice:

* **direct**: client <-> echo peer (the peer is a websocket server);
* **rendezvous**: client (harness URL) <-> rendezvous <-> echo peer (environment URL),
  so every round trip is routed twice by the rendezvous.

Measured: ping-pong round-trip time of one 1 KiB frame (p50/p99), and echo throughput
with 1 KiB and 64 KiB payloads spread over many streams, with a bounded number of frames
in flight so no queue overflows (the rendezvous would drop, by design). Throughput is
round trips per second; the rendezvous routes twice that many frames. Its CPU use during
each run shows whether it was the bottleneck. Output: a table with the ratio
rendezvous/direct; nothing passes or fails.

    python benchmarks/rendezvous_bench.py            # full run (about 30 s)
    python benchmarks/rendezvous_bench.py --quick    # smoke run
    python benchmarks/rendezvous_bench.py --json

With two or more CPUs the rendezvous gets its own CPU and the client and echo peer share
another (notes/dependencies.md gotcha 6); ``--no-pin`` disables this.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import signal
import statistics
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import WSMsgType, web

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "src"))

from exec_server.malloc_tuning import tune_malloc  # noqa: E402
from exec_server.relay.frame_codec import data_frame, encode_frame  # noqa: E402

START_TIMEOUT_S = 20.0
STOP_GRACE_S = 5.0
OP_TIMEOUT_S = 60.0
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
ENVIRONMENT_ID = "bench"

KIB = 1024
MIB = 1024 * 1024


# --- echo peer (child process) ----------------------------------------------------------


async def _echo_loop(ws: Any) -> None:
    async for msg in ws:
        if msg.type is WSMsgType.BINARY:
            await ws.send_bytes(msg.data)
        elif msg.type in (WSMsgType.CLOSE, WSMsgType.ERROR):
            return


async def run_echo_server() -> None:
    async def handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(compress=False, max_msg_size=MAX_MESSAGE_BYTES)
        await ws.prepare(request)
        await _echo_loop(ws)
        return ws

    app = web.Application()
    app.router.add_get("/", handler)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    print(f"ws://{host}:{port}", flush=True)
    await asyncio.Event().wait()


async def run_echo_client(url: str) -> None:
    async with (
        aiohttp.ClientSession() as http,
        http.ws_connect(url, compress=0, max_msg_size=MAX_MESSAGE_BYTES) as ws,
    ):
        print("connected", flush=True)
        await _echo_loop(ws)


# --- process management -----------------------------------------------------------------


@dataclass
class Child:
    proc: asyncio.subprocess.Process
    first_line: str

    def cpu_seconds(self) -> float:
        """User + system CPU of the child so far (Linux /proc)."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _pin(cpu: int | None) -> Callable[[], None] | None:
    if cpu is None:
        return None
    return lambda: os.sched_setaffinity(0, {cpu})


@contextlib.asynccontextmanager
async def child(argv: list[str], env: dict[str, str], cpu: int | None) -> AsyncIterator[Child]:
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdout=asyncio.subprocess.PIPE,
        env=env,
        start_new_session=True,
        preexec_fn=_pin(cpu),
    )
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), START_TIMEOUT_S)
        if not line:
            raise RuntimeError(f"{argv} exited before printing its first line")
        yield Child(proc, line.decode().strip())
    finally:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), STOP_GRACE_S)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                await proc.wait()


# --- measurements -----------------------------------------------------------------------


@dataclass
class Result:
    rtt_p50_s: float = 0.0
    rtt_p99_s: float = 0.0
    throughput: dict[int, tuple[float, float]] = field(default_factory=dict)
    """payload bytes -> (round trips/s, rendezvous CPU fraction during the run)."""


async def ping_pong(ws: Any, frame: bytes, samples: int, warmup: int) -> list[float]:
    times: list[float] = []
    for i in range(warmup + samples):
        start = time.perf_counter()
        await ws.send_bytes(frame)
        msg = await asyncio.wait_for(ws.receive(), OP_TIMEOUT_S)
        elapsed = time.perf_counter() - start
        assert msg.type is WSMsgType.BINARY and len(msg.data) == len(frame)
        if i >= warmup:
            times.append(elapsed)
    return times


async def echo_throughput(ws: Any, frames: list[bytes], window: int, seconds: float) -> float:
    """Round trips per second with at most ``window`` frames in flight."""
    frame_size = len(frames[0])
    sent = 0
    received = 0
    room = asyncio.Event()
    done = asyncio.Event()
    finished_sending = False

    failure: list[BaseException] = []

    async def reader() -> None:
        nonlocal received
        try:
            while True:
                msg = await ws.receive()
                if msg.type is not WSMsgType.BINARY:
                    raise RuntimeError(f"echo stream ended: {msg.type} {msg.data!r}")
                if len(msg.data) != frame_size:
                    raise RuntimeError(f"echoed {len(msg.data)} bytes, sent {frame_size}")
                received += 1
                room.set()
                if finished_sending and received >= sent:
                    done.set()
                    return
        except BaseException as exc:
            failure.append(exc)
            room.set()
            done.set()
            raise

    task = asyncio.ensure_future(reader())
    start = time.perf_counter()
    stop_at = start + seconds
    try:
        while time.perf_counter() < stop_at:
            while sent - received >= window and not failure:
                room.clear()
                await asyncio.wait_for(room.wait(), OP_TIMEOUT_S)
            if failure:
                raise RuntimeError("echo reader failed") from failure[0]
            await ws.send_bytes(frames[sent % len(frames)])
            sent += 1
        finished_sending = True
        if received < sent:
            await asyncio.wait_for(done.wait(), OP_TIMEOUT_S)
        if failure:
            raise RuntimeError("echo reader failed") from failure[0]
        elapsed = time.perf_counter() - start
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
    return received / elapsed


def make_frames(payload_bytes: int, streams: int) -> list[bytes]:
    payload = b'{"method":"x","params":"' + b"a" * max(0, payload_bytes - 28) + b'"}'
    return [
        encode_frame(data_frame(f"00000000-0000-4000-8000-{n:012d}", 0, payload))
        for n in range(streams)
    ]


async def measure(
    ws: Any, args: argparse.Namespace, cpu_seconds: Callable[[], float] | None
) -> Result:
    result = Result()
    frame = make_frames(1 * KIB, 1)[0]
    times = await ping_pong(ws, frame, args.rtt_samples, args.rtt_samples // 10)
    result.rtt_p50_s = statistics.median(times)
    result.rtt_p99_s = statistics.quantiles(times, n=100)[98]
    for size, window in ((1 * KIB, 256), (64 * KIB, 32)):
        frames = make_frames(size, args.streams)
        await echo_throughput(ws, frames, window, min(0.3, args.seconds))  # warm-up
        cpu_before = cpu_seconds() if cpu_seconds else 0.0
        wall_before = time.perf_counter()
        rate = await echo_throughput(ws, frames, window, args.seconds)
        cpu = (
            (cpu_seconds() - cpu_before) / (time.perf_counter() - wall_before)
            if cpu_seconds
            else 0.0
        )
        result.throughput[size] = (rate, cpu)
    return result


async def bench_direct(args: argparse.Namespace, env: dict[str, str]) -> Result:
    argv = [sys.executable, __file__, "--echo-serve"]
    async with (
        child(argv, env, args.client_cpu) as echo,
        aiohttp.ClientSession() as http,
        http.ws_connect(echo.first_line, compress=0, max_msg_size=MAX_MESSAGE_BYTES) as ws,
    ):
        return await measure(ws, args, None)


async def bench_rendezvous(args: argparse.Namespace, env: dict[str, str]) -> Result:
    token = secrets.token_urlsafe(24)
    env = {**env, "EXEC_SERVER_RENDEZVOUS_TOKEN": token}
    argv = [sys.executable, "-m", "exec_server", "rendezvous", "--listen", "http://127.0.0.1:0"]
    headers = {"Authorization": f"Bearer {token}"}
    async with (
        child(argv, env, args.rendezvous_cpu) as rendezvous,
        aiohttp.ClientSession() as http,
    ):
        base = rendezvous.first_line
        async with http.post(
            f"{base}/cloud/environment/{ENVIRONMENT_ID}/register", headers=headers
        ) as resp:
            environment_url = (await resp.json())["url"]
        async with http.post(
            f"{base}/cloud/environment/{ENVIRONMENT_ID}/connect", headers=headers
        ) as resp:
            harness_url = (await resp.json())["url"]
        echo_argv = [sys.executable, __file__, "--echo-connect", environment_url]
        async with (
            child(echo_argv, env, args.client_cpu),
            http.ws_connect(harness_url, compress=0, max_msg_size=MAX_MESSAGE_BYTES) as ws,
        ):
            return await measure(ws, args, rendezvous.cpu_seconds)


# --- report -----------------------------------------------------------------------------


def _us(seconds: float) -> str:
    return f"{seconds * 1e6:.0f} us"


def report(direct: Result, via: Result, args: argparse.Namespace) -> str:
    rows: list[tuple[str, str, str, str]] = [
        (
            "1 KiB ping-pong RTT p50",
            _us(direct.rtt_p50_s),
            _us(via.rtt_p50_s),
            f"{via.rtt_p50_s / direct.rtt_p50_s:.2f}x",
        ),
        (
            "1 KiB ping-pong RTT p99",
            _us(direct.rtt_p99_s),
            _us(via.rtt_p99_s),
            f"{via.rtt_p99_s / direct.rtt_p99_s:.2f}x",
        ),
    ]
    for size, (rate, _) in direct.throughput.items():
        via_rate, cpu = via.throughput[size]
        label = f"{size // KIB} KiB echo, {args.streams} streams"
        rows.append(
            (
                f"{label}: round trips/s",
                f"{rate:,.0f}",
                f"{via_rate:,.0f}",
                f"{via_rate / rate:.2f}x",
            )
        )
        rows.append(
            (
                f"{label}: payload MB/s (each way)",
                f"{rate * size / 1e6:,.1f}",
                f"{via_rate * size / 1e6:,.1f}",
                f"{via_rate / rate:.2f}x",
            )
        )
        rows.append(
            (
                f"{label}: rendezvous frames/s, MB/s routed",
                "",
                f"{2 * via_rate:,.0f}, {2 * via_rate * size / 1e6:,.0f}",
                f"cpu {cpu:.0%}",
            )
        )
    header = ("benchmark", "direct", "rendezvous", "rdv/direct")
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(4)]
    lines = [
        "| " + " | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)) + " |",
        "|" + "|".join("-" * (w + 2) for w in widths) + "|",
    ]
    lines += [
        "| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |"
        for row in rows
    ]
    added = via.rtt_p50_s - direct.rtt_p50_s
    lines.append("")
    lines.append(
        f"One rendezvous hop adds about {_us(added / 2)} per direction "
        f"({_us(added)} per round trip, p50)."
    )
    return "\n".join(lines)


async def main_async(args: argparse.Namespace) -> int:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT / "src")}
    if args.client_cpu is not None:
        os.sched_setaffinity(0, {args.client_cpu})
    direct = await bench_direct(args, env)
    via = await bench_rendezvous(args, env)
    if args.json:
        print(
            json.dumps(
                {
                    name: {
                        "rtt_p50_s": r.rtt_p50_s,
                        "rtt_p99_s": r.rtt_p99_s,
                        "round_trips_per_s": {str(k): v[0] for k, v in r.throughput.items()},
                        "rendezvous_cpu": {str(k): v[1] for k, v in r.throughput.items()},
                    }
                    for name, r in (("direct", direct), ("rendezvous", via))
                },
                indent=2,
            )
        )
    else:
        print(report(direct, via, args))
    return 0


def main() -> int:
    # As the exec-server CLI does for every command; the client process here serves
    # both columns, so each side gets the same allocator.
    tune_malloc()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer samples, shorter runs")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--no-pin", action="store_true", help="do not pin processes to CPUs")
    parser.add_argument("--streams", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=None, help="per throughput run")
    parser.add_argument("--rtt-samples", type=int, default=None)
    parser.add_argument("--timeout", type=float, default=300.0, help="whole run, seconds")
    parser.add_argument("--echo-serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--echo-connect", metavar="URL", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.echo_serve:
        asyncio.run(run_echo_server())
        return 0
    if args.echo_connect:
        asyncio.run(run_echo_client(args.echo_connect))
        return 0
    args.seconds = args.seconds or (1.0 if args.quick else 4.0)
    args.rtt_samples = args.rtt_samples or (500 if args.quick else 3000)
    cpus = sorted(os.sched_getaffinity(0))
    pin = not args.no_pin and len(cpus) >= 2
    args.client_cpu = cpus[0] if pin else None
    args.rendezvous_cpu = cpus[1] if pin else None
    try:
        return asyncio.run(asyncio.wait_for(main_async(args), args.timeout))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
