"""The harness SDK: a typed async client for an exec-server.

>>> async with await ExecServerClient.connect("ws://127.0.0.1:8765") as client:
...     proc = await client.start_process(["echo", "hi"], cwd="/tmp")
...     result = await proc.collect()
...     result.stdout, result.exit_code
(b'hi\\n', 0)

The same API works over a local websocket, a stdio child
(:meth:`ExecServerClient.spawn_stdio`) or any other
:class:`~exec_server.transport.channel.MessageChannel`.

Process events are delivered per process in seq order, whatever order the
notifications arrive in, and a :class:`ProcessHandle` ends on ``closed`` (not on
``exited``: output from grandchildren may follow the exit). Each handle buffers at
most :data:`MAX_BUFFERED_EVENT_BYTES` of undelivered output; beyond that the
connection's reader waits for the consumer, which pushes back to the server and
the child process instead of growing memory without bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, TypeVar

import msgspec
import pybase64
from msgspec import UnsetType

from ..protocol import messages as m
from ..protocol.errors import ServerError
from ..transport.channel import MessageChannel
from ..transport.relay import (
    RelayStatus,
    StatusCallback,
    connect_harness_relay,
    is_rendezvous_harness_url,
)
from ..transport.stdio import spawn_stdio_server
from ..transport.websocket import DEFAULT_MAX_MESSAGE_BYTES, connect_websocket
from .rpc import RpcClient, TransportClosed

DEFAULT_CLIENT_NAME = "exec-server-python"
#: How long a client tries to resume its session after losing the connection (Codex:
#: 25 s, inside the server's retention).
SESSION_RECOVERY_TIMEOUT_S = 25.0
SESSION_RECOVERY_RETRY_S = 0.1

T = TypeVar("T")
Reconnect = Callable[[], Awaitable[MessageChannel]]


class _Unrecoverable(Exception):
    pass


class _RelayStatusHook:
    """Hears the relay's reports for every channel the client dials; remembers when the
    rendezvous gave the environment up, so recovery does not dial it again."""

    def __init__(self, user: StatusCallback | None) -> None:
        self.user = user
        self.gone: RelayStatus | None = None

    def __call__(self, status: RelayStatus) -> None:
        if status.state == "gone":
            self.gone = status
        if self.user is not None:
            self.user(status)


#: Output a process handle holds for a slow consumer before pushing back.
MAX_BUFFERED_EVENT_BYTES = 8 * 1024 * 1024
#: Largest output chunk this SDK asks for (the ``outputChunkBytes`` extension of
#: ``process/start``): 128 KiB raw is about 171 KiB of JSON, one relay segment, and a
#: sixteenth of the messages of Codex's 8 KiB chunks. A Codex server ignores the field.
DEFAULT_OUTPUT_CHUNK_BYTES = 128 * 1024


class _OutputNotificationWire(m.Message):
    """``process/output`` with the chunk left as its base64 text (decoded by pybase64)."""

    process_id: str
    seq: int
    stream: m.OutputStream
    chunk: str


_output_decoder = msgspec.json.Decoder(_OutputNotificationWire)


@dataclass(frozen=True)
class ClientTimeouts:
    """Timeouts for establishing a connection (Codex uses 10 s for both)."""

    connect_s: float = 10.0
    initialize_s: float = 10.0


@dataclass(frozen=True)
class OutputEvent:
    seq: int
    stream: m.OutputStream
    data: bytes


@dataclass(frozen=True)
class ExitedEvent:
    seq: int
    exit_code: int


@dataclass(frozen=True)
class ClosedEvent:
    seq: int


@dataclass(frozen=True)
class FailedEvent:
    """The connection ended before the process closed."""

    message: str


ProcessEvent = OutputEvent | ExitedEvent | ClosedEvent | FailedEvent


@dataclass
class ProcessResult:
    stdout: bytes = b""
    stderr: bytes = b""
    pty: bytes = b""
    exit_code: int | None = None
    failure: str | None = None
    chunks: list[OutputEvent] = field(default_factory=list)


class ProcessFailed(Exception):
    """A process's event stream ended without ``closed`` (e.g. disconnect)."""


