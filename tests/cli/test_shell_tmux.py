"""`exec-server shell` in a real terminal: tmux types, resizes and exits."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(
    shutil.which("tmux") is None and not os.environ.get("EXEC_SERVER_REQUIRE_INTEROP"),
    reason="tmux is not installed (CI installs it; apt-get install tmux)",
)


@pytest.fixture
async def server_url() -> AsyncIterator[str]:
    env = {**os.environ, "SHELL": "/bin/sh", "PS1": "remote$ "}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "exec_server", "serve", stdout=asyncio.subprocess.PIPE, env=env
    )
    assert proc.stdout is not None
    url = (await asyncio.wait_for(proc.stdout.readline(), 15)).decode().strip()
    yield url
    proc.send_signal(signal.SIGTERM)
    await proc.wait()


def _tmux(*args: str) -> str:
    return subprocess.run(
        ["tmux", *args], check=True, capture_output=True, text=True, timeout=10
    ).stdout


async def _wait_for_screen(session: str, needle: str, timeout: float = 10.0) -> str:
    deadline = time.monotonic() + timeout
    screen = ""
    while time.monotonic() < deadline:
        screen = _tmux("capture-pane", "-p", "-t", session)
        if needle in screen:
            return screen
        await asyncio.sleep(0.1)
    raise AssertionError(f"{needle!r} never appeared on the terminal:\n{screen}")


async def test_shell_types_resizes_exits_and_restores_the_terminal(
    server_url: str, tmp_path: Path
) -> None:
    session = f"exec-shell-{os.getpid()}"
    code_file, before, after = tmp_path / "code", tmp_path / "before", tmp_path / "after"
    cli = f"{sys.executable} -m exec_server shell --url {server_url}"
    script = (
        f"stty -g > {before}; {cli}; echo $? > {code_file}; stty -g > {after}; "
        "echo local-shell-back; sleep 30"
    )
    _tmux("new-session", "-d", "-s", session, "-x", "100", "-y", "30", "sh", "-c", script)
    try:
        await _wait_for_screen(session, "#")  # the remote root shell's prompt
        _tmux("send-keys", "-t", session, "echo hello-$((40+2))", "Enter")
        await _wait_for_screen(session, "hello-42")
        _tmux("send-keys", "-t", session, "tty; stty size", "Enter")
        await _wait_for_screen(session, "30 100")
        _tmux("resize-window", "-t", session, "-x", "120", "-y", "40")
        await asyncio.sleep(0.5)
        _tmux("send-keys", "-t", session, "stty size", "Enter")
        await _wait_for_screen(session, "40 120")
        _tmux("send-keys", "-t", session, "exit 5", "Enter")
        await _wait_for_screen(session, "local-shell-back")
        assert code_file.read_text().strip() == "5"
        assert before.read_text() == after.read_text(), "terminal settings were not restored"
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True)
