"""The real Codex 0.171 harness (``codex exec``) completes turns on our server.

A scripted model (``codex_harness.FakeModel``) drives one turn: shell commands
through ``exec_command``, ``apply_patch`` adding and updating a file, a tty command
fed through ``write_stdin``. The harness talks to ``exec-server serve`` through a
recording proxy, so the test sees every JSON-RPC frame: it must get no error other
than -32004 for paths that do not exist, and it must use the features our
``environmentInfo`` claims (notifications only: no ``environment/info``, no
``process/read`` polling; ``fs/watchMissing``; ``environmentConfig/read``).

``workspace-write``: the 0.171 harness no longer wraps commands in its own sandbox;
it sends the policy in ``process/start.sandbox`` and expects the executor to
enforce it. The test checks from inside the turn that a write outside the
workspace is denied, one inside works, a read outside works and a network
connection fails, and that every start reports ``sandboxType: "linuxSeccomp"``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from codex_binary import CODEX_0171, require_codex_binary
from codex_harness import (
    FakeModel,
    RecordingProxy,
    apply_patch,
    exec_command,
    message,
    run_codex_exec,
    write_stdin,
)

pytestmark = [pytest.mark.interop, pytest.mark.slow]

ADD_PATCH = """*** Begin Patch
*** Add File: hello.txt
+hello from patch
*** End Patch"""
UPDATE_PATCH = """*** Begin Patch
*** Update File: hello.txt
@@
-hello from patch
+hello from second patch
*** End Patch"""


def scripted_turn() -> list[object]:
    return [
        [exec_command("call_echo", "echo hello")],
        [apply_patch("call_add", ADD_PATCH)],
        [exec_command("call_cat", "cat hello.txt")],
        [apply_patch("call_update", UPDATE_PATCH)],
        [exec_command("call_tty", "read line; echo got:$line", tty=True, yield_time_ms=1000)],
        lambda model: [
            write_stdin("call_write", model.session_id("call_tty"), "abc\n", yield_time_ms=3000)
        ],
        [message("all steps done")],
    ]


@pytest.fixture(scope="module")
def codex0171() -> str:
    return require_codex_binary(CODEX_0171)


@contextlib.asynccontextmanager
async def our_server(tmp_path: Path) -> AsyncIterator[str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "exec_server",
        "serve",
        "--listen",
        "ws://127.0.0.1:0",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
        env={**os.environ, "CODEX_HOME": str(tmp_path / "server-codex-home")},
        start_new_session=True,
    )
    assert proc.stdout is not None
    try:
        line = await asyncio.wait_for(proc.stdout.readline(), 30)
        yield line.decode().strip()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), 10)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()


async def test_full_turn_in_danger_full_access(codex0171: str, tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    async with (
        our_server(tmp_path) as server_url,
        RecordingProxy(server_url) as proxy,
        FakeModel(scripted_turn()) as model,
    ):
        run = await run_codex_exec(
            codex0171,
            model=model,
            exec_server_url=proxy.url,
            workdir=work,
            codex_home=tmp_path / "codex-home",
            sandbox="danger-full-access",
        )
    report = f"stdout:\n{run.stdout[-3000:]}\nstderr:\n{run.stderr[-3000:]}"
    assert run.returncode == 0, report
    assert "all steps done" in run.stdout, report
    # Each tool call did what it says, on our server.
    assert "hello" in (model.tool_output("call_echo") or ""), report
    assert "hello from patch" in (model.tool_output("call_cat") or ""), report
    assert (work / "hello.txt").read_text() == "hello from second patch\n"
    assert "got:abc" in (model.tool_output("call_write") or ""), report
    # No JSON-RPC error but "not found" for the paths the harness probes.
    errors = proxy.errors()
    assert all(error["code"] == -32004 for _, error in errors), errors
    methods = proxy.methods()
    # Every capability we claim is used, and the fallbacks for missing ones are not.
    assert "environment/info" not in methods and "process/read" not in methods, methods
    assert "fs/watchMissing" in methods and "environmentConfig/read" in methods, methods
    starts = proxy.requests("process/start")
    assert starts and all(proxy.result_of(s).get("sandboxType") == "none" for s in starts)
    assert all(s["params"]["cwd"].startswith("file:///") for s in starts)
    tty_start = [s for s in starts if s["params"]["tty"]]
    assert tty_start, starts
    writes = proxy.requests("process/write")
    assert writes and all(w["params"].get("writeId") for w in writes), writes


async def test_workspace_write_is_enforced(codex0171: str, tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    # Outside every writable root of workspace-write (which makes /tmp writable).
    outside = Path(tempfile.mkdtemp(prefix="exec-server-harness-", dir="/var/tmp"))
    (outside / "readable.txt").write_text("readable outside\n")
    listener = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    connect = (
        f"{sys.executable} -c 'import socket; "
        f'socket.create_connection(("127.0.0.1", {port}), timeout=5)\' '
        "&& echo net=open || echo net=refused"
    )
    steps: list[object] = [
        [exec_command("call_outside", f"echo x > {outside}/denied.txt; echo rc=$?")],
        [exec_command("call_inside", "echo y > inside.txt && cat inside.txt")],
        [exec_command("call_read", f"cat {outside}/readable.txt")],
        [exec_command("call_net", connect)],
        [apply_patch("call_add", ADD_PATCH)],
        [message("done")],
    ]
    try:
        async with (
            our_server(tmp_path) as server_url,
            RecordingProxy(server_url) as proxy,
            FakeModel(steps) as model,
        ):
            run = await run_codex_exec(
                codex0171,
                model=model,
                exec_server_url=proxy.url,
                workdir=work,
                codex_home=tmp_path / "codex-home",
                sandbox="workspace-write",
            )
        report = f"stdout:\n{run.stdout[-3000:]}\nstderr:\n{run.stderr[-3000:]}"
        starts = proxy.requests("process/start")
        assert len(starts) == 4, report
        for start in starts:
            assert start["params"]["sandbox"] is not None, start
            assert proxy.result_of(start).get("sandboxType") == "linuxSeccomp", start
        outputs = {
            call: model.tool_output(call) or ""
            for call in ("call_outside", "call_inside", "call_read", "call_net")
        }
        assert "rc=1" in outputs["call_outside"], outputs
        assert not (outside / "denied.txt").exists(), report
        assert (work / "inside.txt").read_text() == "y\n", report
        assert "readable outside" in outputs["call_read"], outputs
        assert "net=refused" in outputs["call_net"], outputs
        # The harness's own file edits carry the sandbox too: inside they work.
        assert (work / "hello.txt").read_text() == "hello from patch\n", report
        assert all(code == -32004 for code in (e["code"] for _, e in proxy.errors())), (
            proxy.errors()
        )
    finally:
        listener.close()
        await listener.wait_closed()
        shutil.rmtree(outside, ignore_errors=True)


async def test_harness_recovers_a_dropped_connection_by_resuming(
    codex0171: str, tmp_path: Path
) -> None:
    """The connection dies right after a command started: the 0.171 harness reconnects,
    resumes its session (initialize with resumeSessionId) and the turn completes."""
    work = tmp_path / "work"
    work.mkdir()
    steps: list[object] = [
        [exec_command("call_slow", "sleep 1; echo slow-done")],
        [exec_command("call_after", "echo after-recovery")],
        [message("recovered")],
    ]

    def after_first_start(direction: str, frame: object) -> bool:
        return (
            direction == "s2c"
            and isinstance(frame, dict)
            and isinstance(frame.get("result"), dict)
            and "sandboxType" in frame["result"]
        )

    async with (
        our_server(tmp_path) as server_url,
        RecordingProxy(server_url, drop_after=after_first_start) as proxy,
        FakeModel(steps) as model,
    ):
        run = await run_codex_exec(
            codex0171,
            model=model,
            exec_server_url=proxy.url,
            workdir=work,
            codex_home=tmp_path / "codex-home",
            sandbox="danger-full-access",
        )
    report = f"stdout:\n{run.stdout[-3000:]}\nstderr:\n{run.stderr[-3000:]}\n{proxy.methods()}"
    assert proxy.connections >= 2, report
    inits = proxy.initializes()
    assert inits[0]["resumeSessionId"] is None, inits
    first_session = proxy.result_of(proxy.requests("initialize")[0])["sessionId"]
    assert any(i.get("resumeSessionId") == first_session for i in inits[1:]), inits
    assert run.returncode == 0 and "recovered" in run.stdout, report
    assert "after-recovery" in (model.tool_output("call_after") or ""), report
    # The command kept running while no one was attached; its output was not lost.
    assert "slow-done" in (model.tool_output("call_slow") or ""), report
