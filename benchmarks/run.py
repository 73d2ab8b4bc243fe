#!/usr/bin/env python3
"""Side-by-side benchmark: our exec-server vs the real Codex 0.133.0 and 0.171.0 servers.

All servers run during one invocation and are driven by the same tight client (raw
aiohttp websocket, no compression, TCP_NODELAY, msgspec JSON). Each Codex release is
spoken to in its own wire form (0.133: native paths; 0.171: ``file://`` URIs), and our
server is measured in both, over two connections to one server process: ``ours``
against ``codex`` (0.133), ``ours-0.171`` against ``codex-0.171``. Samples alternate
between the columns (and the order flips every round) so that machine noise hits all
alike. The output is a table of times and the ratios; nothing passes or fails.

    python benchmarks/run.py                    # full run
    python benchmarks/run.py --quick            # fewer samples, for a smoke test
    python benchmarks/run.py --json             # machine-readable output
    python benchmarks/run.py --codex PATH       # codex binary (else $CODEX_0133_BIN or
                                                # .interop/codex-0.133.0, see
                                                # scripts/install_codex.sh)
    python benchmarks/run.py --only ours        # run one side only
    python benchmarks/run.py --codex171 PATH    # codex 0.171 binary (else $CODEX_0171_BIN or
                                                # .interop/codex-0.171.0)

See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import random
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
CODEX_0171_VERSION = "0.171.0"
CODEX_0171_BIN_ENV = "CODEX_0171_BIN"

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
#: fs/open + fs/readBlock row: file size and block size (0.171's largest block).
BLOCK_FILE_BYTES = 64 * 1024 * 1024
BLOCK_BYTES = 1024 * 1024


# ------------------------------------------------------------------------------------
# servers
# ------------------------------------------------------------------------------------


def default_codex_binary(version: str = CODEX_VERSION, env_var: str = CODEX_BIN_ENV) -> Path | None:
    env = os.environ.get(env_var)
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
        / f"codex-{version}"
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

    def __init__(self, ws: aiohttp.ClientWebSocketResponse, uris: bool) -> None:
        super().__init__()
        self.ws = ws
        #: Speak Codex 0.171's wire form (``file://`` URIs) instead of 0.133's paths.
        self.uris = uris
        self._reader = asyncio.create_task(self._read())

    def path(self, path: str | Path) -> str:
        return Path(path).as_uri() if self.uris else str(path)

    @classmethod
    async def connect(cls, http: aiohttp.ClientSession, url: str, *, uris: bool = False) -> Client:
        ws = await http.ws_connect(
            url, compress=0, max_msg_size=CLIENT_MAX_MSG_BYTES, autoping=True
        )
        conn = ws._response.connection
        sock = conn.transport.get_extra_info("socket") if conn and conn.transport else None
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        client = cls(ws, uris)
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


def start_params(c: Client, pid: str, argv: list[str]) -> dict[str, Any]:
    return {"processId": pid, "argv": argv, "cwd": c.path("/"), "env": {}, "tty": False}


# ------------------------------------------------------------------------------------
# benchmarks (each returns seconds for one sample)
# ------------------------------------------------------------------------------------


async def bench_spawn_true(c: Client, _tmp: Path) -> float:
    pid = Ids.next("t")
    state = c.track(pid)
    t0 = time.perf_counter()
    await c.call("process/start", start_params(c, pid, ["/bin/true"]))
    await asyncio.wait_for(state.closed.wait(), OP_TIMEOUT_S)
    return time.perf_counter() - t0


async def bench_stdout(c: Client, _tmp: Path, size: int = STDOUT_BYTES) -> float:
    pid = Ids.next("o")
    state = c.track(pid)
    t0 = time.perf_counter()
    await c.call(
        "process/start", start_params(c, pid, ["/usr/bin/head", "-c", str(size), "/dev/zero"])
    )
    await asyncio.wait_for(state.closed.wait(), OP_TIMEOUT_S)
    elapsed = time.perf_counter() - t0
    if state.out_bytes != size:
        raise RuntimeError(f"received {state.out_bytes} of {size} stdout bytes")
    return elapsed


_FS_PAYLOAD = base64.b64encode(os.urandom(FS_BYTES)).decode()


async def bench_fs_roundtrip(c: Client, tmp: Path) -> float:
    native = tmp / Ids.next("f")
    path = c.path(native)
    t0 = time.perf_counter()
    await c.call("fs/writeFile", {"path": path, "dataBase64": _FS_PAYLOAD})
    result = await c.call("fs/readFile", {"path": path})
    elapsed = time.perf_counter() - t0
    if result["dataBase64"] != _FS_PAYLOAD:
        raise RuntimeError("fs round trip returned different bytes")
    os.unlink(native)
    return elapsed


async def bench_concurrent(c: Client, _tmp: Path) -> float:
    pids = [Ids.next("c") for _ in range(CONCURRENT_PROCESSES)]
    states = [c.track(pid) for pid in pids]
    t0 = time.perf_counter()
    futures = [
        await c.send("process/start", start_params(c, pid, ["/bin/echo", pid])) for pid in pids
    ]
    await asyncio.wait_for(asyncio.gather(*futures), OP_TIMEOUT_S)
    await asyncio.wait_for(asyncio.gather(*(s.closed.wait() for s in states)), OP_TIMEOUT_S)
    return time.perf_counter() - t0


async def bench_getmetadata(c: Client, tmp: Path) -> float:
    params = {"path": c.path(tmp)}  # built outside the timing: Path.as_uri() is client work
    t0 = time.perf_counter()
    await c.call("fs/getMetadata", params)
    return time.perf_counter() - t0


def workspace_write_sandbox(c: Client, workspace: Path) -> dict[str, Any]:
    """The policy the 0.171 harness sends in ``workspace-write`` (its trace)."""

    def special(kind: str, access: str, **extra: Any) -> dict[str, Any]:
        return {"path": {"type": "special", "value": {"kind": kind, **extra}}, "access": access}

    entries = [
        special("root", "read"),
        special("project_roots", "write"),
        special("slash_tmp", "write"),
        special("tmpdir", "write"),
        *(
            {**special("project_roots", "read", subpath=name), "missing_path_behavior": "skip"}
            for name in (".git", ".agents", ".codex")
        ),
    ]
    return {
        "permissions": {
            "type": "managed",
            "file_system": {"type": "restricted", "entries": entries},
            "network": "restricted",
        },
        "cwd": c.path(workspace),
        "workspaceRoots": [c.path(workspace)],
        "windowsSandboxLevel": "disabled",
        "windowsSandboxProxySettingsMode": "reconcile",
        "useLegacyLandlock": False,
    }


async def bench_spawn_sandboxed(c: Client, tmp: Path) -> float:
    """``/bin/true`` spawn-to-closed under the harness's workspace-write policy."""
    pid = Ids.next("s")
    state = c.track(pid)
    params = start_params(c, pid, ["/bin/true"])
    params["cwd"] = c.path(tmp)
    params["sandbox"] = workspace_write_sandbox(c, tmp)
    t0 = time.perf_counter()
    result = await c.call("process/start", params)
    await asyncio.wait_for(state.closed.wait(), OP_TIMEOUT_S)
    elapsed = time.perf_counter() - t0
    if result.get("sandboxType") != "linuxSeccomp":
        raise RuntimeError(f"not confined: {result}")
    return elapsed


