"""A child's stdin: bytes queued in order and written as the child reads them.

The fd is the stdin pipe, or the PTY master (which also carries the output, so it is
closed by the output side: :meth:`StdinWriter.master_closed`). Writes never block
the event loop: what the pipe does not take at once is queued and written when the
fd becomes writable. At most ``max_pending_bytes`` may wait unconsumed.
"""

from __future__ import annotations

import asyncio
import os
from collections import deque

from ..protocol.errors import InvalidRequest
from ..protocol.messages import WriteStatus
from .spawn import close_fds


class StdinWriter:
    """Ordered, non-blocking writes to one child's stdin (event loop thread only)."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        fd: int | None,
        *,
        tty: bool,
        max_pending_bytes: int,
        process_id: str,
    ) -> None:
        self._loop = loop
        self.fd = fd
        self._tty = tty
        self._max_pending = max_pending_bytes
        self._process_id = process_id
        self._queue: deque[memoryview] = deque()
        self._pending = 0
        self._eof_requested = False
        self._writer_registered = False

    def write(self, data: bytes) -> WriteStatus:
        """Queue ``data``; an empty write asks for EOF (pipes only; a PTY ignores it).

        ``stdinClosed`` once there is no stdin or EOF was asked for; -32600 when more
        than ``max_pending_bytes`` would wait.
        """
        fd = self.fd
        if fd is None or self._eof_requested:
            return "stdinClosed"
        if not data:
            if not self._tty:
                self._eof_requested = True
                if not self._queue:
                    self.close()
            return "accepted"
        if self._pending + len(data) > self._max_pending:
            raise InvalidRequest(
                f"process {self._process_id} stdin buffer is full: {self._pending} bytes "
                f"pending, limit is {self._max_pending} bytes"
            )
        view = memoryview(data)
        if not self._queue:
            try:
                written = os.write(fd, view)
            except BlockingIOError:
                written = 0
            except OSError:
                self._broken()
                return "stdinClosed"
            if written == len(view):
                return "accepted"
            view = view[written:]
        self._queue.append(view)
        self._pending += len(view)
        if not self._writer_registered:
            self._writer_registered = True
            self._loop.add_writer(fd, self._on_writable)
        return "accepted"

    def _on_writable(self) -> None:
        fd = self.fd
        queue = self._queue
        while fd is not None and queue:
            view = queue[0]
            try:
                written = os.write(fd, view)
            except BlockingIOError:
                return
            except OSError:
                self._broken()
                return
            self._pending -= written
            if written == len(view):
                queue.popleft()
            else:
                queue[0] = view[written:]
        if fd is not None:
            self._loop.remove_writer(fd)
        self._writer_registered = False
        if self._eof_requested:
            self.close()

    def _broken(self) -> None:
        # The reader end is gone (EPIPE) or the PTY hung up (EIO).
        self._drop_queue()
        if self._tty:
            # The master also carries output; its reader closes it at EOF.
            self._eof_requested = True
        else:
            self.close()

    def _drop_queue(self) -> None:
        if self._writer_registered and self.fd is not None:
            self._loop.remove_writer(self.fd)
        self._writer_registered = False
        self._queue.clear()
        self._pending = 0

    def close(self) -> None:
        """No more writes: drop what is queued and close a stdin pipe (a PTY master
        stays open for the output side)."""
        fd = self.fd
        if fd is None:
            return
        self._drop_queue()
        if self._tty:
            return  # the master is closed with its output stream (master_closed)
        self.fd = None
        close_fds([fd])

    def master_closed(self) -> None:
        """The PTY master (our fd) is being closed by the output side."""
        if self.fd is not None:
            self._loop.remove_writer(self.fd)
            self._drop_queue()
            self.fd = None
