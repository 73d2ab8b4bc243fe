"""``exec-server run`` and ``exec-server shell``: a command or a shell on the environment.

Both start the process with the environment's own working directory and environment
(unless ``--cwd``/``--env`` say otherwise), stream its output live and exit with its
exit code; the exit codes are listed in :mod:`exec_server.cli.errors`. When the
server cannot start the command, the error says whether the command or the working
directory is missing, after asking the environment (the server's own message, which
is Codex's, is kept as the cause).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import errno
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

import click
import msgspec

from ..client import (
    ExecServerClient,
    ExecServerError,
    FailedEvent,
    OutputEvent,
    ProcessFailed,
    ProcessHandle,
    ServerError,
    local_path,
)
from ..protocol import messages as m
from ..protocol.errors import NOT_FOUND
from .errors import (
    EXIT_CANNOT_EXECUTE,
    EXIT_INTERRUPTED,
    EXIT_NOT_FOUND,
    EXIT_SIGNALED,
    EXIT_TIMEOUT,
    CliError,
    exit_now,
    run_async,
)
from .target import Target, target_options

#: Bytes read from local stdin per write to the process.
STDIN_CHUNK_BYTES = 64 * 1024


@click.command(context_settings={"ignore_unknown_options": True})
@target_options
@click.option("--cwd", help="Working directory on the environment (default: the environment's).")
@click.option("--env", "env_pairs", multiple=True, metavar="K=V", help="Set a variable.")
@click.option("--tty", "use_tty", is_flag=True, help="Run under a PTY.")
@click.option("-i", "--interactive", is_flag=True, help="Forward local stdin.")
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    metavar="SECONDS",
    help="Terminate the command after this long and exit with 124.",
)
@click.argument("argv", nargs=-1, required=True, type=click.UNPROCESSED)
def run(
    url: str | None,
    rendezvous: str | None,
    environment_id: str | None,
    token_file: Path | None,
    cwd: str | None,
    env_pairs: tuple[str, ...],
    use_tty: bool,
    interactive: bool,
    timeout: float | None,
    argv: tuple[str, ...],
) -> None:
    """Run a command on the environment: live output, its exit code as ours.

    Ctrl-C is forwarded as an interrupt; a second Ctrl-C terminates the process.

    \b
    Exit codes: the command's own; 127 command not found, 126 cannot execute,
    124 timed out, 130 interrupted, 255 connection failed or lost, or the command
    died of a signal (as ssh); 1 other errors, 2 usage errors.
    """
    target = Target.resolve(url, rendezvous, environment_id, token_file)
    env = {}
    for pair in env_pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise click.UsageError(f"--env expects K=V, got {pair!r}")
        env[key] = value
    command = _Command(list(argv), cwd, env, use_tty, interactive)
    exit_now(run_async(_run(target, command, timeout), target.describe()))


class _Command(msgspec.Struct, frozen=True):
    argv: list[str]
    cwd: str | None
    env: dict[str, str]
    tty: bool
    stdin: bool


async def start_or_explain(
    client: ExecServerClient, argv: list[str], *, cwd: str | None, **kwargs: Any
) -> ProcessHandle:
    """``client.start_process``, turning a refusal into an error that says what is wrong."""
    try:
        return await client.start_process(argv, cwd=cwd, **kwargs)
    except ServerError as exc:
        if exc.method != m.PROCESS_START:
            raise
        raise await _explain_start_failure(client, argv, cwd, exc) from None


async def _explain_start_failure(
    client: ExecServerClient, argv: list[str], cwd: str | None, exc: ServerError
) -> CliError:
    if cwd is None:
        cwd = (await client.environment_info()).default_cwd
    where = local_path(cwd)
    code = exc.os_errno
    if code in (errno.ENOENT, errno.ENOTDIR, errno.EACCES):
        problem = await _directory_problem(client, cwd)
        if problem is not None:
            return CliError(
                f"cannot run `{argv[0]}`: the working directory {where} {problem} "
                "on the environment",
                hint="pass --cwd with an existing directory, or leave it out to use the "
                "environment's own",
            )
    if code == errno.ENOENT:
        if "/" in argv[0]:
            return CliError(f"{argv[0]}: no such file on the environment", exit_code=EXIT_NOT_FOUND)
        return CliError(
            f"{argv[0]}: command not found on the environment's PATH",
            hint="check the name, or give the command's full path",
            exit_code=EXIT_NOT_FOUND,
        )
    if code in (errno.EACCES, errno.ENOEXEC, errno.EISDIR):
        return CliError(
            f"{argv[0]}: cannot execute on the environment: {exc.message}",
            hint="is it an executable file?",
            exit_code=EXIT_CANNOT_EXECUTE,
        )
    return CliError(f"cannot run `{argv[0]}` in {where}: {exc}")


async def _directory_problem(client: ExecServerClient, path: str) -> str | None:
    """Why ``path`` cannot be a working directory, or ``None`` if it can (or we cannot
    tell)."""
    try:
        meta = await client.fs.get_metadata(path)
    except ServerError as exc:
        return "does not exist" if exc.code == NOT_FOUND else None
    return None if meta.is_directory else "is not a directory"


async def _run(target: Target, command: _Command, timeout: float | None) -> int:
    async with target.connect() as client:
        proc = await start_or_explain(
            client,
            command.argv,
            cwd=command.cwd,
            env=command.env,
            tty=command.tty,
            pipe_stdin=command.stdin and not command.tty,
        )
        loop = asyncio.get_running_loop()
        interrupts = 0
        actions: set[asyncio.Task[Any]] = set()

        def on_sigint() -> None:
            nonlocal interrupts
            interrupts += 1
            action = proc.signal("interrupt") if interrupts == 1 else proc.terminate()
            task = loop.create_task(action)
            actions.add(task)
            task.add_done_callback(actions.discard)

        loop.add_signal_handler(signal.SIGINT, on_sigint)
        pump = loop.create_task(_pump_stdin(proc, close=not command.tty)) if command.stdin else None
        try:
            async with asyncio.timeout(timeout) as deadline:
                exit_code = await _stream(proc)
        except TimeoutError:
            if not deadline.expired():
                raise
            with contextlib.suppress(ExecServerError):
                await proc.terminate()
            click.echo(
                f"exec-server: `{command.argv[0]}` timed out after {timeout:g}s; terminated it",
                err=True,
            )
            return EXIT_TIMEOUT
        finally:
            loop.remove_signal_handler(signal.SIGINT)
            for task in (pump, *actions):
                if task is not None:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError, ExecServerError):
                        await task
        if exit_code is None or exit_code < 0:
            return EXIT_INTERRUPTED if interrupts else EXIT_SIGNALED
        return exit_code


async def _stream(proc: ProcessHandle) -> int | None:
    """Copy the process's output to ours until it closes; its exit code."""
    stdout, stderr = sys.stdout.buffer, sys.stderr.buffer
    async for event in proc:
        if isinstance(event, OutputEvent):
            out = stderr if event.stream == "stderr" else stdout
            out.write(event.data)
            out.flush()
        elif isinstance(event, FailedEvent):
            raise ProcessFailed(event.message, process_id=proc.process_id)
    return proc.exit_code