def _write_random_file(path: Path, size: int) -> None:
    with open(path, "wb") as f:
        for _ in range(size // BLOCK_BYTES):
            f.write(os.urandom(BLOCK_BYTES))


async def bench_read_blocks(c: Client, tmp: Path) -> float:
    """Codex 0.171's file streaming: open, read 64 MiB in 1 MiB blocks, close."""
    native = tmp / "blocks.bin"
    if not native.exists():
        _write_random_file(native, BLOCK_FILE_BYTES)
    handle = Ids.next("h")
    t0 = time.perf_counter()
    await c.call("fs/open", {"handleId": handle, "path": c.path(native)})
    total = 0
    offset = 0
    while True:
        block = await c.call(
            "fs/readBlock", {"handleId": handle, "offset": offset, "len": BLOCK_BYTES}
        )
        size = len(base64.b64decode(block["chunk"]))
        total += size
        offset += size
        if block["eof"]:
            break
    await c.call("fs/close", {"handleId": handle})
    elapsed = time.perf_counter() - t0
    if total != BLOCK_FILE_BYTES:
        raise RuntimeError(f"read {total} of {BLOCK_FILE_BYTES} bytes in blocks")
    return elapsed


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
    #: Uses methods Codex 0.133 lacks (run only on 0.171-wire columns).
    needs_0171: bool = False


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
    Bench(
        "spawn_sandboxed_p50",
        "spawn `true` -> closed, workspace-write sandbox, p50",
        bench_spawn_sandboxed,
        50,
        15,
        5,
        "p50",
        "ms",
        needs_0171=True,
    ),
    Bench(
        "read_blocks_64mib",
        "64 MiB fs/open + fs/readBlock (1 MiB)",
        bench_read_blocks,
        5,
        1,
        1,
        "median",
        "s",
        needs_0171=True,
    ),
]

