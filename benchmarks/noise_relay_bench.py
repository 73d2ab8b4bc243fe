#!/usr/bin/env python3
"""Noise relay benchmark: the end-to-end encrypted relay side by side with the cleartext one.

One run starts, each as its own process: the project's rendezvous
(``relay_bench.py --serve-rendezvous``) and two environments registered with it,
``bench-clear`` (``serve --remote ... --remote-transport legacy``: the cleartext reliable
relay) and ``bench-noise`` (``serve --remote ...``: the default, our reliable relay over
Noise records). The client side is ``relay_bench``'s minimal JSON-RPC client over the
SDK's transports: ``connect_harness_relay`` on a signed ``role=harness`` URL for the
cleartext column, ``open_rendezvous_channel`` (``/connect`` with a fresh key, the hybrid
IK handshake, the environment's ``/validate``) for the Noise column. Samples alternate
between the columns, the order flipping every round.

Rows:

* ``noise_output_128mib``: one process writing 128 MiB, start to ``process/closed``
  (128 KiB chunks, the SDK's). Goal: Noise throughput >= 0.85x cleartext. CPU seconds
  per process (client, rendezvous, environment) for each column.
* ``noise_output_128mib_codex_chunks``: the same with Codex's 8 KiB chunks. Reported.
* ``noise_getmetadata_p50``: one ``fs/getMetadata`` round trip. Goal: encryption adds
  <= 0.1 ms.
* ``noise_handshake_p50``: message 1 out to message 2 in, as the harness sees it: from
  the moment it has the bundle and an open websocket (message 1 is computed inside the
  window) until its stream is open (message 2 read): both handshake halves (ML-KEM-768
  encapsulations and decapsulations, X25519, AES-GCM) plus the environment's
  ``/validate`` round trip to the registry. Goal: <= 5 ms. p10/p50/p90/p99; the whole
  connection (key generation, ``/connect``, websocket dial, handshake) next to the
  cleartext one (``/connect``, dial); CPU milliseconds per Noise connection (connect,
  handshake, close) of the client, the rendezvous and the environment; the 1-minute load
  average (other work on the machine) in ``--json``.
* ``noise_streams_1000``: 1,000 harnesses at once on the Noise environment, each
  connecting (``/connect``, dial, handshake), initializing and making one request; all
  their streams share the environment's one rendezvous socket. Total time, p50/p99
  latency and failures, with 1,000 cleartext harnesses for reference. Reported.

    python benchmarks/noise_relay_bench.py            # full run (a few minutes on 2 CPUs)
    python benchmarks/noise_relay_bench.py --quick    # smoke run
    python benchmarks/noise_relay_bench.py --json

With two or more CPUs the client is pinned to the first CPU and the environments to the
second; the rendezvous is left to the scheduler (``--no-pin`` turns pinning off).
Nothing passes or fails on numbers (exit status 1 only when a benchmark errored).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))
sys.path.insert(0, str(BENCH_DIR.parent / "src"))

import relay_bench as rb  # noqa: E402
from bench_support import START_TIMEOUT_S, Child, run_bounded  # noqa: E402

from exec_server.malloc_tuning import tune_malloc  # noqa: E402
from exec_server.relay.noise import NoiseIdentity  # noqa: E402
from exec_server.transport.harness_relay import connect_harness_relay  # noqa: E402
from exec_server.transport.noise_channel import (  # noqa: E402
    NoiseHarnessChannel,
    connect_with_ephemeral,
    open_rendezvous_channel,
)
from exec_server.transport.registry_client import (  # noqa: E402
    NoiseConnectBundle,
    RegistryClient,
)
from exec_server.transport.relay_connection import dial_relay_socket  # noqa: E402

CLEAR, NOISE = "bench-clear", "bench-noise"
TOKEN = rb.REGISTRATION_TOKEN
MIB = rb.MIB


def environment_child(env_id: str, base_url: str, transport: str, cpu: int | None) -> Child:
    argv = rb.exec_server_argv(
        "serve", "--remote", base_url, "--environment-id", env_id, "--remote-transport", transport
    )
    return Child(env_id, argv, cpu, env={rb.REGISTRATION_TOKEN_ENV: TOKEN}, wait_line=False)


async def wait_online(base_url: str, env_ids: set[str]) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    async with aiohttp.ClientSession() as http:
        while time.monotonic() < deadline:
            with contextlib.suppress(aiohttp.ClientError):
                async with http.get(
                    f"{base_url}/cloud/environments",
                    headers={"Authorization": f"Bearer {TOKEN}"},
                ) as resp:
                    rows = await resp.json()
                if env_ids <= {row["id"] for row in rows if row["online"]}:
                    return
            await asyncio.sleep(0.05)
    raise RuntimeError(f"environments {sorted(env_ids)} never came online")


async def open_clear(base_url: str) -> rb.Client:
    async with RegistryClient(base_url, TOKEN) as registry:
        harness = await registry.connect(CLEAR)
    return await rb.Client.open(await connect_harness_relay(harness.url))


async def open_noise(base_url: str) -> rb.Client:
    async with RegistryClient(base_url, TOKEN) as registry:
        channel = await open_rendezvous_channel(
            registry, NOISE, encryption="required", timeout_s=rb.OP_TIMEOUT_S
        )
    return await rb.Client.open(channel)


# ------------------------------------------------------------------------------------
# rows
# ------------------------------------------------------------------------------------


async def bench_output(
    key: str,
    title: str,
    clear: rb.Client,
    noise: rb.Client,
    count: int,
    chunk_bytes: int | None,
    procs: dict[str, dict[str, int | None]],
    goal: bool,
) -> rb.Row:
    cpu: dict[str, list[dict[str, float]]] = {"clear": [], "noise": []}

    def metered(side: str, client: rb.Client) -> Callable[[], Awaitable[float]]:
        async def run() -> float:
            before = rb.cpu_by_process(procs[side])
            elapsed = await rb.run_output(client, rb.OUTPUT_BYTES, chunk_bytes)
            after = rb.cpu_by_process(procs[side])
            cpu[side].append({n: after[n] - before[n] for n in procs[side]})
            return elapsed

        return run

    samples = await rb.alternate(
        {"clear": metered("clear", clear), "noise": metered("noise", noise)}, count, warmup=1
    )
    c, n = statistics.median(samples["clear"]), statistics.median(samples["noise"])
    c_cpu = {p: statistics.median(s[p] for s in cpu["clear"]) for p in procs["clear"]}
    n_cpu = {p: statistics.median(s[p] for s in cpu["noise"]) for p in procs["noise"]}
    ratio = c / n
    cpu_ratio = ", ".join(f"{p} {n_cpu[p] / c_cpu[p]:.2f}x" for p in n_cpu if c_cpu.get(p, 0) > 0)
    size = rb.OUTPUT_BYTES
    return rb.Row(
        key,
        title,
        "cleartext relay",
        f"{rb.fmt_s(c)} ({rb.mib_s(size, c)}); CPU-s {rb.describe_cpu(c_cpu)}",
        "Noise relay",
        f"{rb.fmt_s(n)} ({rb.mib_s(size, n)}); CPU-s {rb.describe_cpu(n_cpu)}",
        f"{ratio:.2f}x throughput; CPU Noise/cleartext: {cpu_ratio}",
        ">= 0.85x" if goal else "report",
        ratio >= 0.85 if goal else None,
        {
            "clear_s": c,
            "noise_s": n,
            "ratio": ratio,
            "bytes": size,
            "output_chunk_bytes": chunk_bytes or rb.CODEX_CHUNK_BYTES,
            "clear_cpu_s": c_cpu,
            "noise_cpu_s": n_cpu,
            "samples": samples,
        },
    )


async def bench_getmetadata(clear: rb.Client, noise: rb.Client, path: str, count: int) -> rb.Row:
    samples = await rb.alternate(
        {
            "clear": lambda: rb.run_getmetadata(clear, path),
            "noise": lambda: rb.run_getmetadata(noise, path),
        },
        count,
        warmup=100,
    )
    c, n = statistics.median(samples["clear"]), statistics.median(samples["noise"])
    added = n - c
    return rb.Row(
        "noise_getmetadata_p50",
        "fs/getMetadata round trip, p50",
        "cleartext relay",
        rb.fmt_s(c),
        "Noise relay",
        rb.fmt_s(n),
        f"{added * 1000:+.3f} ms",
        "<= +0.1 ms",
        added <= 0.0001,
        {
            "clear_p50_s": c,
            "noise_p50_s": n,
            "added_s": added,
            "clear_p99_s": rb.percentile(samples["clear"], 0.99),
            "noise_p99_s": rb.percentile(samples["noise"], 0.99),
            "samples": count,
        },
    )


async def handshake_once(base_url: str) -> tuple[float, float]:
    """``(message 1 to message 2, the whole connection)`` of one Noise connection, made
    as ``open_rendezvous_channel`` makes it (the ephemeral keys generated while
    ``/connect`` is in flight)."""
    t0 = time.perf_counter()
    identity = NoiseIdentity.generate()
    async with RegistryClient(base_url, TOKEN) as registry:
        bundle, ephemeral = await connect_with_ephemeral(registry, NOISE, identity)
    assert isinstance(bundle, NoiseConnectBundle)
    http = aiohttp.ClientSession()
    channel = NoiseHarnessChannel(
        bundle.url, http, config=None, reconnect_deadline_s=1.0, max_message_bytes=1 << 26
    )
    try:
        ws = await dial_relay_socket(http, bundle.url)
        t1 = time.perf_counter()
        async with asyncio.timeout(rb.OP_TIMEOUT_S):
            await channel.handshake(ws, bundle, identity, ephemeral=ephemeral)
        t2 = time.perf_counter()
    finally:
        await channel.close()
    return t2 - t1, t2 - t0


async def clear_connect_once(base_url: str) -> float:
    t0 = time.perf_counter()
    async with RegistryClient(base_url, TOKEN) as registry:
        harness = await registry.connect(CLEAR)
    async with aiohttp.ClientSession() as http:
        ws = await dial_relay_socket(http, harness.url)
        elapsed = time.perf_counter() - t0
        await ws.close()
    return elapsed


async def bench_handshake(base_url: str, count: int, procs: dict[str, int | None]) -> rb.Row:
    """Noise connections one after another (cleartext connects interleaved); CPU seconds
    per Noise connection (``/connect``, dial, handshake, close) of each process, summed
    over the Noise connections only."""
    for _ in range(10):  # warm-up: imports, connection pools
        await handshake_once(base_url)
    handshakes: list[float] = []
    noise_connects: list[float] = []
    clear_connects: list[float] = []
    cpu = dict.fromkeys(procs, 0.0)
    for i in range(count):
        if i % 2:
            clear_connects.append(await clear_connect_once(base_url))
        before = rb.cpu_by_process(procs)
        hs, whole = await handshake_once(base_url)
        after = rb.cpu_by_process(procs)
        for name in procs:
            cpu[name] += after[name] - before[name]
        handshakes.append(hs)
        noise_connects.append(whole)
        if not i % 2:
            clear_connects.append(await clear_connect_once(base_url))
    p10 = rb.percentile(handshakes, 0.1)  # the quieter moments of a shared machine
    p50, p90 = statistics.median(handshakes), rb.percentile(handshakes, 0.9)
    cpu_ms = {name: seconds / count * 1000 for name, seconds in cpu.items()}
    cpu_text = ", ".join(f"{name} {ms:.2f}" for name, ms in cpu_ms.items())
    return rb.Row(
        "noise_handshake_p50",
        "Noise handshake incl. ML-KEM and /validate (message 1 out to message 2 in), p50",
        "cleartext connect (/connect, dial)",
        rb.fmt_s(statistics.median(clear_connects)),
        "Noise connect",
        f"handshake p10 {rb.fmt_s(p10)}, p50 {rb.fmt_s(p50)}, p90 {rb.fmt_s(p90)}, "
        f"p99 {rb.fmt_s(rb.percentile(handshakes, 0.99))}; "
        f"whole connection p50 {rb.fmt_s(statistics.median(noise_connects))}; "
        f"CPU-ms per connection: {cpu_text}",
        f"handshake {p50 * 1000:.2f} ms",
        "<= 5 ms",
        p50 <= 0.005,
        {
            "handshake_p10_s": p10,
            "handshake_p50_s": p50,
            "handshake_p90_s": p90,
            "handshake_p99_s": rb.percentile(handshakes, 0.99),
            "noise_connect_p50_s": statistics.median(noise_connects),
            "noise_connect_p90_s": rb.percentile(noise_connects, 0.9),
            "clear_connect_p50_s": statistics.median(clear_connects),
            "cpu_ms_per_connection": cpu_ms,
            "samples": count,
            "loadavg_1min": os.getloadavg()[0],
        },
    )


async def bench_streams(
    base_url: str, count: int, path: str, env_pids: dict[str, int | None]
) -> rb.Row:
    before = rb.cpu_by_process(env_pids)
    clear = await rb.many_clients(count, lambda: open_clear(base_url), path)
    middle = rb.cpu_by_process(env_pids)
    noise = await rb.many_clients(count, lambda: open_noise(base_url), path)
    after = rb.cpu_by_process(env_pids)
    clear_cpu = {p: middle[p] - before[p] for p in env_pids}
    noise_cpu = {p: after[p] - middle[p] for p in env_pids}

    def numbers(r: rb.StreamsResult, cpu: dict[str, float]) -> dict[str, Any]:
        out: dict[str, Any] = {"total_s": r.total_s, "failures": r.failures, "cpu_s": cpu}
        if r.latencies:
            out |= {
                "p50_s": rb.percentile(r.latencies, 0.5),
                "p99_s": rb.percentile(r.latencies, 0.99),
                "request_p50_s": rb.percentile(r.request_latencies, 0.5),
            }
        return out

    return rb.Row(
        "noise_streams_1000",
        f"{count} harnesses at once (connect, init, 1 request), one environment socket",
        "cleartext",
        f"{clear.describe()}; CPU-s {rb.describe_cpu(clear_cpu)}",
        "Noise",
        f"{noise.describe()}; CPU-s {rb.describe_cpu(noise_cpu)}",
        f"{clear.total_s / noise.total_s:.2f}x total" if noise.latencies else "-",
        "report",
        None if noise.failures == 0 else False,
        {"clear": numbers(clear, clear_cpu), "noise": numbers(noise, noise_cpu)},
    )


# ------------------------------------------------------------------------------------
# runner
# ------------------------------------------------------------------------------------


async def main_async(args: argparse.Namespace) -> int:
    client_cpu, server_cpu = rb.pick_cpus(not args.no_pin)
    if client_cpu is not None:
        os.sched_setaffinity(0, {client_cpu})
    quick = args.quick
    output_samples = 1 if quick else 3
    meta_samples = 300 if quick else 2000
    handshakes = 50 if quick else 300
    streams = args.streams or (200 if quick else 1000)

    rendezvous = Child("rendezvous", [sys.executable, str(rb.BENCH_SCRIPT), "--serve-rendezvous"])
    children: list[Child] = [rendezvous]
    rows: list[rb.Row] = []
    errors: list[str] = []
    clients: list[rb.Client] = []
    tmp = Path(tempfile.mkdtemp(prefix="noise-bench-"))

    def progress(text: str) -> None:
        if not args.json:
            print(text, file=sys.stderr, flush=True)

    async def attempt(name: str, make: Callable[[], Awaitable[rb.Row]]) -> None:
        if args.only and name not in args.only:
            return
        progress(f"running {name} ...")
        try:
            rows.append(await make())
        except Exception as exc:
            errors.append(f"{name}: {type(exc).__name__}: {exc}")

    try:
        await rendezvous.start()
        base_url = rendezvous.info()["base_url"]
        clear_env = environment_child(CLEAR, base_url, "legacy", server_cpu)
        noise_env = environment_child(NOISE, base_url, "noise", server_cpu)
        children += [clear_env, noise_env]
        await clear_env.start()
        await noise_env.start()
        await wait_online(base_url, {CLEAR, NOISE})
        clear = await open_clear(base_url)
        noise = await open_noise(base_url)
        clients += [clear, noise]
        procs: dict[str, dict[str, int | None]] = {
            "clear": {"client": None, "rendezvous": rendezvous.pid, "environment": clear_env.pid},
            "noise": {"client": None, "rendezvous": rendezvous.pid, "environment": noise_env.pid},
        }
        await attempt(
            "noise_output_128mib",
            lambda: bench_output(
                "noise_output_128mib",
                f"128 MiB process output ({rb.SDK_CHUNK_BYTES // 1024} KiB chunks)",
                clear,
                noise,
                output_samples,
                rb.SDK_CHUNK_BYTES,
                procs,
                goal=True,
            ),
        )
        await attempt(
            "noise_output_128mib_codex_chunks",
            lambda: bench_output(
                "noise_output_128mib_codex_chunks",
                f"128 MiB process output ({rb.CODEX_CHUNK_BYTES // 1024} KiB chunks, Codex's)",
                clear,
                noise,
                output_samples,
                None,
                procs,
                goal=False,
            ),
        )
        await attempt(
            "noise_getmetadata_p50",
            lambda: bench_getmetadata(clear, noise, str(tmp), meta_samples),
        )
        await attempt(
            "noise_handshake_p50",
            lambda: bench_handshake(
                base_url,
                handshakes,
                {"client": None, "rendezvous": rendezvous.pid, "environment": noise_env.pid},
            ),
        )
        await attempt(
            "noise_streams_1000",
            lambda: bench_streams(
                base_url,
                streams,
                str(tmp),
                {
                    "client": None,
                    "rendezvous": rendezvous.pid,
                    CLEAR: clear_env.pid,
                    NOISE: noise_env.pid,
                },
            ),
        )
    finally:
        for client in clients:
            await client.close()
        for child in reversed(children):
            await child.stop()
        shutil.rmtree(tmp, ignore_errors=True)

    return rb.report(
        rows, errors, [], as_json=args.json, quick=quick, pinned=(client_cpu, server_cpu)
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer samples, 200 streams")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--streams", type=int, help="concurrent harnesses (default 1000)")
    parser.add_argument("--no-pin", action="store_true", help="do not pin client and servers")
    parser.add_argument(
        "--only",
        type=lambda text: set(text.split(",")),
        help="run only these rows (comma-separated keys, e.g. noise_output_128mib)",
    )
    parser.add_argument(
        "--timeout", type=float, default=1200.0, help="abort the whole run after this many seconds"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    tune_malloc()
    return run_bounded(lambda: main_async(args), args.timeout)


if __name__ == "__main__":
    raise SystemExit(main())
