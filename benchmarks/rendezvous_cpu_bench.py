#!/usr/bin/env python3
"""The rendezvous' CPU per routed byte, against the direct server's per served byte.

``relay_bench.py``'s ``rendezvous_output_128mib`` rows, with more samples and finer
clocks, for measuring one change to the rendezvous at a time: the same processes
(``exec-server serve --listen`` as the direct server; ``relay_bench.py --serve-rendezvous``,
the project's ``RendezvousServer`` on uvloop; ``exec-server serve --remote`` as its
environment; the client on the stdlib loop with the SDK's transports) and the same
pinning (client on the first CPU, the servers on the second, the rendezvous left to the
scheduler). Each sample is one process writing ``--mib`` MiB, read to
``process/closed``; direct and relay samples alternate.

Per process and sample it reads the CPU time from ``/proc/PID/task/*/schedstat``
(nanoseconds, all threads) and the user/system split from ``/proc/PID/stat`` (clock
ticks), and the wall time of each sample, and prints medians and ranges::

    python benchmarks/rendezvous_cpu_bench.py --samples 12
    python benchmarks/rendezvous_cpu_bench.py --chunks codex --samples 8
    python benchmarks/rendezvous_cpu_bench.py --hold 30   # relay only, for perf/strace
    python benchmarks/rendezvous_cpu_bench.py --compare-tree /tmp/before  # paired A/B

``--compare-tree DIR`` (and/or ``--compare-pythonpath P``) adds a second rendezvous
(``rendezvous_b``: the one of source tree ``DIR``, or this one with ``PYTHONPATH=P``)
with its own environment; samples rotate through the direct server and both
rendezvous, so a change is measured against the tree before it under the same load.

``--hold S`` prints the processes' ids and then keeps relay transfers going for ``S``
seconds (attach ``perf record -g -p PID`` or ``strace -c -f -p PID`` meanwhile).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))

import relay_bench as rb  # noqa: E402
from bench_support import Child, cpu_ns  # noqa: E402

from exec_server.malloc_tuning import tune_malloc  # noqa: E402

MIB = 1024 * 1024
_TICK = os.sysconf("SC_CLK_TCK")


def user_system(pid: int) -> tuple[float, float]:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) / _TICK, int(fields[12]) / _TICK


def snapshot(procs: dict[str, int]) -> dict[str, tuple[int, float, float]]:
    return {name: (cpu_ns(pid), *user_system(pid)) for name, pid in procs.items()}


def delta(
    before: dict[str, tuple[int, float, float]], after: dict[str, tuple[int, float, float]]
) -> dict[str, tuple[float, float, float]]:
    return {
        name: (
            (after[name][0] - before[name][0]) / 1e9,
            after[name][1] - before[name][1],
            after[name][2] - before[name][2],
        )
        for name in before
    }


def summary(values: list[float]) -> str:
    return f"{statistics.median(values):.3f} ({min(values):.3f}-{max(values):.3f})"


async def main_async(args: argparse.Namespace) -> int:
    client_cpu, server_cpu = rb.pick_cpus(True)
    if client_cpu is not None:
        os.sched_setaffinity(0, {client_cpu})
    size = args.mib * MIB
    chunk = rb.SDK_CHUNK_BYTES if args.chunks == "sdk" else None
    me = [sys.executable, str(BENCH_DIR / "relay_bench.py")]
    direct_server = Child(
        "direct", rb.exec_server_argv("serve", "--listen", "ws://127.0.0.1:0"), server_cpu
    )
    rendezvous = Child(
        "rendezvous",
        [*me, "--serve-rendezvous"],
        env={"PYTHONPATH": args.rendezvous_pythonpath} if args.rendezvous_pythonpath else None,
    )
    children = [direct_server, rendezvous]
    clients: list[rb.Client] = []
    other: tuple[Child, rb.Client] | None = None
    try:
        await direct_server.start()
        await rendezvous.start()
        info = rendezvous.info()
        environment = rb.remote_environment("rdv-env", info["base_url"], server_cpu)
        children.append(environment)
        await environment.start()
        relay = await rb.open_relay_when_online(info["harness_url"])
        clients.append(relay)
        if args.compare_tree or args.compare_pythonpath:
            other = await start_other(args, server_cpu, children, clients)
        direct = await rb.open_direct(direct_server.line)
        clients.append(direct)
        print(
            json.dumps(
                {
                    "direct_server": direct_server.pid,
                    "rendezvous": rendezvous.pid,
                    "environment": environment.pid,
                    "base_url": info["base_url"],
                }
            ),
            file=sys.stderr,
            flush=True,
        )
        await rb.run_output(direct, size, chunk)
        await rb.run_output(relay, size, chunk)
        if args.hold:
            await asyncio.sleep(args.wait)
            deadline = time.monotonic() + args.hold
            runs = 0
            client = direct if args.hold_side == "direct" else relay
            pid = direct_server.pid if args.hold_side == "direct" else rendezvous.pid
            before = snapshot({"held": pid})
            while time.monotonic() < deadline and (args.runs <= 0 or runs < args.runs):
                await rb.run_output(client, size, chunk)
                runs += 1
            used = delta(before, snapshot({"held": pid}))["held"]
            print(f"{runs} {args.hold_side} runs; CPU-s per run {used[0] / runs:.4f}")
            return 0
        sides: dict[str, tuple[int, rb.Client]] = {
            "server": (direct_server.pid, direct),
            "rendezvous": (rendezvous.pid, relay),
        }
        if other is not None:
            await rb.run_output(other[1], size, chunk)
            sides["rendezvous_b"] = (other[0].pid, other[1])
        samples: dict[str, list[tuple[float, float, float]]] = {name: [] for name in sides}
        walls: dict[str, list[float]] = {name: [] for name in sides}
        names = list(sides)
        for i in range(args.samples):
            shift = i % len(names)  # each side first, middle and last in turn
            for name in names[shift:] + names[:shift]:
                pid, client = sides[name]
                procs = {name: pid}
                before = snapshot(procs)
                started = time.perf_counter()
                await rb.run_output(client, size, chunk)
                walls[name].append(time.perf_counter() - started)
                samples[name].append(delta(before, snapshot(procs))[name])
        result = {}
        for name, values in samples.items():
            cpu = [v[0] for v in values]
            result[name] = {
                "cpu_s": cpu,
                "user_s": [v[1] for v in values],
                "system_s": [v[2] for v in values],
                "wall_s": walls[name],
            }
            print(
                f"{name:>10}: CPU-s {summary(cpu)}  user {summary([v[1] for v in values])}"
                f"  system {summary([v[2] for v in values])}  wall {summary(walls[name])}"
                f"  (n={len(cpu)})"
            )
        ratio = statistics.median(result["rendezvous"]["cpu_s"]) / statistics.median(
            result["server"]["cpu_s"]
        )
        print(f"rendezvous / direct server: {ratio:.2f}x")
        if other is not None:
            ratio_b = statistics.median(result["rendezvous_b"]["cpu_s"]) / statistics.median(
                result["server"]["cpu_s"]
            )
            print(f"rendezvous_b / direct server: {ratio_b:.2f}x")
        if args.json:
            await asyncio.to_thread(Path(args.json).write_text, json.dumps(result))
        return 0
    finally:
        for client in clients:
            await client.close()
        for child in reversed(children):
            await child.stop()


async def start_other(
    args: argparse.Namespace,
    server_cpu: int | None,
    children: list[Child],
    clients: list[rb.Client],
) -> tuple[Child, rb.Client]:
    """The second rendezvous (``rendezvous_b``) and its own environment: the rendezvous
    of another source tree and/or with another PYTHONPATH; the environment is this
    tree's, as for the first."""
    tree = Path(args.compare_tree) if args.compare_tree else BENCH_DIR.parent
    env = {"PYTHONPATH": args.compare_pythonpath} if args.compare_pythonpath else None
    rendezvous = Child(
        "rendezvous-b",
        [sys.executable, str(tree / "benchmarks" / "relay_bench.py"), "--serve-rendezvous"],
        env=env,
    )
    children.append(rendezvous)
    await rendezvous.start()
    info = rendezvous.info()
    environment = rb.remote_environment("rdv-env-b", info["base_url"], server_cpu)
    children.append(environment)
    await environment.start()
    client = await rb.open_relay_when_online(info["harness_url"])
    clients.append(client)
    return rendezvous, client


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=10, help="samples per side")
    parser.add_argument("--mib", type=int, default=128, help="output per sample")
    parser.add_argument("--chunks", choices=("sdk", "codex"), default="sdk")
    parser.add_argument("--hold", type=float, default=0.0, help="relay-only load for S seconds")
    parser.add_argument(
        "--hold-side",
        choices=("relay", "direct"),
        default="relay",
        help="with --hold: which path to load",
    )
    parser.add_argument("--runs", type=int, default=0, help="with --hold: stop after N runs")
    parser.add_argument("--wait", type=float, default=0.0, help="with --hold: wait S first")
    parser.add_argument("--json", help="write the samples to this file")
    parser.add_argument(
        "--compare-tree",
        help="also measure the rendezvous of this source tree (rendezvous_b), samples rotating",
    )
    parser.add_argument(
        "--compare-pythonpath",
        help="PYTHONPATH for rendezvous_b only (e.g. a build of a dependency)",
    )
    parser.add_argument(
        "--rendezvous-pythonpath",
        help="PYTHONPATH for the rendezvous process only (to try a build of a dependency)",
    )
    args = parser.parse_args()
    tune_malloc()
    # The client stays on the stdlib loop, as in relay_bench.py.
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
