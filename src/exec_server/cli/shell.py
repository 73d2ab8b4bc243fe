"""The terminal side of ``exec-server shell``: raw mode, resizes, and restoring it."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import termios
import tty

from ..client import ExitedEvent, FailedEvent, OutputEvent, ProcessFailed
from .errors import EXIT_SIGNALED
from .run_cmd import start_or_explain
from .target import Target

#: Bytes read from the terminal per write to the shell.
TERMINAL_READ_BYTES = 65536


async def interactive_shell(target: Target, cwd: str | None) -> int:
    """The environment's login shell on a PTY sized like ours; its exit code."""
    # No relay status lines: they would land in the middle of a raw-mode screen.
    async with target.connect(relay_status=False) as client:
        info = await client.environment_info()
        size = os.get_terminal_size(sys.stdin.fileno())
        proc = await start_or_explain(
            client,
            [info.shell_path or "/bin/sh", "-l"],
            cwd=cwd or info.home or info.default_cwd,
            env={"TERM": os.environ.get("TERM", "xterm-256color")},
            tty=True,
            rows=size.lines,
            cols=size.columns,
        )
        loop = asyncio.get_running_loop()
        stdin_fd = sys.stdin.fileno()
        saved = termios.tcgetattr(stdin_fd)
        queue: asyncio.Queue[bytes] = asyncio.Queue()

        def on_stdin() -> None:
            try:
                data = os.read(stdin_fd, TERMINAL_READ_BYTES)
            except OSError:
                data = b""
            queue.put_nowait(data)

        resizes: set[asyncio.Task[None]] = set()

        def on_winch() -> None:
            cols, rows = os.get_terminal_size(stdin_fd)
            task = loop.create_task(proc.resize(rows, cols))
            resizes.add(task)
            task.add_done_callback(resizes.discard)

        async def forward_input() -> None:
            while data := await queue.get():
                if await proc.write(data) != "accepted":
                    return

        exit_code: int | None = None
        try:
            tty.setraw(stdin_fd)
            loop.add_reader(stdin_fd, on_stdin)
            loop.add_signal_handler(signal.SIGWINCH, on_winch)
            forwarder = loop.create_task(forward_input())
            try:
                async for event in proc:
                    if isinstance(event, OutputEvent):
                        os.write(sys.stdout.fileno(), event.data)
                    elif isinstance(event, ExitedEvent):
                        exit_code = event.exit_code
                    elif isinstance(event, FailedEvent):
                        raise ProcessFailed(event.message, process_id=proc.process_id)
            finally:
                forwarder.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await forwarder
        finally:
            # Restore the terminal on every exit path, errors and Ctrl-C included.
            loop.remove_reader(stdin_fd)
            loop.remove_signal_handler(signal.SIGWINCH)
            termios.tcsetattr(stdin_fd, termios.TCSADRAIN, saved)
            for task in resizes:
                task.cancel()
            await asyncio.gather(*resizes, return_exceptions=True)
        if exit_code is None or exit_code < 0:
            return EXIT_SIGNALED
        return exit_code
