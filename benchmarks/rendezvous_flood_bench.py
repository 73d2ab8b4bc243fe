#!/usr/bin/env python3
"""A hostile client's small-frame flood at the rendezvous, one source tree against another.

Each sample starts the ``RendezvousServer`` of one source tree (``relay_bench.py
--serve-rendezvous`` of that tree, its ``src`` on ``PYTHONPATH``), opens a harness relay
socket with a raw TCP connection, writes ``--mib`` MiB of empty frames and then a close,
reads everything the server writes back until its close frame, and reports the server
process's CPU seconds over the flood (``/proc/PID/task/*/schedstat``, all threads):

* ``--kind pings``: empty pings (each may be answered with a pong);
* ``--kind continuations``: one fragmented message of empty continuation frames.

The trees alternate, the order flipping every round; medians and ranges per tree::

    git archive main src benchmarks | tar -x -C /tmp/before
    python benchmarks/rendezvous_flood_bench.py --kind pings /tmp/before .
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

from bench_support import cpu_ns

MIB = 1024 * 1024
_KEY = b"\x1f\x8b\x3c\xa5"


def masked_frame(first: int, payload: bytes) -> bytes:
    """A client frame of up to 125 bytes (masked, RFC 6455 5.2)."""
    masked = bytes(b ^ _KEY[i % 4] for i, b in enumerate(payload))
    return bytes((first, 0x80 | len(payload))) + _KEY + masked


async def _upgrade(url: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    host_port, path = url.split("://", 1)[1].split("/", 1)
    host, _, port = host_port.partition(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(
        (
            f"GET /{path} HTTP/1.1\r\nHost: {host_port}\r\nUpgrade: websocket\r\n"
            "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    head = await reader.readuntil(b"\r\n\r\n")
    if b" 101 " not in head.split(b"\r\n", 1)[0]:
        raise RuntimeError(f"upgrade refused: {head!r}")
    return reader, writer


async def _flood(writer: asyncio.StreamWriter, kind: str, mib: int) -> None:
    if kind == "pings":
        unit, start, end = masked_frame(0x89, b""), b"", b""
    else:
        unit, start, end = masked_frame(0x00, b""), masked_frame(0x02, b""), masked_frame(0x80, b"")
    chunk = unit * (65536 // len(unit))
    writer.write(start)
    for _ in range(mib * MIB // len(chunk)):
        writer.write(chunk)
        await writer.drain()
    writer.write(end + masked_frame(0x88, (1000).to_bytes(2, "big")))
    await writer.drain()


async def sample(tree: Path, kind: str, mib: int) -> tuple[float, float, int]:
    """``(server CPU seconds, wall seconds, bytes written back)`` of one flood."""
    env = dict(os.environ, PYTHONPATH=str(tree / "src"))
    server = await asyncio.create_subprocess_exec(
        sys.executable,
        str(tree / "benchmarks" / "relay_bench.py"),
        "--serve-rendezvous",
        stdout=asyncio.subprocess.PIPE,
        env=env,
        cwd=tree,
    )
    try:
        assert server.stdout is not None
        info = json.loads(await server.stdout.readline())
        reader, writer = await _upgrade(info["harness_url"])
        await asyncio.sleep(0.3)  # the upgrade's own work is not counted
        before, started = cpu_ns(server.pid), time.monotonic()
        flood = asyncio.create_task(_flood(writer, kind, mib))
        back = 0
        tail = b""
        while True:  # until the server's close frame after the whole flood (or EOF)
            data = await reader.read(MIB)
            if not data:
                break
            back += len(data)
            tail = (tail + data)[-64:]
            if flood.done() and b"\x88\x02" in tail:
                break
        await flood
        cpu = (cpu_ns(server.pid) - before) / 1e9
        wall = time.monotonic() - started
        writer.close()
        return cpu, wall, back
    finally:
        server.terminate()
        await server.wait()


async def main_async(args: argparse.Namespace, trees: list[Path]) -> int:
    cpu: dict[Path, list[float]] = {tree: [] for tree in trees}
    for round_ in range(args.rounds):
        for tree in trees if round_ % 2 == 0 else trees[::-1]:
            seconds, wall, back = await sample(tree, args.kind, args.mib)
            cpu[tree].append(seconds)
            print(
                f"{tree} {args.kind}: server CPU {seconds:.3f} s, wall {wall:.2f} s, {back} B back"
            )
    for tree, values in cpu.items():
        print(
            f"{tree}: server CPU median {statistics.median(values):.3f} s "
            f"(range {min(values):.3f}-{max(values):.3f}, n={len(values)})"
        )
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("trees", nargs="+", help="source trees (with src/ and benchmarks/)")
    parser.add_argument("--kind", choices=("pings", "continuations"), default="pings")
    parser.add_argument("--mib", type=int, default=8, help="flood size per sample")
    parser.add_argument("--rounds", type=int, default=5, help="samples per tree")
    args = parser.parse_args()
    return asyncio.run(main_async(args, [Path(t).resolve() for t in args.trees]))


if __name__ == "__main__":
    sys.exit(main())