class ProcessHandle:
    """A started process: its ordered events and the calls that act on it."""

    def __init__(self, client: ExecServerClient, process_id: str) -> None:
        self.client = client
        self.process_id = process_id
        self.exit_code: int | None = None
        self._next_seq = 1
        self._pending: dict[int, ProcessEvent] = {}
        self._ready: asyncio.Queue[ProcessEvent] = asyncio.Queue()
        self._buffered_bytes = 0
        self._space = asyncio.Event()
        self._space.set()
        self._done = False

    @property
    def last_seq(self) -> int:
        """The last seq delivered in order (0 before any)."""
        return self._next_seq - 1

    # --- feeding (called by the client's router) -------------------------------

    def _accept(self, seq: int, event: ProcessEvent) -> None:
        if seq < self._next_seq or seq in self._pending or self._done:
            return  # duplicate
        self._pending[seq] = event
        while self._next_seq in self._pending:
            ready = self._pending.pop(self._next_seq)
            self._next_seq += 1
            if isinstance(ready, OutputEvent):
                self._buffered_bytes += len(ready.data)
                if self._buffered_bytes > MAX_BUFFERED_EVENT_BYTES:
                    self._space.clear()
            elif isinstance(ready, ExitedEvent):
                self.exit_code = ready.exit_code
            self._ready.put_nowait(ready)
            if isinstance(ready, ClosedEvent):
                self._done = True
                self.client._forget(self)
                return

    def _fail(self, message: str) -> None:
        if not self._done:
            self._done = True
            self._ready.put_nowait(FailedEvent(message))

    async def _wait_for_space(self) -> None:
        await self._space.wait()

    # --- consuming --------------------------------------------------------------

    async def next_event(self) -> ProcessEvent:
        event = await self._ready.get()
        if isinstance(event, OutputEvent):
            self._buffered_bytes -= len(event.data)
            if self._buffered_bytes <= MAX_BUFFERED_EVENT_BYTES:
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

    async def collect(self) -> ProcessResult:
        """Gather all output until closed; raises :class:`ProcessFailed` on failure."""
        result = ProcessResult()
        out: dict[str, list[bytes]] = {"stdout": [], "stderr": [], "pty": []}
        async for event in self.events():
            if isinstance(event, OutputEvent):
                out[event.stream].append(event.data)
                result.chunks.append(event)
            elif isinstance(event, ExitedEvent):
                result.exit_code = event.exit_code
            elif isinstance(event, FailedEvent):
                raise ProcessFailed(event.message)
        result.stdout = b"".join(out["stdout"])
        result.stderr = b"".join(out["stderr"])
        result.pty = b"".join(out["pty"])
        return result

    async def wait(self) -> int | None:
        """Wait until closed and return the exit code (discarding output)."""
        return (await self.collect()).exit_code

    async def write(self, data: bytes) -> m.WriteStatus:
        return await self.client.write_process(self.process_id, data)

    async def close_stdin(self) -> m.WriteStatus:
        """Our extension: an empty write closes a pipe stdin (EOF)."""
        return await self.client.write_process(self.process_id, b"")

    async def terminate(self) -> bool:
        return await self.client.terminate_process(self.process_id)

    async def signal(self, name: m.SignalName = "interrupt") -> None:
        await self.client.signal_process(self.process_id, name)

    async def resize(self, rows: int, cols: int) -> None:
        await self.client.resize_process(self.process_id, rows, cols)

    async def read(
        self, after_seq: int | None = None, max_bytes: int | None = None, wait_ms: int = 0
    ) -> m.ProcessReadResult:
        return await self.client.read_process(self.process_id, after_seq, max_bytes, wait_ms)


