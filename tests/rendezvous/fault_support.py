"""Support for the fault-matrix tests: real processes (rendezvous, remote environment,
``exec-server`` commands) on loopback, with their stderr lines timestamped."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

CLI = [sys.executable, "-m", "exec_server"]
TOKEN = "fault-matrix-token"
ENV = "fm"
GRACE_S = 3.0
SESSION_TTL_S = 2.0
OUTPUT_BYTES = 64 * 1024 * 1024
WAIT_S = 60.0
"""Upper bound of any single wait (the rows end within grace + a few seconds)."""

# 64 MiB in 1 MiB writes, paced so that a kill lands in the middle of it.
SLOW_OUTPUT = (
    "import sys, time\n"
    "chunk = b'x' * 1048576\n"
    "for _ in range(64):\n"
    "    sys.stdout.buffer.write(chunk); sys.stdout.buffer.flush(); time.sleep(0.05)\n"
)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def report(row: str, **observed: object) -> None:
    """What a row observed, for the README table (shown with ``pytest -s``)."""
    details = ", ".join(
        f"{k}={v:.2f}s" if isinstance(v, float) else f"{k}={v}" for k, v in observed.items()
    )
    print(f"\nfault matrix | {row} | {details}")


@dataclass
class Proc:
    """A child process whose stderr lines are collected with their arrival times."""

    proc: asyncio.subprocess.Process
    lines: list[tuple[float, str]] = field(default_factory=list)
    stdout_bytes: int = 0
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    @classmethod
    async def start(cls, *args: str, env: dict[str, str] | None = None) -> Proc:
        proc = await asyncio.create_subprocess_exec(
            *args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env={**os.environ, **(env or {})},
        )
        return cls(proc)

    def collect(self, *, stdout: bool) -> None:
        """Read stderr lines (and count stdout bytes) in the background."""
        self._tasks.append(asyncio.ensure_future(self._read_stderr()))
        if stdout:
            self._tasks.append(asyncio.ensure_future(self._count_stdout()))

    async def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        async for raw in self.proc.stderr:
            self.lines.append((time.monotonic(), raw.decode(errors="replace").rstrip()))

    async def _count_stdout(self) -> None:
        assert self.proc.stdout is not None
        while chunk := await self.proc.stdout.read(1 << 20):
            self.stdout_bytes += len(chunk)

    async def first_line(self) -> str:
        assert self.proc.stdout is not None
        raw = await asyncio.wait_for(self.proc.stdout.readline(), WAIT_S)
        return raw.decode().strip()

    def line_with(self, text: str) -> tuple[float, str] | None:
        return next(((t, line) for t, line in self.lines if text in line), None)

    def kill(self) -> float:
        self.proc.send_signal(signal.SIGKILL)
        return time.monotonic()

    async def wait(self) -> int:
        code = await asyncio.wait_for(self.proc.wait(), WAIT_S)
        for task in self._tasks:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(task, 5)
        return code

    async def stop(self) -> None:
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGKILL)
            await self.proc.wait()
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


async def until(
    predicate: Callable[[], bool], timeout: float = WAIT_S, what: str = "condition"
) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"{what}: not met within {timeout}s")
        await asyncio.sleep(0.01)


class Stack:
    """Rendezvous (fixed port, data dir) + remote environment, each a process."""

    def __init__(self, tmp_path: Path, transport: str = "noise") -> None:
        self.tmp_path = tmp_path
        self.transport = transport
        self.port = _free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.rendezvous: Proc | None = None
        self.environment: Proc | None = None
        self.procs: list[Proc] = []

    async def start_rendezvous(self, grace_s: float = GRACE_S) -> None:
        self.rendezvous = await Proc.start(
            *CLI,
            "rendezvous",
            "--listen",
            self.base,
            "--data-dir",
            str(self.tmp_path / "rz"),
            "--environment-grace",
            str(grace_s),
            "--harness-grace",
            str(grace_s),
            env={"EXEC_SERVER_RENDEZVOUS_TOKEN": TOKEN},
        )
        self.procs.append(self.rendezvous)
        assert await self.rendezvous.first_line() == self.base
        self.rendezvous.collect(stdout=False)

    async def start_environment(self) -> None:
        self.environment = await Proc.start(
            *CLI,
            "serve",
            "--remote",
            self.base,
            "--environment-id",
            ENV,
            "--session-ttl",
            str(SESSION_TTL_S),
            "--remote-transport",
            self.transport,
            env={"EXEC_SERVER_REGISTRATION_TOKEN": TOKEN},
        )
        self.procs.append(self.environment)
        self.environment.collect(stdout=False)
        await until(self.online, what="environment online")

    def online(self) -> bool:
        return self._environments().get(ENV, {}).get("online") is True

    def _environments(self) -> dict[str, dict[str, object]]:
        try:
            req = urllib.request.Request(
                f"{self.base}/cloud/environments", headers={"Authorization": f"Bearer {TOKEN}"}
            )
            with urllib.request.urlopen(req, timeout=2) as resp:
                rows = json.loads(resp.read())
        except OSError:
            return {}
        return {row["id"]: row for row in rows}

    async def harness_url(self, http: aiohttp.ClientSession) -> str:
        async with http.post(
            f"{self.base}/cloud/environment/{ENV}/connect",
            headers={"Authorization": f"Bearer {TOKEN}"},
        ) as resp:
            assert resp.status == 200, await resp.text()
            url: str = (await resp.json())["url"]
        return url

    def streams(self) -> object:
        return self._environments().get(ENV, {}).get("streams")

    async def command(self, *args: str, stdout: bool = True) -> Proc:
        proc = await Proc.start(
            *CLI,
            *args[:1],
            "--rendezvous",
            self.base,
            "--environment-id",
            ENV,
            *args[1:],
            env={"EXEC_SERVER_RENDEZVOUS_TOKEN": TOKEN},
        )
        self.procs.append(proc)
        proc.collect(stdout=stdout)
        return proc

    async def run_slow_output(self) -> Proc:
        return await self.command("run", "--", sys.executable, "-c", SLOW_OUTPUT)

    async def close(self) -> None:
        for proc in reversed(self.procs):
            await proc.stop()


@contextlib.asynccontextmanager
async def running_stack(tmp_path: Path, transport: str = "noise") -> AsyncIterator[Stack]:
    """A started :class:`Stack` (the environment on the encrypted relay unless
    ``transport="legacy"``), stopped (every process killed) on exit."""
    stack = Stack(tmp_path, transport)
    try:
        await stack.start_rendezvous()
        await stack.start_environment()
        yield stack
    finally:
        await stack.close()


def child_with(marker: str) -> bool:
    """Whether a process whose command line contains ``marker`` is alive."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if marker.encode() in (entry / "cmdline").read_bytes():
                    return True
    return False
