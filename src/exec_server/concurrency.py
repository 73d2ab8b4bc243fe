"""Structured concurrency for the servers' main functions: one helper, one TaskGroup.

:func:`run_until` is the "run these until a stop signal or until one of them ends"
block that the ``serve``, ``up`` and ``rendezvous`` commands, the rendezvous's socket
handlers and the relay adapter would otherwise write out by hand (start tasks, wait for
the first, cancel the rest, suppress their cancellation). Every task it starts is owned
by its TaskGroup: when it returns, nothing it started is still running.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

__all__ = ["run_until"]


class _Finished(Exception):
    """Internal: one coroutine (or the stop event) ended; the group winds down."""


async def run_until(stop: asyncio.Event | None, *coros: Coroutine[Any, Any, object]) -> None:
    """Run ``coros`` concurrently until ``stop`` is set (if given) or any of them returns;
    then cancel the others and wait for them.

    An exception from any coroutine cancels the rest and is raised: the exception
    itself when it is the only one, an ``ExceptionGroup`` otherwise. Cancelling the
    caller cancels them all.
    """

    async def finish(coro: Coroutine[Any, Any, object]) -> None:
        await coro
        raise _Finished

    async def wait_for_stop(event: asyncio.Event) -> None:
        await event.wait()
        raise _Finished

    try:
        async with asyncio.TaskGroup() as group:
            if stop is not None:
                group.create_task(wait_for_stop(stop))
            for coro in coros:
                group.create_task(finish(coro))
    except BaseExceptionGroup as errors:
        _, rest = errors.split(_Finished)
        if rest is None:
            return
        if len(rest.exceptions) == 1 and not isinstance(rest.exceptions[0], BaseExceptionGroup):
            raise rest.exceptions[0] from None
        raise rest from None
