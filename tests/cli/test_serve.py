"""`exec-server serve` as a real process: URL line, stdio mode, clean shutdown."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from pathlib import Path

import psutil
import pytest

from exec_server.client import ExecServerClient

SERVE = [sys.executable, "-m", "exec_server", "serve"]


async def _start(
    *args: str, env: dict[str, str] | None = None
) -> tuple[asyncio.subprocess.Process, str]:
    proc = await asyncio.create_subprocess_exec(
        *SERVE,
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), 15)
    return proc, line.decode()


async def test_prints_one_url_line_and_reaps_processes_on_sigterm(tmp_path: Path) -> None:
    proc, line = await _start()
    assert line.startswith("ws://127.0.0.1:") and line.endswith("\n")
    pid_file = tmp_path / "pid"
    async with await ExecServerClient.connect(line.strip()) as client:
        await client.start_process(
            ["/bin/sh", "-c", f"sleep 60 & echo $! > {pid_file}; wait"], events=False
        )
        deadline = time.monotonic() + 5
        while not pid_file.exists() or not pid_file.read_text().strip():
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)
        grandchild = int(pid_file.read_text())
        assert psutil.pid_exists(grandchild)
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 10) == 0
    assert proc.stdout is not None
    assert await proc.stdout.read() == b"", "stdout must carry only the URL line"
    deadline = time.monotonic() + 5
    while psutil.pid_exists(grandchild):
        try:
            if psutil.Process(grandchild).status() == psutil.STATUS_ZOMBIE:
                break
        except psutil.NoSuchProcess:
            break
        assert time.monotonic() < deadline, "server shutdown left a grandchild running"
        await asyncio.sleep(0.05)


async def test_bad_listen_url_is_a_usage_error() -> None:
    proc = await asyncio.create_subprocess_exec(
        *SERVE,
        "--listen",
        "http://nope",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    assert proc.returncode == 2 and out == b""
    assert b"unsupported --listen URL `http://nope`" in err


async def test_token_file_is_enforced(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("tok-123\n")
    proc, line = await _start("--token-file", str(token))
    try:
        with pytest.raises(Exception, match="401"):
            await ExecServerClient.connect(line.strip())
        async with await ExecServerClient.connect(line.strip(), token="tok-123") as client:
            assert client.session_id
    finally:
        proc.send_signal(signal.SIGTERM)
        await proc.wait()


async def test_stdio_mode_malformed_and_oversized_lines() -> None:
    proc = await asyncio.create_subprocess_exec(
        *SERVE,
        "--listen",
        "stdio",
        "--max-message-bytes",
        "1000",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stdin is not None and proc.stdout is not None

    async def ask(line: bytes) -> dict[str, object]:
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(line)
        await proc.stdin.drain()
        reply: dict[str, object] = json.loads(await asyncio.wait_for(proc.stdout.readline(), 10))
        return reply

    reply = await ask(b"garbage\n")
    assert reply["id"] == -1
    assert str(reply["error"]["message"]).startswith(  # type: ignore[index]
        "failed to parse JSON-RPC message from exec-server stdio"
    )
    reply = await ask(b'{"id":1,"method":"x","params":"' + b"a" * 5000 + b'"}\n')
    assert reply["id"] == -1 and "1000 bytes" in str(reply["error"])
    reply = await ask(b'\n{"id":2,"method":"initialize","params":{"clientName":"s"}}\n')
    assert reply["id"] == 2 and "sessionId" in reply["result"]  # type: ignore[operator]
    proc.stdin.close()
    assert await asyncio.wait_for(proc.wait(), 10) == 0


def test_console_script_help() -> None:
    import subprocess

    out = subprocess.run(
        [sys.executable, "-m", "exec_server", "serve", "--help"],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ},
    )
    assert "--listen" in out.stdout and "--token-file" in out.stdout


async def test_stdio_mode_with_regular_files(tmp_path: Path) -> None:
    requests = tmp_path / "in.jsonl"
    requests.write_text(
        '{"id":1,"method":"initialize","params":{"clientName":"f"}}\n'
        '{"method":"initialized","params":{}}\n'
        '{"id":2,"method":"fs/getMetadata","params":{"path":"/"}}\n'
    )
    out = tmp_path / "out.jsonl"
    with requests.open("rb") as stdin, out.open("wb") as stdout:
        proc = await asyncio.create_subprocess_exec(
            *SERVE, "--listen", "stdio", stdin=stdin, stdout=stdout
        )
        assert await asyncio.wait_for(proc.wait(), 15) == 0
    replies = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in replies] == [1, 2]
    assert replies[1]["result"]["isDirectory"] is True
