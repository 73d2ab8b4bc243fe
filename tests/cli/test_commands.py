"""`exec-server run` and `cp` as real processes against a real server."""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from exec_server.environment.server import ExecServer

CLI = [sys.executable, "-m", "exec_server"]


@pytest.fixture
async def url() -> AsyncIterator[str]:
    server = ExecServer()
    yield await server.start_websocket()
    await server.close()


async def _cli(*args: str, stdin: bytes | None = None) -> tuple[int, bytes, bytes]:
    proc = await asyncio.create_subprocess_exec(
        *CLI,
        *args,
        stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(stdin), 120)
    assert proc.returncode is not None
    return proc.returncode, out, err


async def test_run_streams_output_and_returns_the_exit_code(url: str) -> None:
    code, out, err = await _cli(
        "run", "--url", url, "--", "sh", "-c", "echo hi; echo oops >&2; exit 3"
    )
    assert (code, out) == (3, b"hi\n")
    assert b"oops\n" in err


async def test_run_forwards_stdin_and_env(url: str, tmp_path: Path) -> None:
    code, out, _ = await _cli(
        "run",
        "--url",
        url,
        "--cwd",
        str(tmp_path),
        "--env",
        "GREETING=hey",
        "-i",
        "--",
        "sh",
        "-c",
        'cat; echo "$GREETING from $(pwd)"',
        stdin=b"piped input\n",
    )
    assert code == 0
    assert out == f"piped input\nhey from {tmp_path}\n".encode()


async def test_run_forwards_ctrl_c_as_interrupt(url: str) -> None:
    proc = await asyncio.create_subprocess_exec(
        *CLI,
        "run",
        "--url",
        url,
        "--",
        "sh",
        "-c",
        "trap 'echo signal:2; exit 7' INT; echo ready; while :; do sleep 0.05; done",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    assert await asyncio.wait_for(proc.stdout.readline(), 15) == b"ready\n"
    proc.send_signal(signal.SIGINT)
    rest = await asyncio.wait_for(proc.stdout.read(), 15)
    assert b"signal:2" in rest
    assert await proc.wait() == 7


async def test_run_without_a_target_is_a_clear_error() -> None:
    env_clean = {k: v for k, v in os.environ.items() if "EXEC_SERVER" not in k}
    proc = await asyncio.create_subprocess_exec(
        *CLI,
        "run",
        "--",
        "true",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**env_clean, "EXEC_SERVER_CONFIG": "/nonexistent"},
    )
    _, err = await proc.communicate()
    assert proc.returncode == 1
    assert b"no exec-server to connect to" in err


@pytest.mark.parametrize("size", [0, 1, 8 * 1024 * 1024, 20 * 1024 * 1024 + 3])
async def test_cp_both_ways_is_checksum_verified(url: str, tmp_path: Path, size: int) -> None:
    source = tmp_path / "source.bin"
    source.write_bytes(os.urandom(size))
    remote = tmp_path / "remote" / "copy.bin"
    remote.parent.mkdir()
    code, _, err = await _cli("cp", "--url", url, str(source), f"env:{remote}")
    assert code == 0, err
    assert remote.read_bytes() == source.read_bytes()
    back = tmp_path / "back.bin"
    code, _, err = await _cli("cp", "--url", url, f"env:{remote}", str(back))
    assert code == 0, err
    assert (
        hashlib.sha256(back.read_bytes()).digest() == hashlib.sha256(source.read_bytes()).digest()
    )
    assert not list(tmp_path.glob(".*.part"))


async def test_cp_errors_are_clear(url: str, tmp_path: Path) -> None:
    code, _, err = await _cli("cp", "--url", url, "env:/no/such/file", str(tmp_path / "x"))
    assert code == 1 and b"No such file or directory" in err
    code, _, err = await _cli("cp", "--url", url, str(tmp_path), "env:/tmp/x")
    assert code == 2 and b"is a directory" in err
    code, _, err = await _cli("cp", "--url", url, "a", "b")
    assert code == 2 and b"exactly one of SOURCE and DESTINATION" in err


@pytest.mark.slow
@pytest.mark.timeout(600)
async def test_cp_one_gib_both_ways(url: str, tmp_path: Path) -> None:
    size = 1024 * 1024 * 1024
    source = tmp_path / "gib.bin"
    digest = hashlib.sha256()
    block = os.urandom(4 * 1024 * 1024)
    with source.open("wb") as fh:
        for i in range(size // len(block)):
            # Vary every block so misplaced chunks cannot cancel out.
            chunk = i.to_bytes(8, "big") + block[8:]
            fh.write(chunk)
            digest.update(chunk)
    remote = tmp_path / "remote-gib.bin"
    code, _, err = await _cli("cp", "--url", url, str(source), f"env:{remote}")
    assert code == 0, err
    assert remote.stat().st_size == size
    back = tmp_path / "back-gib.bin"
    code, _, err = await _cli("cp", "--url", url, f"env:{remote}", str(back))
    assert code == 0, err
    check = hashlib.sha256()
    with back.open("rb") as fh:
        while chunk := fh.read(8 * 1024 * 1024):
            check.update(chunk)
    assert check.hexdigest() == digest.hexdigest()
