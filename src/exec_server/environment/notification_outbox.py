"""One process's notifications on their way to the session, and the task that sends them.

:class:`NotificationOutbox` queues ``process/output``, ``process/exited`` and
``process/closed`` in seq order and owns the one task that awaits the session's
:data:`NotificationSink` for each (the connection's backpressure). The task ends after
``process/closed``, or when the process is disposed (:meth:`NotificationOutbox.cancel`;
the process manager then awaits :attr:`NotificationOutbox.task`).

Flow control: once the queued output passes :data:`NOTIFY_HIGH_WATER_BYTES` or
:data:`NOTIFY_HIGH_WATER_COUNT` notifications, :meth:`NotificationOutbox.should_pause`
says so once and the process stops reading its child; when the queue falls to
:data:`NOTIFY_LOW_WATER_BYTES`, ``on_resume`` is called. A slow sink thus stalls its
own child only. A sink that raises is logged and skipped (the event stays retained for
``process/read``). Runs on the event loop thread only.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable

from ..protocol.messages import PROCESS_CLOSED, Message

log = logging.getLogger(__name__)

NotificationSink = Callable[[str, Message], Awaitable[None]]
"""``(method, notification)``; awaiting it applies the connection's backpressure.

The session's sink returns at once (dropping the notification) while detached."""

#: Queued-but-unsent notification payload at which a process's readers pause ...
NOTIFY_HIGH_WATER_BYTES = 512 * 1024
#: ... or this many queued notifications (tiny chunks cost more than their bytes) ...
NOTIFY_HIGH_WATER_COUNT = 1024
#: ... and the payload below which they resume.
NOTIFY_LOW_WATER_BYTES = 128 * 1024


class NotificationOutbox:
    """The queued notifications of one process (see the module docstring)."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        notify: NotificationSink,
        process_id: str,
        on_resume: Callable[[], None],
    ) -> None:
        self._loop = loop
        self._notify = notify
        self._process_id = process_id
        self._on_resume = on_resume
        self._items: deque[tuple[str, Message, int]] = deque()
        self._bytes = 0
        self._paused = False
        self._wakeup: asyncio.Future[None] | None = None
        #: The sender task (from :meth:`start`); ends after ``process/closed``.
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.task = self._loop.create_task(self._run(), name=f"process {self._process_id} notify")

    def cancel(self) -> None:
        if self.task is not None:
            self.task.cancel()

    def add_output(self, method: str, message: Message, size: int) -> None:
        """Queue an output notification carrying ``size`` payload bytes; the caller
        calls :meth:`wake` once per batch."""
        self._items.append((method, message, size))
        self._bytes += size

    def add(self, method: str, message: Message) -> None:
        """Queue an event without payload (exit, close) and wake the sender."""
        self._items.append((method, message, 0))
        self.wake()

    def should_pause(self) -> bool:
        """Whether the reader must pause now (true once per pause)."""
        if self._paused:
            return False
        if self._bytes >= NOTIFY_HIGH_WATER_BYTES or len(self._items) >= NOTIFY_HIGH_WATER_COUNT:
            self._paused = True
        return self._paused

    def wake(self) -> None:
        wakeup = self._wakeup
        if wakeup is not None and not wakeup.done():
            wakeup.set_result(None)

    async def _run(self) -> None:
        items = self._items
        notify = self._notify
        while True:
            while items:
                method, message, size = items.popleft()
                self._bytes -= size
                if self._paused and self._bytes <= NOTIFY_LOW_WATER_BYTES:
                    self._paused = False
                    self._on_resume()
                try:
                    await notify(method, message)
                except Exception:
                    # A failing sink must not stall the process: the event stays
                    # retained for process/read.
                    log.exception("process %s: %s notification failed", self._process_id, method)
                if method == PROCESS_CLOSED:
                    return
            self._wakeup = self._loop.create_future()
            await self._wakeup
            self._wakeup = None
