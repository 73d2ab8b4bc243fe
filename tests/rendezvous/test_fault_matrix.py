"""The fault matrix (README "Fault matrix"): real processes, kill -9, full disks.

Each test is one row: a rendezvous, a remote environment and an ``exec-server`` command
(or the SDK) as separate processes on loopback; one of them dies with SIGKILL in the
middle of a 64 MiB output or a ``cp``, and the test checks what the person at the
terminal sees and what the survivors reclaim. Nothing here asserts on elapsed time;
each row prints the delays it observed (``pytest -s``) for the README table.

Grace periods are 3 s and detached sessions live 2 s, so every row ends in seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from exec_server.client import ExecServerClient
from exec_server.protocol.errors import ServerError

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


def _report(row: str, **observed: object) -> None:
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


async def until(predicate: object, timeout: float = WAIT_S, what: str = "condition") -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():  # type: ignore[operator]
        if loop.time() > deadline:
            raise AssertionError(f"{what}: not met within {timeout}s")
        await asyncio.sleep(0.01)


class Stack:
    """Rendezvous (fixed port, data dir) + remote environment, each a process."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.port = _free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.rendezvous: Proc | None = None
        self.environment: Proc | None = None
        self.procs: list[Proc] = []

    async def start_rendezvous(self) -> None:
        self.rendezvous = await Proc.start(
            *CLI,
            "rendezvous",
            "--listen",
            self.base,
            "--data-dir",
            str(self.tmp_path / "rz"),
            "--environment-grace",
            str(GRACE_S),
            "--harness-grace",
            str(GRACE_S),
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


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    stack = Stack(tmp_path)
    try:
        await stack.start_rendezvous()
        await stack.start_environment()
        yield stack
    finally:
        await stack.close()


def _child_with(marker: str) -> bool:
    """Whether a process whose command line contains ``marker`` is alive."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if marker.encode() in (entry / "cmdline").read_bytes():
                    return True
    return False


# --- kill -9 of the environment -------------------------------------------------------


async def test_environment_killed_mid_output_run_says_so_then_fails_clearly(
    stack: Stack,
) -> None:
    run = await stack.run_slow_output()
    await until(lambda: run.stdout_bytes >= 8 * 1024 * 1024, what="output flowing")
    assert stack.environment is not None
    killed_at = stack.environment.kill()
    code = await run.wait()
    status = run.line_with("the environment is offline; waiting")
    final = run.line_with("Error:")
    assert status is not None, run.lines
    assert final is not None, run.lines
    assert status[0] <= final[0]
    assert "environment_offline" in final[1] and "did not come back" in final[1]
    assert code == 1
    assert run.stdout_bytes < OUTPUT_BYTES
    _report(
        "kill -9 environment, 64 MiB output",
        status_after=status[0] - killed_at,
        error_after=final[0] - killed_at,
        error=final[1],
    )


async def test_environment_killed_mid_upload_cp_says_so_then_fails_clearly(
    stack: Stack, tmp_path: Path
) -> None:
    source = tmp_path / "big.bin"
    source.write_bytes(os.urandom(256 * 1024 * 1024))
    dest = tmp_path / "dest.bin"
    cp = await stack.command("cp", str(source), f"{ENV}:{dest}", stdout=False)
    await until(lambda: dest.exists() and dest.stat().st_size >= 8 * 1024 * 1024, 60, "upload")
    assert stack.environment is not None
    killed_at = stack.environment.kill()
    code = await cp.wait()
    status = cp.line_with("the environment is offline; waiting")
    final = cp.line_with("Error:")
    assert status is not None and final is not None, cp.lines
    assert "environment_offline" in final[1]
    assert "partial file may remain (the environment is unreachable)" in final[1]
    assert code == 1
    assert dest.stat().st_size < source.stat().st_size  # partial, and the error says so
    _report(
        "kill -9 environment, cp upload",
        status_after=status[0] - killed_at,
        error_after=final[0] - killed_at,
        error=final[1],
        left=f"{dest.stat().st_size} of {source.stat().st_size} bytes",
    )


# --- kill -9 of the rendezvous (restarted) --------------------------------------------


async def test_rendezvous_killed_and_restarted_mid_output_loses_nothing(stack: Stack) -> None:
    run = await stack.run_slow_output()
    await until(lambda: run.stdout_bytes >= 8 * 1024 * 1024, what="output flowing")
    assert stack.rendezvous is not None
    killed_at = stack.rendezvous.kill()
    await stack.rendezvous.wait()
    await asyncio.sleep(1.0)  # a supervisor restarting it
    await stack.start_rendezvous()
    code = await run.wait()
    assert code == 0, run.lines
    assert run.stdout_bytes == OUTPUT_BYTES
    finished_at = time.monotonic()
    _report(
        "kill -9 rendezvous (restarted after 1 s), 64 MiB output",
        finished_after=finished_at - killed_at,
        stderr=[line for _, line in run.lines],
    )


async def test_rendezvous_killed_and_restarted_mid_upload_completes(
    stack: Stack, tmp_path: Path
) -> None:
    source = tmp_path / "big.bin"
    data = os.urandom(256 * 1024 * 1024)
    source.write_bytes(data)
    dest = tmp_path / "dest.bin"
    cp = await stack.command("cp", str(source), f"{ENV}:{dest}", stdout=False)
    await until(lambda: dest.exists() and dest.stat().st_size >= 8 * 1024 * 1024, 60, "upload")
    assert stack.rendezvous is not None
    killed_at = stack.rendezvous.kill()
    await stack.rendezvous.wait()
    await asyncio.sleep(1.0)
    await stack.start_rendezvous()
    code = await cp.wait()
    assert code == 0, cp.lines
    assert hashlib.sha256(dest.read_bytes()).digest() == hashlib.sha256(data).digest()
    _report(
        "kill -9 rendezvous (restarted after 1 s), cp upload",
        finished_after=time.monotonic() - killed_at,
        stderr=[line for _, line in cp.lines],
    )


# --- kill -9 of the harness -----------------------------------------------------------


async def test_harness_killed_mid_output_everything_is_reclaimed(stack: Stack) -> None:
    marker = f"fault-matrix-{os.getpid()}-{time.monotonic_ns()}"
    run = await stack.command(
        "run", "--", sys.executable, "-c", SLOW_OUTPUT + f"# {marker}\ntime.sleep(600)"
    )
    await until(lambda: run.stdout_bytes >= 8 * 1024 * 1024, what="output flowing")
    assert _child_with(marker)
    killed_at = run.kill()
    # The rendezvous resets the stream after its harness grace, the environment's session
    # detaches and, after its TTL, its process is killed.
    await until(lambda: stack.streams() == 0, what="stream reclaimed")
    reclaimed_at = time.monotonic()
    await until(lambda: not _child_with(marker), what="process reaped")
    _report(
        "kill -9 harness, 64 MiB output",
        stream_reset_after=reclaimed_at - killed_at,
        process_killed_after=time.monotonic() - killed_at,
    )


async def test_harness_killed_mid_upload_leaves_a_partial_file_and_reclaims(
    stack: Stack, tmp_path: Path
) -> None:
    source = tmp_path / "big.bin"
    source.write_bytes(os.urandom(256 * 1024 * 1024))
    dest = tmp_path / "dest.bin"
    cp = await stack.command("cp", str(source), f"{ENV}:{dest}", stdout=False)
    await until(lambda: dest.exists() and dest.stat().st_size >= 8 * 1024 * 1024, 60, "upload")
    killed_at = cp.kill()
    await until(lambda: stack.streams() == 0, what="stream reclaimed")
    size = dest.stat().st_size
    assert size < source.stat().st_size
    _report(
        "kill -9 harness, cp upload",
        stream_reset_after=time.monotonic() - killed_at,
        left=f"{size} of {source.stat().st_size} bytes",
    )


# --- full disk ------------------------------------------------------------------------


def _can_mount_tmpfs() -> str | None:
    if shutil.which("unshare") is None:
        return "util-linux `unshare` is not installed"
    probe = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "true"],
        capture_output=True,
        check=False,
    )
    if probe.returncode != 0:
        return "mounting a tmpfs in a private mount namespace needs CAP_SYS_ADMIN"
    return None


@pytest.fixture
async def full_disk_server(tmp_path: Path) -> AsyncIterator[tuple[str, Path]]:
    """A local server whose ``disk`` directory is a 4 MiB tmpfs, mounted in a private
    mount namespace (only the server sees it)."""
    why = _can_mount_tmpfs()
    if why is not None:
        pytest.skip(why)
    disk = tmp_path / "disk"
    disk.mkdir()
    script = (
        f"mount -t tmpfs -o size=4m tmpfs {disk} && "
        f"exec {sys.executable} -m exec_server serve --listen ws://127.0.0.1:0"
    )
    server = await Proc.start("unshare", "--mount", "--propagation", "private", "sh", "-c", script)
    try:
        url = await server.first_line()
        assert url.startswith("ws://"), url
        yield url, disk
    finally:
        await server.stop()


async def test_full_disk_write_file_is_a_clear_error(full_disk_server: tuple[str, Path]) -> None:
    url, disk = full_disk_server
    target = str(disk / "big.bin")
    async with await ExecServerClient.connect(url) as client:
        with pytest.raises(ServerError) as failed:
            await client.write_file(target, b"x" * (8 * 1024 * 1024))
        assert "No space left on device" in failed.value.message
        left = await client.get_metadata(target)
        # In place, as Codex's fs::write: what fit stays, and the caller was told.
        assert left.size < 8 * 1024 * 1024
        await client.remove(target)
        await client.write_file(str(disk / "small.bin"), b"fits")  # the server is fine
        _report(
            "full disk, fs/writeFile",
            error=failed.value.message,
            left=f"{left.size} of {8 * 1024 * 1024} bytes",
        )


async def test_full_disk_cp_is_a_clear_error_and_leaves_no_partial_file(
    full_disk_server: tuple[str, Path], tmp_path: Path
) -> None:
    url, disk = full_disk_server
    source = tmp_path / "big.bin"
    source.write_bytes(os.urandom(16 * 1024 * 1024))
    cp = await Proc.start(*CLI, "cp", "--url", url, str(source), f"{ENV}:{disk / 'big.bin'}")
    cp.collect(stdout=False)
    code = await cp.wait()
    final = cp.line_with("Error:")
    assert code == 1 and final is not None, cp.lines
    assert "No space left on device" in final[1] and "partial file was removed" in final[1]
    async with await ExecServerClient.connect(url) as client:
        names = [entry.file_name for entry in await client.read_directory(str(disk))]
    assert "big.bin" not in names
    _report("full disk, cp upload", error=final[1])
