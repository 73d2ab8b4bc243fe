"""Session recovery: after a lost connection, redial, resume, and splice what was missed.

The client redials with its dialer, resumes its session with
``initialize{resumeSessionId}`` and then replays each open process's missed events
from the server's retention (``process/read``). Attempts follow
:func:`~exec_server.transport.reconnect.backoff` (the first is immediate) until
``ClientConfig.recovery_timeout_s`` passes; an error that is not transient (an
expired session, a refused token) ends it at once, and so does the rendezvous
giving the environment up (its grace ended: nothing would answer). Giving up fails every handle and
makes every later call raise :class:`TransportClosed` (or :class:`SessionExpired`).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from msgspec import UnsetType

from ..protocol import messages as m
from ..transport.reconnect import backoff, is_transient
from .errors import ExecServerError, SessionExpired, TransportClosed
from .events import ClosedEvent, ExitedEvent, OutputEvent

if TYPE_CHECKING:
    from .client import ExecServerClient
    from .process import ProcessHandle

#: Delays between attempts after the first (which is immediate).
RECOVERY_BACKOFF_INITIAL_S = 0.1
RECOVERY_BACKOFF_MAX_S = 2.0


async def recover(client: ExecServerClient, message: str) -> None:
    """Resume ``client``'s session after its connection ended with ``message``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + client.config.recovery_timeout_s
    delays = backoff(RECOVERY_BACKOFF_INITIAL_S, RECOVERY_BACKOFF_MAX_S)
    last_error = message
    while True:
        try:
            async with asyncio.timeout_at(deadline):
                await client._resume()
        except TimeoutError:
            break
        except Exception as exc:
            if not is_transient(exc):
                client._give_up(_with_context(exc, message))
                return
            if (gone := client._environment_gone()) is not None:
                client._give_up(TransportClosed(f"{message}; {gone}"))
                return
            last_error = str(exc)
        else:
            return
        delay = next(delays)
        if loop.time() + delay >= deadline:
            break
        await asyncio.sleep(delay)
    client._give_up(TransportClosed(f"{message}; recovery failed: {last_error}"))


async def splice(client: ExecServerClient, handle: ProcessHandle) -> None:
    """Replay what a handle missed while disconnected, from the server's retention.

    Output chunks come back with their seqs; the seqs in between that no chunk
    covers are the exit and close events (exited first, closed last).
    """
    base = after = handle.last_seq
    seen: set[int] = set()
    while not handle.done:
        try:
            res = await client._rpc.call(
                m.PROCESS_READ,
                m.ProcessReadParams(handle.process_id, after, None, 0),
                m.ProcessReadResult,
            )
        except ExecServerError as exc:
            handle._fail(f"process {handle.process_id} could not be recovered: {exc}")
            client._forget(handle)
            return
        first = res.first_retained_seq
        if not isinstance(first, UnsetType) and first > after + 1:
            handle._fail(
                f"output of process {handle.process_id} was lost while disconnected: "
                f"seq {after + 1} to {first - 1} exceeded the server's retention"
            )
            client._forget(handle)
            return
        for chunk in res.chunks:
            seen.add(chunk.seq)
            handle._accept(chunk.seq, OutputEvent(chunk.seq, chunk.stream, chunk.chunk))
        if res.chunks:
            after = res.next_seq - 1
            continue
        missing = [seq for seq in range(base + 1, res.next_seq) if seq not in seen]
        if res.exited and missing and res.exit_code is not None:
            handle._accept(missing[0], ExitedEvent(missing[0], res.exit_code))
        if res.closed and len(missing) > 1:
            handle._accept(missing[-1], ClosedEvent(missing[-1]))
        return


def again(error: ExecServerError) -> ExecServerError:
    """A fresh exception of the same kind for each call after giving up."""
    if isinstance(error, SessionExpired):
        return SessionExpired(str(error), session_id=error.session_id)
    return TransportClosed(str(error))


def _with_context(exc: Exception, message: str) -> ExecServerError:
    if isinstance(exc, SessionExpired):
        return SessionExpired(f"{message}; {exc}", session_id=exc.session_id)
    return TransportClosed(f"{message}; recovery failed: {exc}")
