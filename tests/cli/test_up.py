"""`exec-server up`: embedded rendezvous + environment, usable as the banner says: through
the registry and the encrypted relay by default, through a cleartext harness URL with
``--remote-transport legacy``."""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from pathlib import Path

import psutil
import pytest

from exec_server.client import ClientConfig, ExecServerClient

CLI = [sys.executable, "-m", "exec_server"]


@pytest.mark.parametrize("transport", ["noise", "legacy"])
async def test_up_prints_how_to_connect_and_stops_cleanly(tmp_path: Path, transport: str) -> None:
    proc = await asyncio.create_subprocess_exec(
        *CLI,
        "up",
        "--data-dir",
        str(tmp_path / "state"),
        "--remote-transport",
        transport,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    banner: dict[str, str] = {}
    lines: list[str] = []
    try:
        while "Press Ctrl-C" not in "".join(lines[-1:]):
            line = (await asyncio.wait_for(proc.stdout.readline(), 20)).decode()
            assert line, "exec-server up exited before printing its banner"
            lines.append(line)
            key, sep, value = line.strip().partition(":  ")
            if sep:
                banner[key.strip()] = value.strip()
        pid_file = tmp_path / "pid"
        token_file = tmp_path / "state" / "token"
        if transport == "noise":
            assert "end-to-end encrypted" in lines[0]
            exports = "".join(lines)
            assert f"CODEX_EXEC_SERVER_NOISE_REGISTRY_URL='{banner['rendezvous']}'" in exports
            assert "CODEX_EXEC_SERVER_NOISE_ENVIRONMENT_ID='local'" in exports
            assert f'CODEX_EXEC_SERVER_NOISE_AUTH_TOKEN="$(cat {token_file})"' in exports
            connecting = ExecServerClient.connect(
                rendezvous=banner["rendezvous"],
                environment_id="local",
                token=token_file.read_text().strip(),
                config=ClientConfig(encryption="required"),
            )
        else:
            url = banner["harness URL"]
            assert "role=harness" in url
            connecting = ExecServerClient.connect(url)
        async with await connecting as client:
            result = await (
                await client.start_process(["/bin/sh", "-c", "echo through-up; exit 6"])
            ).collect()
            assert (result.stdout, result.exit_code) == (b"through-up\n", 6)
            await client.start_process(
                ["/bin/sh", "-c", f"echo $$ > {pid_file}; exec sleep 60"], events=False
            )
            deadline = time.monotonic() + 5
            while not pid_file.exists() or not pid_file.read_text().strip():
                assert time.monotonic() < deadline
                await asyncio.sleep(0.02)
        envs = await asyncio.create_subprocess_exec(
            *CLI,
            "envs",
            "--rendezvous",
            banner["rendezvous"],
            "--token-file",
            str(tmp_path / "state" / "token"),
            stdout=asyncio.subprocess.PIPE,
        )
        out, _ = await envs.communicate()
        assert envs.returncode == 0
        assert "local" in out.decode() and "yes" in out.decode()
    finally:
        proc.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(proc.wait(), 15) == 0
    sleeper = int(pid_file.read_text())
    deadline = time.monotonic() + 5
    while psutil.pid_exists(sleeper):
        try:
            if psutil.Process(sleeper).status() == psutil.STATUS_ZOMBIE:
                break
        except psutil.NoSuchProcess:
            break
        assert time.monotonic() < deadline, "`up` left a child process behind"
        await asyncio.sleep(0.05)
