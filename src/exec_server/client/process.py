"""A started process as the SDK sees it: ordered events, and the calls that act on it.

Events are delivered per process in seq order, whatever order the notifications
arrive in, and a :class:`ProcessHandle` ends on ``closed`` (not on ``exited``: output
from grandchildren may follow the exit). Each handle buffers at most
``ClientConfig.max_buffered_output_bytes`` of undelivered output; beyond that the
connection's reader waits for the consumer, which pushes back to the server and the
child process instead of growing memory without bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING

import msgspec

from ..protocol import messages as m
from .config import DEFAULT, Timeout
from .errors import ExecServerError, ProcessFailed, ProcessTimeout
from .events import ClosedEvent, ExitedEvent, FailedEvent, OutputEvent, ProcessEvent

if TYPE_CHECKING:
    from .client import ExecServerClient

#: Seconds :meth:`ExecServerClient.run` waits for a terminate after its timeout.
TERMINATE_TIMEOUT_S = 5.0


class ProcessResult(msgspec.Struct):
    """What a process printed and how it ended.

    ``exit_code`` is ``None`` if the server never reported one, and -1 when the
    process died of a signal. A tty process's output is in ``pty``. When a
    ``max_output_bytes`` limit applied, each stream keeps its first bytes up to the
    limit and ``truncated`` says whether anything was dropped.
    """

    exit_code: int | None = None
    stdout: bytes = b""
    stderr: bytes = b""
    pty: bytes = b""
    truncated: bool = False


class ProcessHandle:
    """A process on the environment: iterate it for its events, or call its methods.

    ``async for event in handle`` yields :class:`OutputEvent`, :class:`ExitedEvent`
    and finally :class:`ClosedEvent` (or :class:`FailedEvent`), in seq order. Every
    method takes ``timeout=`` (seconds, ``None`` for no limit; the client's default
    otherwise).
    """

    def __init__(
        self,
        client: ExecServerClient,
        process_id: str,
        *,
        receives_events: bool = True,
        max_buffered_bytes: int = 8 * 1024 * 1024,
    ) -> None:
        self.client = client
        self.process_id = process_id
        #: The exit code once ``exited`` has been delivered in order.
        self.exit_code: int | None = None
        self.receives_events = receives_events
        self._max_buffered_bytes = max_buffered_bytes
        self._next_seq = 1
        self._pending: dict[int, ProcessEvent] = {}
        self._ready: deque[ProcessEvent] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._buffered_bytes = 0
        self._space = asyncio.Event()
        self._space.set()
        self._done = False

    def __repr__(self) -> str:
        return f"<ProcessHandle {self.process_id} next_seq={self._next_seq}>"

    @property
    def last_seq(self) -> int:
        """The last seq delivered in order (0 before any)."""
        return self._next_seq - 1

    @property
    def done(self) -> bool:
        """True once ``closed`` or a failure has been queued for the consumer."""
        return self._done

    # --- feeding (called by the client) --------------------------------------------

    def _accept(self, seq: int, event: ProcessEvent) -> None:
        if seq < self._next_seq or seq in self._pending or self._done:
            return  # duplicate
        self._pending[seq] = event
        while self._next_seq in self._pending:
            ready = self._pending.pop(self._next_seq)
            self._next_seq += 1
            if isinstance(ready, OutputEvent):
                self._buffered_bytes += len(ready.data)
                if self._buffered_bytes > self._max_buffered_bytes:
                    self._space.clear()
            elif isinstance(ready, ExitedEvent):
                self.exit_code = ready.exit_code
            self._push(ready)
            if isinstance(ready, ClosedEvent):
                self._done = True
                self.client._forget(self)
                return

    def _fail(self, message: str) -> None:
        if not self._done:
            self._done = True
            self._push(FailedEvent(message))

    def _push(self, event: ProcessEvent) -> None:
        self._ready.append(event)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _wait_for_space(self) -> None:
        await self._space.wait()

    # --- consuming ------------------------------------------------------------------

    async def next_event(self) -> ProcessEvent:
        """The next event in seq order (waits for it)."""
        if not self.receives_events:
            raise RuntimeError(
                f"process {self.process_id} does not receive events here "
                "(started with events=False, or attached by id): poll it with read()"
            )
        while not self._ready:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        event = self._ready.popleft()
        if type(event) is OutputEvent:
            self._buffered_bytes -= len(event.data)
            if self._buffered_bytes <= self._max_buffered_bytes:
                self._space.set()
        return event

    async def events(self) -> AsyncIterator[ProcessEvent]:
        """Yield events in seq order; ends after ``ClosedEvent`` or ``FailedEvent``."""
        while True:
            event = await self.next_event()
            yield event
            if isinstance(event, ClosedEvent | FailedEvent):
                return

    def __aiter__(self) -> AsyncIterator[ProcessEvent]:
        return self.events()

    async def collect(self, *, max_output_bytes: int | None = None) -> ProcessResult:
        """Gather the output until ``closed``.

        With ``max_output_bytes``, each stream keeps at most that many of its first
        bytes (the rest is read and dropped; ``truncated`` tells). Raises
        :class:`ProcessFailed` if the events end without ``closed``.
        """
        collector = OutputCollector(max_output_bytes)
        async for event in self.events():
            if isinstance(event, FailedEvent):
                raise ProcessFailed(event.message, process_id=self.process_id)
            collector.add(event)
        return collector.result()

    async def wait(self) -> int | None:
        """Wait until closed and return the exit code (discarding output)."""
        async for event in self.events():
            if isinstance(event, FailedEvent):
                raise ProcessFailed(event.message, process_id=self.process_id)
        return self.exit_code

    # --- acting on it ---------------------------------------------------------------

    async def write(self, data: bytes, *, timeout: Timeout = DEFAULT) -> m.WriteStatus:
        """Write to its stdin (a tty, or a process started with ``pipe_stdin``)."""
        # Codex 0.171 requires a writeId and drops a repeated one as a retry: a fresh
        # UUID, so that no client's write passes for another's. 0.133 takes none.
        write_id = uuid.uuid4().hex if self.client._uri_paths else None
        params = m.ProcessWriteParams(process_id=self.process_id, chunk=data, write_id=write_id)
        result = await self.client._call(m.PROCESS_WRITE, params, m.ProcessWriteResult, timeout)
        return result.status

    async def close_stdin(self, *, timeout: Timeout = DEFAULT) -> m.WriteStatus:
        """Close a pipe stdin (EOF), our extension: an empty write."""
        return await self.write(b"", timeout=timeout)

    async def terminate(self, *, timeout: Timeout = DEFAULT) -> bool:
        """Kill it (SIGKILL to its process group); returns whether it was running."""
        params = m.ProcessTerminateParams(process_id=self.process_id)
        result = await self.client._call(
            m.PROCESS_TERMINATE, params, m.ProcessTerminateResult, timeout
        )
        return result.running

    async def signal(self, name: m.SignalName = "interrupt", *, timeout: Timeout = DEFAULT) -> None:
        """Send a signal: ``interrupt`` (Codex), or ``terminate``, ``kill``, ``hangup``,
        ``quit`` (our extension)."""
        params = m.ProcessSignalParams(process_id=self.process_id, signal=name)
        await self.client._call(m.PROCESS_SIGNAL, params, m.Empty, timeout)

    async def resize(self, rows: int, cols: int, *, timeout: Timeout = DEFAULT) -> None:
        """Resize its PTY (our extension)."""
        params = m.ProcessResizeParams(process_id=self.process_id, rows=rows, cols=cols)
        await self.client._call(m.PROCESS_RESIZE, params, m.Empty, timeout)

    async def read(
        self,
        after_seq: int | None = None,
        max_bytes: int | None = None,
        wait_ms: int | None = None,
        *,
        timeout: Timeout = DEFAULT,
    ) -> m.ProcessReadResult:
        """Poll retained output (``process/read``): chunks after ``after_seq``, waiting
        up to ``wait_ms`` for new ones. The wait is added to the timeout."""
        params = m.ProcessReadParams(self.process_id, after_seq, max_bytes, wait_ms)
        limit = self.client.config.request_timeout(timeout)
        if limit is not None and wait_ms:
            limit += wait_ms / 1000
        return await self.client._call(m.PROCESS_READ, params, m.ProcessReadResult, limit)


class OutputCollector:
    """Joins output events per stream, keeping at most ``limit`` bytes of each."""

    def __init__(self, limit: int | None) -> None:
        self.limit = limit
        self.exit_code: int | None = None
        self.truncated = False
        self._parts: dict[str, list[bytes]] = {"stdout": [], "stderr": [], "pty": []}
        self._sizes = {"stdout": 0, "stderr": 0, "pty": 0}

    def add(self, event: ProcessEvent) -> None:
        if isinstance(event, OutputEvent):
            data = event.data
            if self.limit is not None:
                room = self.limit - self._sizes[event.stream]
                if len(data) > room:
                    self.truncated = True
                    data = data[: max(room, 0)]
            if data:
                self._parts[event.stream].append(data)
                self._sizes[event.stream] += len(data)
        elif isinstance(event, ExitedEvent):
            self.exit_code = event.exit_code

    def result(self) -> ProcessResult:
        return ProcessResult(
            exit_code=self.exit_code,
            stdout=b"".join(self._parts["stdout"]),
            stderr=b"".join(self._parts["stderr"]),
            pty=b"".join(self._parts["pty"]),
            truncated=self.truncated,
        )


async def run_to_completion(
    client: ExecServerClient,
    start: Callable[[str], Awaitable[ProcessHandle]],
    name: str,
    *,
    stdin: bytes | None,
    tty: bool,
    timeout: float | None,
    max_output_bytes: int | None,
) -> ProcessResult:
    """The body of :meth:`ExecServerClient.run`: ``start(process_id)`` starts the
    process named ``name``; its stdin gets ``stdin`` then EOF (unless ``tty``), and its
    output is collected until ``closed`` within ``timeout``. On timeout or cancellation
    the process is terminated before the error propagates."""
    process_id = uuid.uuid4().hex
    collector = OutputCollector(max_output_bytes)
    try:
        async with asyncio.timeout(timeout) as deadline:
            proc = await start(process_id)
            if stdin is not None:
                await proc.write(stdin)
                if not tty:
                    await proc.close_stdin()
            async for event in proc:
                if isinstance(event, FailedEvent):
                    raise ProcessFailed(event.message, process_id=process_id)
                collector.add(event)
    except TimeoutError:
        if not deadline.expired():
            raise
        await _terminate_quietly(client, process_id)
        assert timeout is not None
        raise ProcessTimeout(
            f"`{name}` did not finish within {timeout:g}s; it was terminated",
            timeout=timeout,
            result=collector.result(),
        ) from None
    except asyncio.CancelledError:
        await _terminate_quietly(client, process_id)
        raise
    return collector.result()


async def _terminate_quietly(client: ExecServerClient, process_id: str) -> None:
    client._handles.discard(process_id)
    with contextlib.suppress(ExecServerError):
        await client.process(process_id).terminate(timeout=TERMINATE_TIMEOUT_S)
