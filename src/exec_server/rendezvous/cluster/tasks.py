"""Stopping background tasks that call into nats-py.

nats-py waits for JetStream replies with ``asyncio.wait_for``, which on Python 3.11 can
swallow a cancellation that arrives together with the reply: the task then carries on as
if never cancelled. :func:`cancel_and_wait` cancels again until the task is really done,
so closing a node never hangs on a lost cancellation. Task loops should also test their
owner's closed flag, so a swallowed cancellation ends them at the next iteration.
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection
from typing import Any

__all__ = ["cancel_and_wait"]

RECANCEL_INTERVAL_S = 0.2


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
