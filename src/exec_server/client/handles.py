"""The client's live process handles, and the routing of process notifications to them.

``process/output``, ``process/exited`` and ``process/closed`` name a process id;
:class:`ProcessHandles` feeds each one to the handle registered under that id (a handle
is registered before ``process/start`` is sent, since output can precede the response)
and drops notifications for ids it does not hold (a process started with
``events=False``, or one whose handle already closed). A handle leaves the table when
it reads ``closed`` or fails.

Backpressure: when a handle's buffer is over its limit, :meth:`ProcessHandles.on_output`
returns an awaitable that the connection's reader awaits before reading on.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import TYPE_CHECKING

import msgspec
import pybase64

from ..protocol import messages as m
from .events import ClosedEvent, ExitedEvent, OutputEvent, output_params_decoder

if TYPE_CHECKING:
    from .process import ProcessHandle


class ProcessHandles:
    """The handles that receive events, by process id."""

    def __init__(self) -> None:
        self._handles: dict[str, ProcessHandle] = {}

    def add(self, handle: ProcessHandle) -> None:
        self._handles[handle.process_id] = handle

    def forget(self, handle: ProcessHandle) -> None:
        """Drop ``handle`` (not another handle that took its id since)."""
        if self._handles.get(handle.process_id) is handle:
            del self._handles[handle.process_id]

    def discard(self, process_id: str) -> None:
        self._handles.pop(process_id, None)

    def snapshot(self) -> list[ProcessHandle]:
        """The handles now (a copy: recovery awaits while handles come and go)."""
        return list(self._handles.values())

    def fail_all(self, message: str) -> None:
        """End every handle with a ``FailedEvent`` and forget them all."""
        for handle in self.snapshot():
            handle._fail(message)
        self._handles.clear()

    def on_output(
        self, process_id: str, seq: int, stream: m.OutputStream, data: bytes
    ) -> Awaitable[None] | None:
        """One output chunk; an awaitable when the handle's buffer is full."""
        handle = self._handles.get(process_id)
        if handle is None:
            return None
        handle._accept(seq, OutputEvent(seq, stream, data))
        if not handle._space.is_set():
            return handle._wait_for_space()
        return None

    def route(self, method: str, params: msgspec.Raw) -> Awaitable[None] | None:
        """One notification (other methods are ignored)."""
        if method == m.PROCESS_OUTPUT:
            out = output_params_decoder.decode(params)
            # pybase64 decodes about twice as fast as msgspec's ``bytes`` field.
            data = pybase64.b64decode(out.chunk, validate=True)
            return self.on_output(out.process_id, out.seq, out.stream, data)
        if method == m.PROCESS_EXITED:
            ex = msgspec.json.decode(params, type=m.ProcessExitedNotification)
            handle = self._handles.get(ex.process_id)
            if handle is not None:
                handle._accept(ex.seq, ExitedEvent(ex.seq, ex.exit_code))
        elif method == m.PROCESS_CLOSED:
            cl = msgspec.json.decode(params, type=m.ProcessClosedNotification)
            handle = self._handles.get(cl.process_id)
            if handle is not None:
                handle._accept(cl.seq, ClosedEvent(cl.seq))
        return None
