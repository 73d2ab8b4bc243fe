"""How the CLI fails: a message that names what failed, a hint where there is one,
and an exit code a script can branch on (ssh's convention where ssh has one).

Exit codes of ``run`` (and ``shell``):

====  ================================================================================
N     the remote command's own exit code
126   the command was found on the environment but could not be executed
127   the command was not found on the environment
124   timed out: ``--timeout`` passed, or the server did not answer in time
130   interrupted by Ctrl-C
255   could not connect, the connection was lost, or the remote command died of a signal
1     any other error (the message says which); 2 for usage errors
====  ================================================================================

The wire stays Codex's: the server's error messages are passed on unchanged, and the
context (the command, the directory, the path, the target) is added here.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from collections.abc import Coroutine
from typing import IO, Any, NoReturn, TypeVar

import click

from ..client import (
    ConnectError,
    ExecServerError,
    ProcessFailed,
    RegistryError,
    RequestTimeout,
    ServerError,
    SessionExpired,
    TransportClosed,
)

T = TypeVar("T")

EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_TIMEOUT = 124
EXIT_CANNOT_EXECUTE = 126
EXIT_NOT_FOUND = 127
EXIT_INTERRUPTED = 130
EXIT_CONNECTION = 255
#: The remote command died of a signal (Codex reports no signal number): as ssh.
EXIT_SIGNALED = 255

SERVE_HINT = "is an exec-server running there? (`exec-server serve`, or `exec-server up`)"


class CliError(click.ClickException):
    """A failure reported as ``exec-server: <message>`` plus ``hint: <hint>``."""

    def __init__(self, message: str, *, hint: str | None = None, exit_code: int = 1) -> None:
        super().__init__(message)
        self.hint = hint
        # click reads the exit code from the instance; its stubs call it a ClassVar.
        vars(self)["exit_code"] = exit_code

    def show(self, file: IO[Any] | None = None) -> None:
        click.echo(f"exec-server: {self.message}", err=True)
        if self.hint:
            click.echo(f"hint: {self.hint}", err=True)


def exit_now(code: int) -> NoReturn:
    """Exit with ``code`` once a one-shot command is done, skipping the interpreter's
    teardown (about 0.03 CPU-s of freeing modules here, a fifth of a ``run``).

    Only for commands that have finished their work: asyncio's loop is closed, files
    are closed, and stdout/stderr are flushed here.
    """
    for stream in (sys.stdout, sys.stderr):
        # A closed pipe: nothing more can be said there.
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    os._exit(code)


def run_async(coro: Coroutine[Any, Any, T], where: str) -> T:
    """Run a command's coroutine; SDK errors become :class:`CliError` naming ``where``
    (the target, as :meth:`Target.describe` words it)."""
    try:
        return asyncio.run(coro)
    except ExecServerError as exc:
        raise describe(exc, where) from None


def describe(exc: ExecServerError, where: str) -> CliError:
    """The CLI's wording and exit code for an SDK error."""
    if isinstance(exc, ConnectError):
        return CliError(f"cannot connect to {where}: {exc}", hint=_connect_hint(exc), exit_code=255)
    if isinstance(exc, SessionExpired | TransportClosed | ProcessFailed):
        return CliError(f"lost the connection to {where}: {exc}", exit_code=EXIT_CONNECTION)
    if isinstance(exc, RequestTimeout):
        return CliError(f"{where}: {exc}", exit_code=EXIT_TIMEOUT)
    if isinstance(exc, RegistryError):
        exit_code = EXIT_CONNECTION if exc.status == 0 else EXIT_FAILURE
        hint = "check --token-file (or EXEC_SERVER_RENDEZVOUS_TOKEN)" if exc.unauthorized else None
        return CliError(str(exc), hint=hint, exit_code=exit_code)
    if isinstance(exc, ServerError):
        what = f" `{exc.method}`" if exc.method else ""
        return CliError(f"{where} refused{what}: {exc}")
    return CliError(f"{where}: {exc}")


def _connect_hint(exc: ConnectError) -> str | None:
    if exc.status in (401, 403):
        return (
            "the server wants a token: set CODEX_EXEC_SERVER_CONNECTION_TOKEN (a local "
            "server), or check --token-file / EXEC_SERVER_RENDEZVOUS_TOKEN (a rendezvous)"
        )
    if exc.status is None and exc.transient:
        return SERVE_HINT
    return None
