"""Every task has an owner: cancelling a server connection or an SDK call mid-operation
leaves no task, child process or file descriptor behind once its owners are closed.

Each scenario runs once to warm up (first uses create lasting state, such as the
default executor's threads), then again between two measurements.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Awaitable, Callable
from pathlib import Path

import psutil
from memory_channel import memory_channel_pair

from exec_server.client import ExecServerClient
from exec_server.environment.server import ExecServer, ServerConfig
from exec_server.environment.session import SessionConfig
from exec_server.protocol.jsonrpc import encode_request

#: Generous: the machine is shared and often loaded.
SETTLE_S = 30.0
ENV = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}


def _open_fds() -> set[int]:
    return {int(name) for name in os.listdir("/proc/self/fd")}


def _children() -> list[psutil.Process]:
    return [child for child in psutil.Process().children(recursive=True) if child.is_running()]


def _others(before: set[asyncio.Task[object]]) -> set[asyncio.Task[object]]:
    return {
        task
        for task in asyncio.all_tasks()
        if task is not asyncio.current_task() and task not in before and not task.done()
    }


async def _settled(before: set[asyncio.Task[object]]) -> set[asyncio.Task[object]]:
    """The tasks still pending beyond ``before``, after letting the loop run a little."""
    for _ in range(100):
        if not _others(before):
            break
        await asyncio.sleep(0.01)
    return _others(before)


async def _quiet(check: Callable[[], bool]) -> None:
    """Let the loop run until ``check()`` holds (transports close their fds in
    callbacks), for at most ``SETTLE_S``; the caller then asserts the details."""
    with contextlib.suppress(TimeoutError):
        await _eventually(check)


def _coro_names(tasks: set[asyncio.Task[object]]) -> set[str]:
    return {task.get_coro().__qualname__ for task in tasks}  # type: ignore[union-attr]


async def _check_clean(scenario: Callable[[], Awaitable[None]]) -> None:
    await scenario()  # warm-up
    before_tasks = set(asyncio.all_tasks())
    before_fds = _open_fds()
    await scenario()
    await _quiet(
        lambda: not _others(before_tasks) and not _children() and _open_fds() <= before_fds
    )
    assert not _others(before_tasks), _coro_names(_others(before_tasks))
    assert _children() == []
    assert _open_fds() <= before_fds, sorted(_open_fds() - before_fds)


async def _eventually(check: Callable[[], bool]) -> None:
    async with asyncio.timeout(SETTLE_S):
        while True:
            if check():
                return
            await asyncio.sleep(0.02)


def _pid_in(pid_file: Path) -> int | None:
    try:
        text = pid_file.read_text().strip()
    except FileNotFoundError:
        return None
    return int(text) if text else None


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


async def test_cancelling_a_connection_mid_long_poll() -> None:
    """A parked ``process/read`` ends with its connection: the read it waits on is
    cancelled too, not left waiting for its ``waitMs`` (the process manager's own
    tasks are the only ones that stay until the server closes)."""

    async def scenario() -> None:
        # A long detached lifetime: the session must not expire during the checks.
        server = ExecServer(ServerConfig(session=SessionConfig(detached_ttl_s=600)))
        client_side, server_side = memory_channel_pair()
        before = set(asyncio.all_tasks())
        serving = asyncio.get_running_loop().create_task(server.serve_channel(server_side))
        try:
            await client_side.send(encode_request(1, "initialize", {"clientName": "t"}))
            await asyncio.wait_for(client_side.receive(), SETTLE_S)
            await client_side.send(b'{"method":"initialized","params":{}}')
            start = {
                "processId": "p",
                "argv": ["sleep", "600"],
                "cwd": "/",
                "env": ENV,
                "tty": False,
            }
            await client_side.send(encode_request(2, "process/start", start))
            started = await asyncio.wait_for(client_side.receive(), SETTLE_S)
            assert b'"result"' in started, started
            read = {"processId": "p", "afterSeq": 0, "waitMs": 600_000}
            await client_side.send(encode_request(3, "process/read", read))
            await asyncio.sleep(0.05)  # the read is parked
            serving.cancel()
            await asyncio.gather(serving, return_exceptions=True)
            left = await _settled(before)
            # Only the sleeping process's notification sender, owned by the session.
            assert _coro_names(left) == {"NotificationOutbox._run"}, _coro_names(left)
        finally:
            serving.cancel()
            await asyncio.gather(serving, return_exceptions=True)
            await server.close()

    await _check_clean(scenario)


async def test_cancelling_an_sdk_run_mid_process(tmp_path: Path) -> None:
    """``client.run`` cancelled while its process runs terminates the process; closing
    the client and the server then leaves nothing behind."""
    pid_file = tmp_path / "pid"

    async def scenario() -> None:
        pid_file.unlink(missing_ok=True)
        server = ExecServer()
        client_side, server_side = memory_channel_pair()
        serving = asyncio.get_running_loop().create_task(server.serve_channel(server_side))
        try:
            async with ExecServerClient.over_channel(client_side) as client:
                script = f"echo $$ > {pid_file}; exec sleep 600"
                run = asyncio.get_running_loop().create_task(
                    client.run(["/bin/sh", "-c", script], env=ENV, cwd="/")
                )
                await _eventually(lambda: _pid_in(pid_file) is not None)
                pid = _pid_in(pid_file)
                assert pid is not None
                run.cancel()
                await asyncio.gather(run, return_exceptions=True)
                assert run.cancelled()
                # Terminated by the cancelled run, before any session teardown.
                await _eventually(lambda: _gone(pid))
        finally:
            await asyncio.wait_for(serving, SETTLE_S)
            await server.close()

    await _check_clean(scenario)


async def test_stopping_a_websocket_server_under_a_live_client(tmp_path: Path) -> None:
    """The server stops while an SDK client streams a process over a websocket: the
    server reaps the process, the client's recovery gives up or is cancelled on close,
    and nothing is left of either."""
    pid_file = tmp_path / "pid"

    async def scenario() -> None:
        pid_file.unlink(missing_ok=True)
        server = ExecServer()
        url = await server.start_websocket("127.0.0.1", 0)
        try:
            async with ExecServerClient.connect(url) as client:
                script = f"echo $$ > {pid_file}; exec sleep 600"
                await client.start_process(["/bin/sh", "-c", script], env=ENV, cwd="/")
                await _eventually(lambda: _pid_in(pid_file) is not None)
                pid = _pid_in(pid_file)
                assert pid is not None
                await server.close()  # mid-stream
                await _eventually(lambda: _gone(pid))
        finally:
            await server.close()

    await _check_clean(scenario)
