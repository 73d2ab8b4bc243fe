"""Stopping background tasks that call into nats-py.

nats-py waits for JetStream replies with ``asyncio.wait_for``, which on Python 3.11 can
swallow a cancellation that arrives together with the reply: the task then carries on as
if never cancelled. :func:`cancel_and_wait` cancels again until the task is really done,
so closing a node never hangs on a lost cancellation. Task loops should also test their
owner's closed flag, so a swallowed cancellation ends them at the next iteration.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Collection, Coroutine
from typing import Any

__all__ = ["CLOSE_TIMEOUT_S", "cancel_and_wait", "finish_within"]

log = logging.getLogger(__name__)

RECANCEL_INTERVAL_S = 0.2

CLOSE_TIMEOUT_S = 5.0
"""Longest wait for a NATS connection to close."""


async def cancel_and_wait(tasks: Collection[asyncio.Task[Any]]) -> None:
    """Cancel every task and wait until each has finished (re-cancelling as needed);
    their exceptions are retrieved (and dropped: the owner is shutting down)."""
    pending = {task for task in tasks if not task.done()}
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=RECANCEL_INTERVAL_S)
    for task in tasks:
        if not task.cancelled():
            task.exception()


async def finish_within(coro: Coroutine[Any, Any, Any], timeout_s: float, what: str) -> None:
    """Run ``coro`` (a client's ``close()``) for at most ``timeout_s``; errors and an
    overrun are logged, never raised: shutdown goes on. An overrunning task is cancelled
    once and not waited for (nats-py may not honour the cancellation)."""
    task = asyncio.ensure_future(coro)
    done, _ = await asyncio.wait({task}, timeout=timeout_s)
    if not done:
        log.warning("%s did not finish within %.1fs; abandoning it", what, timeout_s)
        task.cancel()
        return
    if not task.cancelled() and task.exception() is not None:
        log.debug("%s failed: %r", what, task.exception())
