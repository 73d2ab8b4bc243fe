#!/usr/bin/env python3
"""What users wait for on the harness side: the SDK's receive path and CLI start-up.

One run starts ``exec-server serve --listen ws://127.0.0.1:0`` as its own process and
measures, side by side:

* ``sdk_receive_128mib``: the SDK (``ExecServerClient``, this process) reads 128 MiB of
  output from ``head -c ... /dev/zero`` through ``start_process`` (every event consumed,
  the byte count checked). Reported: the CPU seconds of the client (this process) and of
  the server that produced the output, measured over the same transfer, and their ratio.
  Goal: the client costs no more CPU per byte than the server (ratio <= 1.0x). The
  server's ``head`` child is not counted on either side.
* ``cli_run_true``: ``exec-server run --url URL -- true`` against the same server, as a
  person types it: CPU seconds (user + system) of the whole CLI process from exec to exit,
  for the console script this interpreter installed. With bytecode caches warm (what
  every run after the first sees; the caches go to a temporary ``PYTHONPYCACHEPREFIX``,
  so the checkout is not touched) and, for reference, with bytecode writing disabled
  and no cache to read (every module compiled at each start, as under
  ``PYTHONDONTWRITEBYTECODE=1`` without an installed cache). Goal: <= 0.15 CPU-s warm.
  Two floors are measured alongside: ``python -c pass`` and ``python -c "import asyncio,
  click"`` (what any asyncio + click command pays).

    python benchmarks/sdk_bench.py            # full run
    python benchmarks/sdk_bench.py --quick    # fewer samples
    python benchmarks/sdk_bench.py --json

With two or more CPUs the client is pinned to the first and the server (and the
processes it spawns) to the second, as in ``run.py``. The machine is shared and noisy:
compare the columns of one run, not runs. Nothing passes or fails on numbers (exit
status 1 only when a benchmark errored, e.g. lost output).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from bench_support import Child, run_bounded

from exec_server.client import ExecServerClient, OutputEvent

OUTPUT_BYTES = 128 * 1024 * 1024
OP_TIMEOUT_S = 120.0


def cpu_of(pid: int) -> float:
    """User + system CPU seconds of a live process (its reaped children excluded)."""
    tick = os.sysconf("SC_CLK_TCK")
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / tick


def self_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def receive_once(client: ExecServerClient, server_pid: int) -> tuple[float, float]:
    server_before, client_before = cpu_of(server_pid), self_cpu()
    proc = await client.start_process(["head", "-c", str(OUTPUT_BYTES), "/dev/zero"], cwd="/")
    received = 0
    async for event in proc:
        if isinstance(event, OutputEvent):
            received += len(event.data)
    client_cpu, server_cpu = self_cpu() - client_before, cpu_of(server_pid) - server_before
    if received != OUTPUT_BYTES:
        raise RuntimeError(f"lost output: {received} of {OUTPUT_BYTES} bytes")
    return client_cpu, server_cpu


async def bench_receive(url: str, server_pid: int, samples: int) -> dict[str, Any]:
    clients: list[float] = []
    servers: list[float] = []
    async with await ExecServerClient.connect(url) as client:
        await asyncio.wait_for(receive_once(client, server_pid), OP_TIMEOUT_S)  # warm-up
        for _ in range(samples):
            c, s = await asyncio.wait_for(receive_once(client, server_pid), OP_TIMEOUT_S)
            clients.append(c)
            servers.append(s)
    c, s = statistics.median(clients), statistics.median(servers)
    return {
        "client_cpu_s": c,
        "server_cpu_s": s,
        "ratio": c / s if s else float("inf"),
        "client_ns_per_byte": c / OUTPUT_BYTES * 1e9,
        "server_ns_per_byte": s / OUTPUT_BYTES * 1e9,
        "samples": {"client": clients, "server": servers},
    }


def child_cpu(argv: list[str], env: dict[str, str], cpu: int | None) -> float:
    """CPU seconds of one run of ``argv`` (fails on a non-zero exit)."""
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(
            argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err
        )
        if cpu is not None:
            with contextlib.suppress(OSError):
                os.sched_setaffinity(proc.pid, {cpu})
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = code = os.waitstatus_to_exitcode(status)
        if code != 0:
            err.seek(0)
            text = err.read().decode(errors="replace")
            raise RuntimeError(f"{argv} exited {code}: {text}")
    return usage.ru_utime + usage.ru_stime


def cli_env(cache_dir: str | None) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env.pop("PYTHONPYCACHEPREFIX", None)
    if cache_dir is None:
        env["PYTHONDONTWRITEBYTECODE"] = "1"
    else:
        env["PYTHONPYCACHEPREFIX"] = cache_dir
    return env


def bench_cli(url: str, samples: int, cpu: int | None) -> dict[str, Any]:
    script = Path(sys.executable).parent / "exec-server"
    cli = [str(script)] if script.exists() else [sys.executable, "-m", "exec_server"]
    cases = {
        "python_pass": [sys.executable, "-c", "pass"],
        "import_asyncio_click": [sys.executable, "-c", "import asyncio, click"],
        "cli_run_true": [*cli, "run", "--url", url, "--", "true"],
    }
    result: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="sdk-bench-pyc-") as cache_dir:
        warm = cli_env(cache_dir)
        for argv in cases.values():
            child_cpu(argv, warm, cpu)  # writes the bytecode caches
        for name, argv in cases.items():
            runs = [child_cpu(argv, warm, cpu) for _ in range(samples)]
            result[name] = {"median_s": statistics.median(runs), "min_s": min(runs), "runs": runs}
    # Cold: nothing written, and only caches that already sit next to the sources are read.
    cold = cli_env(None)
    runs = [child_cpu(cases["cli_run_true"], cold, cpu) for _ in range(max(3, samples // 3))]
    result["cli_run_true_no_bytecode_cache"] = {
        "median_s": statistics.median(runs),
        "min_s": min(runs),
        "runs": runs,
    }
    return result


def pick_cpus(pin: bool) -> tuple[int | None, int | None]:
    if not pin or not hasattr(os, "sched_getaffinity"):
        return None, None
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return None, None
    return cpus[0], cpus[1]


def table(receive: dict[str, Any], cli: dict[str, Any]) -> str:
    rows = [
        ("benchmark", "measured", "goal"),
        (
            "SDK reads 128 MiB via start_process",
            f"client {receive['client_cpu_s']:.3f} CPU-s "
            f"({receive['client_ns_per_byte']:.2f} ns/B), server "
            f"{receive['server_cpu_s']:.3f} CPU-s ({receive['server_ns_per_byte']:.2f} ns/B): "
            f"{receive['ratio']:.2f}x",
            "<= 1.0x",
        ),
        (
            "`exec-server run -- true`, warm caches",
            f"{cli['cli_run_true']['median_s']:.3f} CPU-s (min {cli['cli_run_true']['min_s']:.3f})",
            "<= 0.15 CPU-s",
        ),
        (
            "same, no bytecode cache",
            f"{cli['cli_run_true_no_bytecode_cache']['median_s']:.3f} CPU-s",
            "report",
        ),
        (
            "floor: python -c pass / import asyncio, click",
            f"{cli['python_pass']['median_s']:.3f} / "
            f"{cli['import_asyncio_click']['median_s']:.3f} CPU-s",
            "report",
        ),
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = ["| " + " | ".join(c.ljust(widths[i]) for i, c in enumerate(r)) + " |" for r in rows]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


async def main(args: argparse.Namespace) -> int:
    client_cpu, server_cpu = pick_cpus(not args.no_pin)
    if client_cpu is not None:
        os.sched_setaffinity(0, {client_cpu})
    server = Child(
        "server",
        [sys.executable, "-m", "exec_server", "serve", "--listen", "ws://127.0.0.1:0"],
        server_cpu,
    )
    samples = 3 if args.quick else 7
    try:
        await server.start()
        url = server.line
        started = time.monotonic()
        receive = await bench_receive(url, server.pid, samples)
        cli = await asyncio.to_thread(bench_cli, url, 5 if args.quick else 15, client_cpu)
        elapsed = time.monotonic() - started
    except Exception as exc:
        print(f"benchmark failed: {exc}\n{server.stderr_tail()}", file=sys.stderr)
        return 1
    finally:
        await server.stop()
    if args.json:
        print(json.dumps({"receive": receive, "cli": cli, "elapsed_s": elapsed}, indent=2))
    else:
        print(table(receive, cli))
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer samples")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument("--no-pin", action="store_true", help="do not pin processes to CPUs")
    parser.add_argument("--timeout", type=float, default=900.0, help="whole-run limit (s)")
    arguments = parser.parse_args()
    sys.exit(run_bounded(lambda: main(arguments), arguments.timeout))
