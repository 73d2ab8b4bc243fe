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
import hashlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from fault_support import (
    CLI,
    ENV,
    OUTPUT_BYTES,
    SLOW_OUTPUT,
    Proc,
    Stack,
    child_with,
    report,
    running_stack,
    until,
)

from exec_server.cli.errors import EXIT_CONNECTION
from exec_server.client import ExecServerClient, ServerError


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    async with running_stack(tmp_path) as stack:
        yield stack


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
    final = run.line_with("exec-server: lost the connection to")
    assert status is not None, run.lines
    assert final is not None, run.lines
    assert status[0] <= final[0]
    assert "environment_offline" in final[1] and "did not come back" in final[1]
    assert code == EXIT_CONNECTION
    assert run.stdout_bytes < OUTPUT_BYTES
    report(
        "kill -9 environment, 64 MiB output",
        status_after=status[0] - killed_at,
        error_after=final[0] - killed_at,
        error=final[1],
    )


async def test_environment_killed_mid_upload_cp_says_so_then_fails_clearly(
    stack: Stack, tmp_path: Path
) -> None:
    source = tmp_path / "big.bin"
    source.write_bytes(os.urandom(128 * 1024 * 1024))
    dest = tmp_path / "dest.bin"
    cp = await stack.command("cp", str(source), f"{ENV}:{dest}", stdout=False)
    await until(lambda: dest.exists() and dest.stat().st_size >= 8 * 1024 * 1024, 60, "upload")
    assert stack.environment is not None
    killed_at = stack.environment.kill()
    code = await cp.wait()
    status = cp.line_with("the environment is offline; waiting")
    final = cp.line_with("exec-server: lost the connection to")
    assert status is not None and final is not None, cp.lines
    assert "environment_offline" in final[1]
    assert "partial file may remain (the environment is unreachable)" in final[1]
    assert code == EXIT_CONNECTION
    assert dest.stat().st_size < source.stat().st_size  # partial, and the error says so
    report(
        "kill -9 environment, cp upload",
        status_after=status[0] - killed_at,
        error_after=final[0] - killed_at,
        error=final[1],
        left=f"{dest.stat().st_size} of {source.stat().st_size} bytes",
    )


# --- kill -9 of the rendezvous (restarted) --------------------------------------------

RESTART_GRACE_S = 15.0


async def test_rendezvous_killed_and_restarted_mid_output_loses_nothing(stack: Stack) -> None:
    run = await stack.run_slow_output()
    await until(lambda: run.stdout_bytes >= 8 * 1024 * 1024, what="output flowing")
    assert stack.rendezvous is not None
    killed_at = stack.rendezvous.kill()
    await stack.rendezvous.wait()
    await asyncio.sleep(1.0)  # a supervisor restarting it
    # A grace long enough for the environment's reconnect backoff (1 s, 2 s, 4 s) even
    # on a loaded machine; the production default is 30 s.
    await stack.start_rendezvous(grace_s=RESTART_GRACE_S)
    code = await run.wait()
    assert code == 0, run.lines
    assert run.stdout_bytes == OUTPUT_BYTES
    finished_at = time.monotonic()
    report(
        "kill -9 rendezvous (restarted after 1 s), 64 MiB output",
        finished_after=finished_at - killed_at,
        stderr=[line for _, line in run.lines],
    )


async def test_rendezvous_killed_and_restarted_mid_upload_completes(
    stack: Stack, tmp_path: Path
) -> None:
    source = tmp_path / "big.bin"
    data = os.urandom(128 * 1024 * 1024)
    source.write_bytes(data)
    dest = tmp_path / "dest.bin"
    cp = await stack.command("cp", str(source), f"{ENV}:{dest}", stdout=False)
    await until(lambda: dest.exists() and dest.stat().st_size >= 8 * 1024 * 1024, 60, "upload")
    assert stack.rendezvous is not None
    killed_at = stack.rendezvous.kill()
    await stack.rendezvous.wait()
    await asyncio.sleep(1.0)
    await stack.start_rendezvous(grace_s=RESTART_GRACE_S)
    code = await cp.wait()
    assert code == 0, cp.lines
    assert hashlib.sha256(dest.read_bytes()).digest() == hashlib.sha256(data).digest()
    report(
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
    assert child_with(marker)
    killed_at = run.kill()
    # The rendezvous resets the stream after its harness grace, the environment's session
    # detaches and, after its TTL, its process is killed.
    await until(lambda: stack.streams() == 0, what="stream reclaimed")
    reclaimed_at = time.monotonic()
    await until(lambda: not child_with(marker), what="process reaped")
    report(
        "kill -9 harness, 64 MiB output",
        stream_reset_after=reclaimed_at - killed_at,
        process_killed_after=time.monotonic() - killed_at,
    )


async def test_harness_killed_mid_upload_leaves_a_partial_file_and_reclaims(
    stack: Stack, tmp_path: Path
) -> None:
    source = tmp_path / "big.bin"
    source.write_bytes(os.urandom(128 * 1024 * 1024))
    dest = tmp_path / "dest.bin"
    cp = await stack.command("cp", str(source), f"{ENV}:{dest}", stdout=False)
    await until(lambda: dest.exists() and dest.stat().st_size >= 8 * 1024 * 1024, 60, "upload")
    killed_at = cp.kill()
    await until(lambda: stack.streams() == 0, what="stream reclaimed")
    size = dest.stat().st_size
    assert size < source.stat().st_size
    report(
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
            await client.fs.write_file(target, b"x" * (8 * 1024 * 1024))
        assert "No space left on device" in failed.value.message
        left = await client.fs.get_metadata(target)
        # In place, as Codex's fs::write: what fit stays, and the caller was told.
        assert left.size < 8 * 1024 * 1024
        await client.fs.remove(target)
        await client.fs.write_file(str(disk / "small.bin"), b"fits")  # the server is fine
        report(
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
    final = cp.line_with("exec-server: cannot write")
    assert code == 1 and final is not None, cp.lines
    assert "No space left on device" in final[1] and "partial file was removed" in final[1]
    async with await ExecServerClient.connect(url) as client:
        names = [entry.file_name for entry in await client.fs.read_directory(str(disk))]
    assert "big.bin" not in names
    report("full disk, cp upload", error=final[1])
