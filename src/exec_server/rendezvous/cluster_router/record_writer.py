"""Record writes the router does not wait for: :class:`RecordWriter`.

Releasing an environment's holder record when its socket closes, deleting a stream's
owner record when the stream ends: the router queues these and carries on. They run
one at a time, in the order queued (a release never overtakes the claim it undoes),
each bounded by :data:`WRITE_TIMEOUT_S`; a failure is counted and logged, never raised
(the record then waits for its node's lease to run out, or for a takeover).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable

__all__ = ["WRITE_TIMEOUT_S", "RecordWriter"]

log = logging.getLogger(__name__)

WRITE_TIMEOUT_S = 10.0
"""Longest a background record write (release, delete) may take."""

Operation = Callable[[], Awaitable[object]]


class RecordWriter:
    """A queue of background record writes; :meth:`run` is the owner's task."""

    def __init__(self, on_failure: Callable[[], None]) -> None:
        self._on_failure = on_failure
        self._writes: deque[tuple[str, Operation]] = deque()
        self._ready = asyncio.Event()
        self._closed = False

    def submit(self, what: str, operation: Operation) -> None:
        """Queue a write (``what`` names it in the log if it fails)."""
        if not self._closed:
            self._writes.append((what, operation))
            self._ready.set()

    def clear(self) -> None:
        """Drop the writes not started yet (the records they touch are void)."""
        self._writes.clear()

    def close(self) -> None:
        self._closed = True
        self._ready.set()

    async def run(self) -> None:
        writes = self._writes
        while not self._closed:
            if not writes:
                self._ready.clear()
                await self._ready.wait()
                continue
            what, operation = writes.popleft()
            try:
                async with asyncio.timeout(WRITE_TIMEOUT_S):
                    await operation()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._on_failure()
                log.info("cluster state write failed (%s): %r", what, exc)