async def _pump_stdin(proc: ProcessHandle, *, close: bool) -> None:
    """Copy local stdin to the process; EOF closes its stdin (pipes only).

    A daemon thread reads stdin (it may be a regular file, which the event loop cannot
    watch): when the command ends first, the thread is left blocked in ``read`` and
    does not hold up the exit, as an executor thread would.
    """
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[bytes] = asyncio.Queue(maxsize=4)
    fd = sys.stdin.fileno()

    def read_stdin() -> None:
        while True:
            try:
                data = os.read(fd, STDIN_CHUNK_BYTES)
            except OSError:
                data = b""
            try:
                asyncio.run_coroutine_threadsafe(queue.put(data), loop).result()
            except (RuntimeError, concurrent.futures.CancelledError):
                return  # the loop is gone
            if not data:
                return

    threading.Thread(target=read_stdin, name="exec-server-stdin", daemon=True).start()
    while True:
        data = await queue.get()
        if not data:
            if close:
                await proc.close_stdin()
            return
        if await proc.write(data) != "accepted":
            return


# --- shell ------------------------------------------------------------------------------


@click.command()
@target_options
@click.option("--cwd", help="Starting directory (default: the environment user's home).")
def shell(
    url: str | None,
    rendezvous: str | None,
    environment_id: str | None,
    token_file: Path | None,
    cwd: str | None,
) -> None:
    """An interactive shell on the environment, like ssh."""
    if not sys.stdin.isatty() or not sys.stdout.isatty():
        raise click.UsageError("exec-server shell needs a terminal (use `run` for scripts)")
    target = Target.resolve(url, rendezvous, environment_id, token_file)
    from .shell import interactive_shell

    exit_now(run_async(interactive_shell(target, cwd), target.describe()))
