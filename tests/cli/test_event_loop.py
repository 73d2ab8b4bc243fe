"""The event loop of the long-running commands: uvloop by default, stdlib on request."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import pytest
import uvloop

from exec_server.cli import event_loop
from exec_server.client import ExecServerClient


def test_chosen_loop_defaults_to_uvloop_and_refuses_unknown_names() -> None:
    assert event_loop.chosen_loop({}) == "uvloop"
    assert event_loop.chosen_loop({event_loop.EVENT_LOOP_ENV: ""}) == "uvloop"
    assert event_loop.chosen_loop({event_loop.EVENT_LOOP_ENV: "uvloop"}) == "uvloop"
    assert event_loop.chosen_loop({event_loop.EVENT_LOOP_ENV: " asyncio "}) == "asyncio"
    with pytest.raises(event_loop.EventLoopChoiceError, match="'trio' is not a known"):
        event_loop.chosen_loop({event_loop.EVENT_LOOP_ENV: "trio"})


async def _loop_type() -> type[asyncio.AbstractEventLoop]:
    await asyncio.sleep(0)
    return type(asyncio.get_running_loop())


def test_run_uses_the_named_loop() -> None:
    assert event_loop.run(_loop_type(), loop="uvloop") is uvloop.Loop
    assert not issubclass(event_loop.run(_loop_type(), loop="asyncio"), uvloop.Loop)


def _maps_uvloop(pid: int) -> bool:
    return "uvloop" in Path(f"/proc/{pid}/maps").read_text()


@pytest.mark.parametrize("choice", ["", "asyncio"])
async def test_serve_runs_on_the_chosen_loop(choice: str) -> None:
    env = {**os.environ, event_loop.EVENT_LOOP_ENV: choice}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "exec_server", "serve",
        stdout=asyncio.subprocess.PIPE, env=env,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        url = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode().strip()
        async with await ExecServerClient.connect(url) as client:
            result = await client.run(["/bin/sh", "-c", "echo on-the-loop"], timeout=30)
        assert result.stdout == b"on-the-loop\n"
        assert result.exit_code == 0
        # The loop is the one asked for: uvloop's extension is mapped only when it runs.
        assert _maps_uvloop(proc.pid) is (choice == "")
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 15) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_serve_refuses_an_unknown_loop_name() -> None:
    env = {**os.environ, event_loop.EVENT_LOOP_ENV: "trio"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "exec_server", "serve",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env,
    )  # fmt: skip
    stdout, stderr = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 1
    assert stdout == b""
    assert b"EXEC_SERVER_EVENT_LOOP='trio' is not a known event loop" in stderr
