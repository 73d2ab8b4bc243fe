"""Structured concurrency: "run this until that", with every task owned by a TaskGroup.

:func:`run_until` is the "run these until a stop signal or until one of them ends"
block that the ``serve``, ``up`` and ``rendezvous`` commands, the rendezvous's socket
handlers and the relay adapter would otherwise write out by hand (start tasks, wait for
the first, cancel the rest, suppress their cancellation). Every task it starts is owned
by its TaskGroup: when it returns, nothing it started is still running.

:func:`unless_set` is the one-coroutine form that also returns the result: a request
handler's long wait that a revocation (another connection took the session over) ends.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

__all__ = ["Stopped", "run_until", "unless_set"]

T = TypeVar("T")


class Stopped(Exception):
    """:func:`unless_set`: the event was set before the coroutine finished."""


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


async def unless_set(stop: asyncio.Event, coro: Coroutine[Any, Any, T]) -> T:
    """``await coro``, unless ``stop`` is set first: then ``coro`` is cancelled, waited
    for, and :class:`Stopped` is raised. When both happen at once, the result wins.

    An exception from ``coro`` is raised as itself; cancelling the caller cancels
    ``coro`` and waits for it.
    """
    results: list[T] = []

    async def finish() -> None:
        results.append(await coro)
        raise _Finished

    async def wait_for_stop() -> None:
        await stop.wait()
        raise _Finished

    try:
        async with asyncio.TaskGroup() as group:
            group.create_task(wait_for_stop())
            group.create_task(finish())
    except BaseExceptionGroup as errors:
        _, rest = errors.split(_Finished)
        if rest is not None:
            if len(rest.exceptions) == 1:
                raise rest.exceptions[0] from None
            raise rest from None
    if results:
        return results[0]
    raise Stopped