#: Column name -> (server, speaks 0.171's wire form).
COLUMNS = {
    "ours": ("ours", False),
    "codex": ("codex", False),
    "ours-0.171": ("ours", True),
    "codex-0.171": ("codex-0.171", True),
}
#: (candidate, reference) pairs whose ratio the table shows.
RATIOS = (("ours", "codex"), ("ours-0.171", "codex-0.171"))


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
    names = [n for n in clients if clients[n].uris or not bench.needs_0171]
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
        # A fresh (seeded) order every round, so no column keeps the same neighbour: a
        # fixed order and its reverse ran the first and last columns twice in a row
        # (their second batch found their server warm) and always put the same server
        # before each of the others.
        order = random.Random(round_no).sample(names, len(names))
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


def ratio(result: Result, pair: tuple[str, str] = ("ours", "codex")) -> float | None:
    ours, codex = result.seconds.get(pair[0]), result.seconds.get(pair[1])
    return ours / codex if ours and codex else None


def render_table(results: list[Result], names: list[str]) -> str:
    pairs = [pair for pair in RATIOS if pair[0] in names and pair[1] in names]
    header = ["benchmark", *names, *(f"{a}/{b}" for a, b in pairs), "0.133 ref"]
    rows = [header]
    for r in results:
        row = [r.title, *(fmt(r.seconds.get(n), r.unit) for n in names)]
        for pair in pairs:
            value = ratio(r, pair)
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
        for name, given, version, env_var, flag in (
            ("codex", args.codex, CODEX_VERSION, CODEX_BIN_ENV, "--codex"),
            ("codex-0.171", args.codex171, CODEX_0171_VERSION, CODEX_0171_BIN_ENV, "--codex171"),
        ):
            codex = Path(given) if given else default_codex_binary(version, env_var)
            if codex is None or not codex.is_file():
                print(
                    f"codex {version} binary not found: run CODEX_VERSION={version} "
                    f"scripts/install_codex.sh, set {env_var} or pass {flag} (skipping it)",
                    file=sys.stderr,
                )
                continue
            argv = [str(codex), "exec-server", "--listen", "ws://127.0.0.1:0"]
            servers.append(Server(name, argv, server_cpu))
    tmp_root = Path(tempfile.mkdtemp(prefix="exec-bench-"))
    for server in servers:
        # 0.171 keeps helper binaries in CODEX_HOME: not in the user's ~/.codex.
        server.env = {"CODEX_HOME": str(tmp_root / f"{server.name}-home")}
    if not servers:
        return 2
    by_name = {s.name: s for s in servers}
    columns = [c for c, (server, _) in COLUMNS.items() if server in by_name]
    selected = [b for b in BENCHES if not args.bench or b.key in args.bench]
    results: list[Result] = []
    clients: dict[str, Client] = {}
    try:
        for server in servers:
            await server.start()
        tmp: dict[str, Path] = {s.name: tmp_root / s.name for s in servers}
        for path in tmp.values():
            path.mkdir()
        async with aiohttp.ClientSession() as http:
            for column in columns:
                server_name, uris = COLUMNS[column]
                clients[column] = await Client.connect(http, by_name[server_name].url, uris=uris)
                tmp.setdefault(column, tmp[server_name] / column)
                tmp[column].mkdir(exist_ok=True)
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
    names = columns
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
                            "ratio_ours_codex_0171": ratio(r, ("ours-0.171", "codex-0.171")),
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
        "--codex171",
        help=f"codex {CODEX_0171_VERSION} binary "
        f"(default: ${CODEX_0171_BIN_ENV} or .interop/codex-{CODEX_0171_VERSION})",
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
