#!/usr/bin/env python3
"""Side-by-side benchmark: our exec-server vs the real Codex 0.133.0 exec-server.

Both servers run during one invocation and are driven by the same tight client (raw
aiohttp websocket, no compression, TCP_NODELAY, msgspec JSON). Samples alternate
between the servers (and the order flips every round) so that machine noise hits both
alike. The output is a table of times and the ratio ours/codex; nothing passes or fails.

    python benchmarks/run.py                    # full run
    python benchmarks/run.py --quick            # fewer samples, for a smoke test
    python benchmarks/run.py --json             # machine-readable output
    python benchmarks/run.py --codex PATH       # codex binary (else $CODEX_0133_BIN or
                                                # .interop/codex-0.133.0, see
                                                # scripts/install_codex.sh)
    python benchmarks/run.py --only ours        # run one side only

See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import shlex
import shutil
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from bench_support import Child, Ids, ProcState, RpcState, run_bounded

from exec_server.malloc_tuning import tune_malloc

REPO_ROOT = Path(__file__).resolve().parents[1]
CODEX_VERSION = "0.133.0"
CODEX_BIN_ENV = "CODEX_0133_BIN"

#: Reference numbers for 0.133 on the project machine (from the issue).
REFERENCE_CODEX = {
    "spawn_true_p50": 0.044,
    "stdout_128mib": 0.56,
    "fs_8mib_roundtrip": 0.15,
    "concurrent_50": 0.17,
    "getmetadata_p50": 0.00016,
}

#: Upper bound for any single measured operation.
OP_TIMEOUT_S = 120.0
CLIENT_MAX_MSG_BYTES = 512 * 1024 * 1024

STDOUT_BYTES = 128 * 1024 * 1024
FS_BYTES = 8 * 1024 * 1024
CONCURRENT_PROCESSES = 50


# ------------------------------------------------------------------------------------
# servers
# ------------------------------------------------------------------------------------


def default_codex_binary() -> Path | None:
    env = os.environ.get(CODEX_BIN_ENV)
    if env:
        return Path(env)
    arch = {
        "x86_64": ("codex-linux-x64", "x86_64-unknown-linux-musl"),
        "aarch64": ("codex-linux-arm64", "aarch64-unknown-linux-musl"),
    }.get(os.uname().machine)
    if sys.platform != "linux" or arch is None:
        return None
    pkg, triple = arch
    path = (
        REPO_ROOT
        / ".interop"
        / f"codex-{CODEX_VERSION}"
        / "node_modules"
        / "@openai"
        / pkg
        / "vendor"
        / triple
        / "bin"
        / "codex"
    )
    return path if path.is_file() else None


@dataclass
class Server(Child):
    """An exec-server (ours or Codex's) whose first stdout line is its ws:// URL."""

    url: str = ""

    async def start(self) -> None:
        await super().start()
        self.url = self.line
        if not self.url.startswith("ws://"):
            raise RuntimeError(f"{self.name} printed {self.url!r}; stderr:\n{self.stderr_tail()}")


# ------------------------------------------------------------------------------------
# client
# ------------------------------------------------------------------------------------


class Client(RpcState):
    """Minimal JSON-RPC client over a raw websocket: one reader task."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        super().__init__()
        self.ws = ws
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def connect(cls, http: aiohttp.ClientSession, url: str) -> Client:
        ws = await http.ws_connect(
            url, compress=0, max_msg_size=CLIENT_MAX_MSG_BYTES, autoping=True
        )
        conn = ws._response.connection
        sock = conn.transport.get_extra_info("socket") if conn and conn.transport else None
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        client = cls(ws)
        await client.call("initialize", {"clientName": "bench", "resumeSessionId": None})
        await ws.send_bytes(b'{"method":"initialized","params":{}}')
        return client

    async def _read(self) -> None:
        try:
            async for msg in self.ws:
                if msg.type not in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
                    break
                self._dispatch(msg.data)
        finally:
            self._fail_pending()

    async def send(self, method: str, params: Any) -> asyncio.Future[Any]:
        data, fut = self._request(method, params)
        await self.ws.send_bytes(data)
        return fut

    async def call(self, method: str, params: Any) -> Any:
        return await asyncio.wait_for(await self.send(method, params), OP_TIMEOUT_S)

    def track(self, process_id: str) -> ProcState:
        state = self.procs[process_id] = ProcState()
        return state

    async def close(self) -> None:
        await self.ws.close()
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._reader


def start_params(pid: str, argv: list[str]) -> dict[str, Any]:
    return {"processId": pid, "argv": argv, "cwd": "/", "env": {}, "tty": False}


# ------------------------------------------------------------------------------------
# benchmarks (each returns seconds for one sample)
# ------------------------------------------------------------------------------------


async def bench_spawn_true(c: Client, _tmp: Path) -> float:
    pid = Ids.next("t")
    state = c.track(pid)
    t0 = time.perf_counter()
    await c.call("process/start", start_params(pid, ["/bin/true"]))
    await asyncio.wait_for(state.closed.wait(), OP_TIMEOUT_S)
    return time.perf_counter() - t0


async def bench_stdout(c: Client, _tmp: Path, size: int = STDOUT_BYTES) -> float:
    pid = Ids.next("o")
    state = c.track(pid)
    t0 = time.perf_counter()
    await c.call(
        "process/start", start_params(pid, ["/usr/bin/head", "-c", str(size), "/dev/zero"])
    )
    await asyncio.wait_for(state.closed.wait(), OP_TIMEOUT_S)
    elapsed = time.perf_counter() - t0
    if state.out_bytes != size:
        raise RuntimeError(f"received {state.out_bytes} of {size} stdout bytes")
    return elapsed


_FS_PAYLOAD = base64.b64encode(os.urandom(FS_BYTES)).decode()


async def bench_fs_roundtrip(c: Client, tmp: Path) -> float:
    path = str(tmp / Ids.next("f"))
    t0 = time.perf_counter()
    await c.call("fs/writeFile", {"path": path, "dataBase64": _FS_PAYLOAD})
    result = await c.call("fs/readFile", {"path": path})
    elapsed = time.perf_counter() - t0
    if result["dataBase64"] != _FS_PAYLOAD:
        raise RuntimeError("fs round trip returned different bytes")
    os.unlink(path)
    return elapsed


async def bench_concurrent(c: Client, _tmp: Path) -> float:
    pids = [Ids.next("c") for _ in range(CONCURRENT_PROCESSES)]
    states = [c.track(pid) for pid in pids]
    t0 = time.perf_counter()
    futures = [await c.send("process/start", start_params(pid, ["/bin/echo", pid])) for pid in pids]
    await asyncio.wait_for(asyncio.gather(*futures), OP_TIMEOUT_S)
    await asyncio.wait_for(asyncio.gather(*(s.closed.wait() for s in states)), OP_TIMEOUT_S)
    return time.perf_counter() - t0


async def bench_getmetadata(c: Client, tmp: Path) -> float:
    t0 = time.perf_counter()
    await c.call("fs/getMetadata", {"path": str(tmp)})
    return time.perf_counter() - t0


@dataclass(frozen=True)
class Bench:
    key: str
    title: str
    run: Callable[[Client, Path], Awaitable[float]]
    samples: int
    quick_samples: int
    warmup: int
    #: "p50" (latency) or "median" (of whole-operation times)
    stat: str
    unit: str


BENCHES = [
    Bench(
        "spawn_true_p50", "spawn `true` -> closed, p50", bench_spawn_true, 50, 15, 5, "p50", "ms"
    ),
    Bench(
        "stdout_128mib", "128 MiB stdout via notifications", bench_stdout, 5, 1, 1, "median", "s"
    ),
    Bench(
        "fs_8mib_roundtrip",
        "8 MiB fs/writeFile + fs/readFile",
        bench_fs_roundtrip,
        10,
        3,
        1,
        "median",
        "s",
    ),
    Bench(
        "concurrent_50", "50 concurrent short processes", bench_concurrent, 10, 3, 1, "median", "s"
    ),
    Bench(
        "getmetadata_p50",
        "fs/getMetadata round trip, p50",
        bench_getmetadata,
        2000,
        300,
        100,
        "p50",
        "ms",
    ),
]


# ------------------------------------------------------------------------------------
# runner
# ------------------------------------------------------------------------------------


@dataclass
class Result:
    key: str
    title: str
    unit: str
    seconds: dict[str, float | None] = field(default_factory=dict)
    samples: dict[str, int] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)


async def run_bench(
    bench: Bench, clients: dict[str, Client], tmp: dict[str, Path], quick: bool
) -> Result:
    names = list(clients)
    result = Result(bench.key, bench.title, bench.unit)
    samples: dict[str, list[float]] = {n: [] for n in names}
    for name in names:
        try:
            for _ in range(bench.warmup):
                await bench.run(clients[name], tmp[name])
        except Exception as exc:  # reported in the table
            result.errors[name] = f"{type(exc).__name__}: {exc}"
    count = bench.quick_samples if quick else bench.samples
    # Batches keep per-sample overhead out of the 2000-sample latency loops while still
    # interleaving the servers finely.
    batch = max(1, count // 20)
    done = 0
    round_no = 0
    while done < count:
        n = min(batch, count - done)
        order = names if round_no % 2 == 0 else names[::-1]
        for name in order:
            if name in result.errors:
                continue
            try:
                for _ in range(n):
                    samples[name].append(await bench.run(clients[name], tmp[name]))
            except Exception as exc:  # reported in the table
                result.errors[name] = f"{type(exc).__name__}: {exc}"
        done += n
        round_no += 1
    for name in names:
        values = samples[name]
        result.samples[name] = len(values)
        result.seconds[name] = (
            statistics.median(values) if values and name not in result.errors else None
        )
    return result


def fmt(seconds: float | None, unit: str) -> str:
    if seconds is None:
        return "-"
    if unit == "ms":
        return f"{seconds * 1000:.3f} ms" if seconds < 0.01 else f"{seconds * 1000:.1f} ms"
    return f"{seconds:.3f} s"


def ratio(result: Result) -> float | None:
    ours, codex = result.seconds.get("ours"), result.seconds.get("codex")
    return ours / codex if ours and codex else None


def render_table(results: list[Result], names: list[str]) -> str:
    header = ["benchmark", *names]
    if names == ["ours", "codex"]:
        header.append("ours/codex")
    header.append("0.133 ref")
    rows = [header]
    for r in results:
        row = [r.title, *(fmt(r.seconds.get(n), r.unit) for n in names)]
        if names == ["ours", "codex"]:
            value = ratio(r)
            row.append(f"{value:.2f}x" if value is not None else "-")
        row.append(fmt(REFERENCE_CODEX.get(r.key), r.unit))
        rows.append(row)
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = []
    for i, row in enumerate(rows):
        lines.append(
            "| " + " | ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) + " |"
        )
        if i == 0:
            lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in results:
        for name, err in r.errors.items():
            lines.append(f"  ! {r.key} on {name}: {err}")
    return "\n".join(lines)


def pick_cpus(pin: bool) -> tuple[int | None, int | None]:
    """(client cpu, server cpu): separate cores when at least two are available."""
    if not pin or not hasattr(os, "sched_getaffinity"):
        return None, None
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return None, None
    return cpus[0], cpus[1]


async def main_async(args: argparse.Namespace) -> int:
    client_cpu, server_cpu = pick_cpus(not args.no_pin)
    if client_cpu is not None:
        os.sched_setaffinity(0, {client_cpu})
    servers: list[Server] = []
    if args.only in (None, "ours"):
        servers.append(Server("ours", shlex.split(args.ours_cmd), server_cpu))
    if args.only in (None, "codex"):
        codex = Path(args.codex) if args.codex else default_codex_binary()
        if codex is None or not codex.is_file():
            print(
                "codex 0.133.0 binary not found: run scripts/install_codex.sh, set "
                f"{CODEX_BIN_ENV} or pass --codex (running ours only)",
                file=sys.stderr,
            )
        else:
            servers.append(
                Server(
                    "codex", [str(codex), "exec-server", "--listen", "ws://127.0.0.1:0"], server_cpu
                )
            )
    if not servers:
        return 2
    selected = [b for b in BENCHES if not args.bench or b.key in args.bench]
    results: list[Result] = []
    tmp_root = Path(tempfile.mkdtemp(prefix="exec-bench-"))
    clients: dict[str, Client] = {}
    try:
        for server in servers:
            await server.start()
        tmp = {s.name: tmp_root / s.name for s in servers}
        for path in tmp.values():
            path.mkdir()
        async with aiohttp.ClientSession() as http:
            for server in servers:
                clients[server.name] = await Client.connect(http, server.url)
            for bench in selected:
                if not args.json:
                    print(f"running {bench.key} ...", file=sys.stderr, flush=True)
                results.append(await run_bench(bench, clients, tmp, args.quick))
            for client in clients.values():
                await client.close()
    finally:
        for server in servers:
            await server.stop()
        shutil.rmtree(tmp_root, ignore_errors=True)
    names = [s.name for s in servers]
    if args.json:
        print(
            json.dumps(
                {
                    "servers": {s.name: s.argv for s in servers},
                    "quick": args.quick,
                    "pinned": {"client_cpu": client_cpu, "server_cpu": server_cpu},
                    "reference_codex_s": REFERENCE_CODEX,
                    "results": [
                        {
                            "key": r.key,
                            "title": r.title,
                            "seconds": r.seconds,
                            "samples": r.samples,
                            "ratio_ours_codex": ratio(r),
                            "errors": r.errors,
                        }
                        for r in results
                    ],
                },
                indent=2,
            )
        )
    else:
        print(render_table(results, names))
    return 1 if any(r.errors for r in results) else 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--codex",
        help=f"codex {CODEX_VERSION} binary "
        f"(default: ${CODEX_BIN_ENV} or .interop/codex-{CODEX_VERSION})",
    )
    parser.add_argument(
        "--ours-cmd",
        default=shlex.join(
            [sys.executable, "-m", "exec_server", "serve", "--listen", "ws://127.0.0.1:0"]
        ),
        help="command that starts our server and prints its ws:// URL",
    )
    parser.add_argument("--quick", action="store_true", help="fewer samples")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--only", choices=["ours", "codex"], help="benchmark one server only")
    parser.add_argument(
        "--bench",
        action="append",
        choices=[b.key for b in BENCHES],
        help="run only this benchmark (repeatable)",
    )
    parser.add_argument(
        "--no-pin",
        action="store_true",
        help="do not pin the client and the servers to separate CPUs",
    )
    parser.add_argument(
        "--timeout", type=float, default=900.0, help="abort the whole run after this many seconds"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # As the exec-server CLI does for every command; the client process here serves
    # both columns, so each side gets the same allocator.
    tune_malloc()
    return run_bounded(lambda: main_async(args), args.timeout)


if __name__ == "__main__":
    raise SystemExit(main())