class ExecServerClient:
    """A connection to one exec-server session. Use as an async context manager."""

    def __init__(
        self,
        channel: MessageChannel,
        *,
        client_name: str = DEFAULT_CLIENT_NAME,
        reconnect: Reconnect | None = None,
        recovery_timeout_s: float = SESSION_RECOVERY_TIMEOUT_S,
    ):
        self._channel = channel
        self.client_name = client_name
        self.session_id: str | None = None
        self._handles: dict[str, ProcessHandle] = {}
        self._rpc = RpcClient(channel, self._route_notification, self._on_disconnect)
        self._reconnect = reconnect
        self._recovery_timeout_s = recovery_timeout_s
        self._ready = asyncio.Event()
        self._ready.set()
        self._recovery: asyncio.Task[None] | None = None
        self._closing = False
        self._failure: str | None = None
        self._relay_status: _RelayStatusHook | None = None
        self.recoveries = 0

    # --- construction -------------------------------------------------------------

    @classmethod
    async def connect(
        cls,
        url: str,
        *,
        client_name: str = DEFAULT_CLIENT_NAME,
        token: str | None = None,
        resume_session_id: str | None = None,
        timeouts: ClientTimeouts | None = None,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        on_relay_status: StatusCallback | None = None,
    ) -> ExecServerClient:
        """Connect to a local websocket exec-server and initialize a session.

        With a ``role=harness`` rendezvous URL, ``on_relay_status`` hears what the
        rendezvous reports about the environment (offline and being waited for, back
        online, gone), in time to tell a person why nothing is happening.
        """
        timeouts = timeouts or ClientTimeouts()
        headers = {"Authorization": f"Bearer {token}"} if token else None
        relay_status = _RelayStatusHook(on_relay_status)

        async def dial() -> MessageChannel:
            if is_rendezvous_harness_url(url):
                return await connect_harness_relay(
                    url, headers=headers, timeout_s=timeouts.connect_s, on_status=relay_status
                )
            return await connect_websocket(
                url,
                headers=headers,
                timeout_s=timeouts.connect_s,
                max_message_bytes=max_message_bytes,
            )

        client = await cls.over_channel(
            await dial(),
            client_name=client_name,
            resume_session_id=resume_session_id,
            initialize_timeout_s=timeouts.initialize_s,
            reconnect=dial,
        )
        client._relay_status = relay_status
        return client

    @classmethod
    async def spawn_stdio(
        cls,
        argv: list[str] | None = None,
        *,
        client_name: str = DEFAULT_CLIENT_NAME,
        env: Mapping[str, str] | None = None,
        initialize_timeout_s: float = 10.0,
    ) -> ExecServerClient:
        """Start an exec-server child speaking stdio (ours by default) and connect."""
        argv = argv or [sys.executable, "-m", "exec_server", "serve", "--listen", "stdio"]
        channel = await spawn_stdio_server(argv, env=dict(env) if env is not None else None)
        return await cls.over_channel(
            channel, client_name=client_name, initialize_timeout_s=initialize_timeout_s
        )

    @classmethod
    async def over_channel(
        cls,
        channel: MessageChannel,
        *,
        client_name: str = DEFAULT_CLIENT_NAME,
        resume_session_id: str | None = None,
        initialize_timeout_s: float = 10.0,
        reconnect: Reconnect | None = None,
    ) -> ExecServerClient:
        """Initialize a session over ``channel``.

        With ``reconnect`` (a factory of fresh channels to the same server), a lost
        connection is recovered: the client resumes its session on a new channel and
        splices each process's missed events from ``process/read``.
        """
        client = cls(channel, client_name=client_name, reconnect=reconnect)
        client._rpc.start()
        try:
            async with asyncio.timeout(initialize_timeout_s):
                await client._initialize(resume_session_id)
        except TimeoutError:
            await client.close()
            raise TimeoutError(
                f"timed out waiting for exec-server initialize handshake "
                f"after {initialize_timeout_s}s"
            ) from None
        except BaseException:
            await client.close()
            raise
        return client

    async def _initialize(self, resume_session_id: str | None) -> None:
        result = await self._rpc.call(
            m.INITIALIZE,
            m.InitializeParams(client_name=self.client_name, resume_session_id=resume_session_id),
            m.InitializeResult,
        )
        self.session_id = result.session_id
        await self._rpc.notify(m.INITIALIZED, {})

    async def __aenter__(self) -> ExecServerClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        self._closing = True
        if self._recovery is not None:
            self._recovery.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._recovery
        await self._rpc.close()

    @property
    def closed(self) -> bool:
        return self._failure is not None or self._closing

    async def _call(self, method: str, params: Any, result_type: type[T]) -> T:
        """A call that waits while a lost connection is being recovered."""
        if not self._ready.is_set():
            await self._ready.wait()
        if self._failure is not None:
            raise TransportClosed(self._failure)
        return await self._rpc.call(method, params, result_type)

    # --- recovery -------------------------------------------------------------------

    async def _recover(self, message: str) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._recovery_timeout_s
        assert self._reconnect is not None and self.session_id is not None
        last_error = message
        try:
            while loop.time() < deadline:
                rpc: RpcClient | None = None
                try:
                    async with asyncio.timeout_at(deadline):
                        channel = await self._reconnect()
                    rpc = RpcClient(channel, self._route_notification, self._on_disconnect)
                    rpc.start()
                    async with asyncio.timeout_at(deadline):
                        result = await rpc.call(
                            m.INITIALIZE,
                            m.InitializeParams(
                                client_name=self.client_name, resume_session_id=self.session_id
                            ),
                            m.InitializeResult,
                        )
                    await rpc.notify(m.INITIALIZED, {})
                except ServerError as exc:
                    if rpc is not None:
                        await rpc.close()
                    if "unknown session id" in exc.message:
                        raise _Unrecoverable(f"{message}; session expired: {exc.message}") from None
                    if (gone := self._environment_gone()) is not None:
                        raise _Unrecoverable(f"{message}; {gone}") from None
                    last_error = exc.message  # e.g. still attached: the old stream lingers
                except (OSError, TimeoutError, ConnectionError) as exc:
                    if rpc is not None:
                        await rpc.close()
                    last_error = str(exc)
                else:
                    assert result.session_id == self.session_id
                    self._rpc = rpc
                    self._ready.set()
                    self.recoveries += 1
                    for handle in list(self._handles.values()):
                        await self._splice(handle)
                    return
                await asyncio.sleep(SESSION_RECOVERY_RETRY_S)
            raise _Unrecoverable(f"{message}; recovery failed: {last_error}")
        except _Unrecoverable as exc:
            self._give_up(str(exc))
        except Exception as exc:
            self._give_up(f"{message}; recovery failed: {exc}")

    def _give_up(self, message: str) -> None:
        self._failure = message
        self._ready.set()
        for handle in list(self._handles.values()):
            handle._fail(message)
        self._handles.clear()

    async def _splice(self, handle: ProcessHandle) -> None:
        """Replay what a handle missed while disconnected, from the server's retention.

        Output chunks come back with their seqs; the seqs in between that no chunk
        covers are the exit and close events (exited first, closed last).
        """
        base = after = handle.last_seq
        seen: set[int] = set()
        while not handle._done:
            try:
                res = await self._rpc.call(
                    m.PROCESS_READ,
                    m.ProcessReadParams(handle.process_id, after, None, 0),
                    m.ProcessReadResult,
                )
            except ServerError as exc:
                handle._fail(f"process {handle.process_id} could not be recovered: {exc.message}")
                self._forget(handle)
                return
            first = res.first_retained_seq
            if not isinstance(first, UnsetType) and first > after + 1:
                handle._fail(
                    f"output of process {handle.process_id} was lost while disconnected: "
                    f"seq {after + 1} to {first - 1} exceeded the server's retention"
                )
                self._forget(handle)
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

    # --- notifications --------------------------------------------------------------

    def _route_notification(self, method: str, params: msgspec.Raw) -> Awaitable[None] | None:
        if method == m.PROCESS_OUTPUT:
            out = _output_decoder.decode(params)
            handle = self._handles.get(out.process_id)
            if handle is not None:
                # pybase64 decodes about twice as fast as msgspec's ``bytes`` field.
                chunk = pybase64.b64decode(out.chunk, validate=True)
                handle._accept(out.seq, OutputEvent(out.seq, out.stream, chunk))
                if not handle._space.is_set():
                    return handle._wait_for_space()
        elif method == m.PROCESS_EXITED:
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

    def _environment_gone(self) -> str | None:
        gone = self._relay_status.gone if self._relay_status is not None else None
        return gone.detail if gone is not None else None

    def _on_disconnect(self, message: str) -> None:
        if self._closing or self._failure is not None:
            return
        if (gone := self._environment_gone()) is not None:
            self._give_up(f"{message}: {gone}")  # the rendezvous already waited for it
            return
        if self._reconnect is not None and self.session_id is not None:
            if self._recovery is None or self._recovery.done():
                self._ready.clear()
                self._recovery = asyncio.get_running_loop().create_task(self._recover(message))
            return
        self._give_up(message)

    def _forget(self, handle: ProcessHandle) -> None:
        if self._handles.get(handle.process_id) is handle:
            del self._handles[handle.process_id]

    # --- processes --------------------------------------------------------------------

    async def start_process(
        self,
        argv: list[str],
        *,
        cwd: str | None = None,
        env: Mapping[str, str] | None = None,
        env_policy: m.EnvPolicy | None = None,
        tty: bool = False,
        pipe_stdin: bool = False,
        arg0: str | None = None,
        process_id: str | None = None,
        rows: int | None = None,
        cols: int | None = None,
        events: bool = True,
        output_chunk_bytes: int | None = DEFAULT_OUTPUT_CHUNK_BYTES,
    ) -> ProcessHandle:
        """Start a process and return a handle whose events begin at seq 1.

        With ``events=False`` notifications for it are ignored and the caller polls
        with :meth:`ProcessHandle.read` instead; otherwise the handle's events must
        be consumed (see :data:`MAX_BUFFERED_EVENT_BYTES`).

        ``env`` is the child's exact environment unless ``env_policy`` is given
        (then it is overlaid on the policy's). With neither, the server's PATH,
        HOME and LANG are passed so ordinary commands work.

        ``output_chunk_bytes`` bounds each output chunk (our server honours it, Codex
        ignores it); ``None`` leaves the server's default (8 KiB).
        """
        if env is None and env_policy is None:
            env = {k: v for k in ("PATH", "HOME", "LANG") if (v := os.environ.get(k))}
        process_id = process_id or uuid.uuid4().hex
        handle = ProcessHandle(self, process_id)
        # Register before starting: output notifications can precede the response.
        if events:
            self._handles[process_id] = handle
        params = m.ProcessStartParams(
            process_id=process_id,
            argv=list(argv),
            cwd=cwd or os.getcwd(),
            env=dict(env or {}),
            tty=tty,
            pipe_stdin=pipe_stdin,
            arg0=arg0,
            env_policy=env_policy,
            rows=rows if rows is not None else msgspec.UNSET,
            cols=cols if cols is not None else msgspec.UNSET,
            output_chunk_bytes=(
                output_chunk_bytes if output_chunk_bytes is not None else msgspec.UNSET
            ),
        )
        try:
            await self._call(m.PROCESS_START, params, m.ProcessStartResult)
        except BaseException:
            self._forget(handle)
            raise
        return handle

    async def read_process(
        self,
        process_id: str,
        after_seq: int | None = None,
        max_bytes: int | None = None,
        wait_ms: int | None = None,
    ) -> m.ProcessReadResult:
        params = m.ProcessReadParams(process_id, after_seq, max_bytes, wait_ms)
        return await self._call(m.PROCESS_READ, params, m.ProcessReadResult)

    async def write_process(self, process_id: str, data: bytes) -> m.WriteStatus:
        params = m.ProcessWriteParams(process_id=process_id, chunk=data)
        return (await self._call(m.PROCESS_WRITE, params, m.ProcessWriteResult)).status

    async def terminate_process(self, process_id: str) -> bool:
        params = m.ProcessTerminateParams(process_id=process_id)
        result = await self._call(m.PROCESS_TERMINATE, params, m.ProcessTerminateResult)
        return result.running

    async def signal_process(self, process_id: str, signal: m.SignalName = "interrupt") -> None:
        params = m.ProcessSignalParams(process_id=process_id, signal=signal)
        await self._call(m.PROCESS_SIGNAL, params, m.Empty)

    async def resize_process(self, process_id: str, rows: int, cols: int) -> None:
        params = m.ProcessResizeParams(process_id=process_id, rows=rows, cols=cols)
        await self._call(m.PROCESS_RESIZE, params, m.Empty)

    # --- filesystem -------------------------------------------------------------------

    async def read_file(
        self,
        path: str,
        *,
        max_bytes: int | None = None,
        sandbox: m.Sandbox = None,
        offset: int | None = None,
        length: int | None = None,
    ) -> bytes:
        """Read a file; ``offset``/``length`` (our extension) read a range of it."""
        params = m.FsReadFileParams(
            path=path,
            sandbox=sandbox,
            max_bytes=max_bytes,
            offset=msgspec.UNSET if offset is None else offset,
            length=msgspec.UNSET if length is None else length,
        )
        return (await self._call(m.FS_READ_FILE, params, m.FsReadFileResult)).data_base64

    async def write_file(
        self, path: str, data: bytes, *, sandbox: m.Sandbox = None, offset: int | None = None
    ) -> None:
        """Write (create or truncate) a file; with ``offset`` (our extension) write into
        an existing file at that position without truncating it."""
        params = _WriteFileBytes(
            path=path,
            data_base64=data,
            sandbox=sandbox,
            offset=msgspec.UNSET if offset is None else offset,
        )
        await self._call(m.FS_WRITE_FILE, params, m.Empty)

    async def create_directory(
        self, path: str, *, recursive: bool = True, sandbox: m.Sandbox = None
    ) -> None:
        params = m.FsCreateDirectoryParams(path=path, recursive=recursive, sandbox=sandbox)
        await self._call(m.FS_CREATE_DIRECTORY, params, m.Empty)

    async def get_metadata(self, path: str, *, sandbox: m.Sandbox = None) -> m.FsMetadata:
        params = m.FsGetMetadataParams(path=path, sandbox=sandbox)
        return await self._call(m.FS_GET_METADATA, params, _MetadataLenient)

    async def read_directory(
        self, path: str, *, sandbox: m.Sandbox = None
    ) -> list[m.FsDirectoryEntry]:
        params = m.FsReadDirectoryParams(path=path, sandbox=sandbox)
        return (await self._call(m.FS_READ_DIRECTORY, params, m.FsReadDirectoryResult)).entries

    async def remove(
        self, path: str, *, recursive: bool = True, force: bool = True, sandbox: m.Sandbox = None
    ) -> None:
        params = m.FsRemoveParams(path=path, recursive=recursive, force=force, sandbox=sandbox)
        await self._call(m.FS_REMOVE, params, m.Empty)

    async def copy(
        self,
        source_path: str,
        destination_path: str,
        *,
        recursive: bool = False,
        sandbox: m.Sandbox = None,
    ) -> None:
        params = m.FsCopyParams(
            source_path=source_path,
            destination_path=destination_path,
            recursive=recursive,
            sandbox=sandbox,
        )
        await self._call(m.FS_COPY, params, m.Empty)

    async def checksum(self, path: str, *, sandbox: m.Sandbox = None) -> m.FsChecksumResult:
        """Our extension: the file's SHA-256 computed on the server."""
        params = m.FsChecksumParams(path=path, sandbox=sandbox)
        return await self._call(m.FS_CHECKSUM, params, m.FsChecksumResult)

    async def environment_info(self) -> m.EnvironmentInfoResult:
        return await self._call(m.ENVIRONMENT_INFO, None, m.EnvironmentInfoResult)

    async def call(self, method: str, params: Any, result_type: type[Any] = object) -> Any:
        """Escape hatch: any method, raw params, decoded into ``result_type``."""
        return await self._call(method, params, result_type)


class _WriteFileBytes(m.Message):
    """Client-side writeFile params: msgspec base64-encodes ``bytes`` itself."""

    path: str
    data_base64: bytes
    sandbox: m.Sandbox = None
    offset: int | msgspec.UnsetType = msgspec.UNSET


class _MetadataLenient(m.FsMetadata):
    """Metadata from servers that omit ``size`` (Codex 0.133)."""

    size: int = 0
