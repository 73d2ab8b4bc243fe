"""The processes of one session, addressed by the client's ``processId``.

:class:`ProcessManager` implements the ``process/*`` methods for one session: it
validates ``process/start`` (Codex's errors), builds the child's environment
(:mod:`.child_env`), plans its confinement (the session's sandbox enforcer),
spawns it (:mod:`.spawn`) and hands it to a :class:`~.process.ChildProcess`. It
keeps closed processes readable for a retention delay, then forgets them so the id
is reusable; on ``close`` it kills every process group and stray descendant and
reaps them.

Wire behaviour follows the observed Codex 0.133 executor, and 0.171's where a
request speaks 0.171 (a ``file://`` cwd); the docstrings of the public methods say
where we extend or deviate.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal as signal_module

import psutil

from ..protocol.errors import InvalidParams, InvalidRequest
from ..protocol.messages import (
    Empty,
    ProcessReadParams,
    ProcessReadResult,
    ProcessResizeParams,
    ProcessSignalParams,
    ProcessStartParams,
    ProcessStartResult,
    ProcessTerminateParams,
    ProcessTerminateResult,
    ProcessWriteParams,
    ProcessWriteResult,
    SignalName,
)
from ..protocol.path_uri import speaks_uri
from ..protocol.rust_uuid import uuid_error
from .child_env import build_child_env, resolve_cwd
from .child_signals import prepare_child_signals
from .notification_outbox import NotificationSink
from .process import DEFAULT_PROCESS_LIMITS, ChildProcess, ProcessLimits
from .sandbox import SandboxSpec, UnsupportedPolicy
from .sandbox.confinement import DEFAULT_ENFORCER, SandboxEnforcer
from .sandbox.placeholders import PLACEHOLDERS
from .sandbox.plan import Confinement
from .spawn import Spawned, spawn_child

#: Upper bound of the ``outputChunkBytes`` extension of ``process/start`` (a client may
#: ask for larger chunks than Codex's 8 KiB: fewer messages, less overhead per byte).
MAX_OUTPUT_CHUNK_BYTES = 1024 * 1024
#: ``close()`` waits this long for SIGKILLed children to be reaped.
CLOSE_REAP_TIMEOUT_S = 2.0
#: After a sandboxed child closes, its unused placeholder directories are removed
#: this much later (one /proc scan for a burst of commands, off the spawn path) ...
PLACEHOLDER_COLLECT_DELAY_S = 0.2
#: ... and rechecked this often while a lingering process still needs them.
PLACEHOLDER_RECHECK_S = 5.0
#: ``writeId``s remembered per process to drop retried writes (oldest forgotten first).
MAX_REMEMBERED_WRITE_IDS = 4096

_SIGNALS: dict[SignalName, signal_module.Signals] = {
    "interrupt": signal_module.SIGINT,
    "terminate": signal_module.SIGTERM,
    "kill": signal_module.SIGKILL,
    "hangup": signal_module.SIGHUP,
    "quit": signal_module.SIGQUIT,
}

_U16_MAX = 0xFFFF
_U64_MAX = 2**64 - 1

__all__ = ["ProcessLimits", "ProcessManager"]


class _Starting:
    """Placeholder for a processId whose ``process/start`` has not finished."""


_STARTING = _Starting()


def _check_u64(name: str, value: int | None) -> None:
    # Codex decodes these as u64 and answers -32602 with serde's wording.
    if value is not None and not 0 <= value <= _U64_MAX:
        raise InvalidParams(f"invalid value: integer `{value}`, expected u64 ({name})")


class ProcessManager:
    """The processes of one session, addressed by the client's ``processId``."""

    def __init__(
        self,
        notify: NotificationSink,
        limits: ProcessLimits = DEFAULT_PROCESS_LIMITS,
        *,
        enforcer: SandboxEnforcer = DEFAULT_ENFORCER,
    ) -> None:
        self._notify = notify
        self._limits = limits
        self._enforcer = enforcer
        prepare_child_signals()
        self._placeholder_timer: asyncio.TimerHandle | None = None
        self._processes: dict[str, ChildProcess | _Starting] = {}
        self._closed = False
        self._close_done: asyncio.Event | None = None

    def __len__(self) -> int:
        return len(self._processes)

    # -- process/start ----------------------------------------------------------

    async def start(self, p: ProcessStartParams) -> ProcessStartResult:
        """Spawn ``argv`` in its own session and process group.

        Errors: empty argv -> -32602 "argv must not be empty"; a relative cwd ->
        -32602; a processId in use (also one still starting) -> -32600 "process X
        already exists"; too many processes -> -32600; a spawn failure -> -32603
        with the OS error text as Rust prints it ("No such file or directory (os
        error 2)").

        Extensions: ``rows``/``cols`` set the initial PTY size (default 24x80);
        ``outputChunkBytes`` (1 B to 1 MiB) the largest output chunk (default the
        session's, 8 KiB as in Codex).

        Eras: a ``file://`` cwd (Codex 0.171's form) makes a 0.171 process: its
        start result carries ``sandboxType``, a spawn failure ``data.kind``, its
        exit and reads ``sandboxDenied``, a death by signal N exits 128 + N, and
        writes need a ``writeId``. A native cwd makes a 0.133 process. A
        ``metadata.threadId`` must be a UUID (0.171's -32602 otherwise). A
        ``sandbox`` that asks for confinement is refused with -32603: this server
        does not run a command with less confinement than asked.
        """
        spec = self._check_start(p)
        cwd = resolve_cwd(p.cwd)
        codex_0171 = speaks_uri(p.cwd)
        confinement = self._confinement(spec, codex_0171)
        process_id = p.process_id
        if process_id in self._processes:
            raise InvalidRequest(f"process {process_id} already exists")
        self._make_room()
        self._processes[process_id] = _STARTING
        try:
            env = build_child_env(p, os.environ)
            spawned = await self._spawn(p, cwd, env, confinement)
        except BaseException:
            if self._processes.get(process_id) is _STARTING:
                del self._processes[process_id]
            raise
        chunk_bytes = p.output_chunk_bytes
        process = ChildProcess(
            process_id,
            spawned,
            tty=p.tty,
            pipe_stdin=p.pipe_stdin,
            notify=self._notify,
            limits=self._limits,
            on_closed=self._schedule_expiry,
            output_chunk_bytes=chunk_bytes if isinstance(chunk_bytes, int) else None,
            codex_0171=codex_0171,
            confined=confinement is not None,
        )
        if self._closed or self._processes.get(process_id) is not _STARTING:
            await self._discard_started(process)  # close() ran while we were spawning
            raise InvalidRequest("the session's process manager is shut down")
        self._processes[process_id] = process
        process.begin()
        result = ProcessStartResult(process_id=process_id)
        if codex_0171:
            result.sandbox_type = "none" if confinement is None else confinement.sandbox_type
        return result

    def _check_start(self, p: ProcessStartParams) -> SandboxSpec | None:
        """Validate ``process/start``'s params in Codex's order; the parsed sandbox."""
        if p.metadata is not None and p.metadata.thread_id is not None:
            problem = uuid_error(p.metadata.thread_id)
            if problem is not None:
                raise InvalidParams(problem)
        # The shape first: -32602 as Codex, e.g. for `{}`.
        spec = self._enforcer.parse(p.sandbox) if p.sandbox is not None else None
        if self._closed:
            raise InvalidRequest("the session's process manager is shut down")
        if not p.argv:
            raise InvalidParams("argv must not be empty")
        for name, value in (("rows", p.rows), ("cols", p.cols)):
            if isinstance(value, int) and not 0 < value <= _U16_MAX:
                raise InvalidParams(f"{name} must be between 1 and {_U16_MAX}, got {value}")
        chunk_bytes = p.output_chunk_bytes
        if isinstance(chunk_bytes, int) and not 0 < chunk_bytes <= MAX_OUTPUT_CHUNK_BYTES:
            raise InvalidParams(
                f"outputChunkBytes must be between 1 and {MAX_OUTPUT_CHUNK_BYTES}, "
                f"got {chunk_bytes}"
            )
        return spec

    def _confinement(self, spec: SandboxSpec | None, codex_0171: bool) -> Confinement | None:
        """Codex 0.171's sandbox intent: enforced in the child, or the start is refused
        (never run with less confinement than asked)."""
        try:
            return self._enforcer.plan(spec)
        except UnsupportedPolicy as refused:
            if codex_0171:
                refused.data = {"kind": "sandboxUnavailable"}
            raise

    async def _discard_started(self, process: ChildProcess) -> None:
        """Kill and reap a child whose session shut down while it was spawning."""
        process.kill_group(signal_module.SIGKILL)
        process.begin()
        await asyncio.wait((process.exit_observed,), timeout=CLOSE_REAP_TIMEOUT_S)
        process.dispose()
        if process.sender is not None:
            await asyncio.gather(process.sender, return_exceptions=True)

    async def _spawn(
        self, p: ProcessStartParams, cwd: str, env: dict[str, str], confinement: Confinement | None
    ) -> Spawned:
        # Synchronous on purpose: a vfork spawn takes about a millisecond, less than a
        # thread hand-off would add (a sandboxed one joins its confining thread). Kept
        # as a coroutine so the "starting" window is a real await point (and tests can
        # widen it).
        return spawn_child(p, cwd, env, confinement, self._enforcer)

    def _make_room(self) -> None:
        if len(self._processes) < self._limits.max_processes:
            return
        # Closed entries are only kept for late reads: the oldest gives way first.
        for process_id, entry in self._processes.items():
            if isinstance(entry, ChildProcess) and entry.closed:
                self._forget(process_id, entry)
                return
        raise InvalidRequest(
            f"too many processes: limit is {self._limits.max_processes} per session"
        )

    def _schedule_expiry(self, process: ChildProcess) -> None:
        loop = asyncio.get_running_loop()
        if process.confined:
            self._collect_placeholders_later(PLACEHOLDER_COLLECT_DELAY_S)
        process.retention_timer = loop.call_later(
            self._limits.closed_process_retention_s, self._forget, process.id, process
        )

    def _collect_placeholders_later(self, delay_s: float) -> None:
        if self._placeholder_timer is None and not self._closed:
            loop = asyncio.get_running_loop()
            self._placeholder_timer = loop.call_later(delay_s, self._collect_placeholders)

    def _collect_placeholders(self) -> None:
        self._placeholder_timer = None
        PLACEHOLDERS.collect()
        if PLACEHOLDERS.idle:
            self._collect_placeholders_later(PLACEHOLDER_RECHECK_S)

    def _forget(self, process_id: str, process: ChildProcess) -> None:
        if self._processes.get(process_id) is process:
            del self._processes[process_id]
        if process.retention_timer is not None:  # forgotten early: the timer goes too
            process.retention_timer.cancel()
            process.retention_timer = None
        if process.retention_timer is not None:
            process.retention_timer.cancel()
            process.retention_timer = None

    def _get(self, process_id: str) -> ChildProcess:
        entry = self._processes.get(process_id)
        if entry is None:
            raise InvalidRequest(f"unknown process id {process_id}")
        if isinstance(entry, _Starting):
            raise InvalidRequest(f"process id {process_id} is starting")
        return entry

    # -- process/read -----------------------------------------------------------

    async def read(self, p: ProcessReadParams) -> ProcessReadResult:
        """Retained output after ``afterSeq``, long-polling up to ``waitMs``.

        Returns at once when there are chunks, the process is closed, or it exited
        with the exit event still unseen (``afterSeq < nextSeq - 1``); otherwise it
        waits for the next event or the deadline. ``maxBytes`` applies in whole
        chunks and the first chunk is always returned.

        Extension: when output after ``afterSeq`` was evicted from the retention
        buffer, ``firstRetainedSeq`` names the first seq still retained.
        """
        _check_u64("afterSeq", p.after_seq)
        _check_u64("maxBytes", p.max_bytes)
        _check_u64("waitMs", p.wait_ms)
        after_seq = p.after_seq or 0
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (p.wait_ms or 0) / 1000
        process = self._get(p.process_id)
        while True:
            result = process.snapshot(after_seq, p.max_bytes)
            unseen_exit = result.exited and after_seq < result.next_seq - 1
            remaining = deadline - loop.time()
            if result.chunks or result.closed or unseen_exit or remaining <= 0 or self._closed:
                return result
            await process.wait_for_event(remaining)

    # -- process/write ----------------------------------------------------------

    async def write(self, p: ProcessWriteParams) -> ProcessWriteResult:
        """Queue bytes to the child's stdin (or PTY) without blocking the loop.

        Statuses: ``unknownProcess``, ``starting``, ``stdinClosed`` (no stdin: a
        non-PTY process without ``pipeStdin``, or stdin already closed, or the
        child has closed), ``accepted`` (queued in order).

        ``writeId`` (Codex 0.171): a write whose id this process already accepted is
        answered ``accepted`` and not written again (the last 4096 ids are kept); a
        0.171 process requires a non-empty one, as 0.171 does.

        Extension: an empty ``chunk`` on a ``pipeStdin`` process closes its stdin
        once the queued bytes are written, so the child reads EOF; later writes get
        ``stdinClosed``. On a PTY an empty chunk does nothing (send ``\\x04``).
        More than ``max_pending_stdin_bytes`` unconsumed -> -32600.
        """
        entry = self._processes.get(p.process_id)
        if entry is None:
            return ProcessWriteResult(status="unknownProcess")
        if isinstance(entry, _Starting):
            return ProcessWriteResult(status="starting")
        if entry.codex_0171:
            if p.write_id is None:
                raise InvalidParams("missing field `writeId`")
            if not p.write_id:
                raise InvalidParams("writeId must not be empty")
        if p.write_id:
            if p.write_id in entry.write_ids:
                return ProcessWriteResult(status="accepted")  # a retry: written once
            status = entry.write_stdin(p.chunk)
            if status == "accepted":
                entry.write_ids[p.write_id] = None
                if len(entry.write_ids) > MAX_REMEMBERED_WRITE_IDS:
                    del entry.write_ids[next(iter(entry.write_ids))]
            return ProcessWriteResult(status=status)
        return ProcessWriteResult(status=entry.write_stdin(p.chunk))

    # -- process/terminate and process/signal -----------------------------------

    async def terminate(self, p: ProcessTerminateParams) -> ProcessTerminateResult:
        """SIGKILL the process group if the process had not exited yet.

        ``running`` is true only then (Codex 0.133 kills outright too: a TERM trap
        never runs, and the exit is reported as ``exitCode -1``). An exited process
        is left alone even if its background children still hold the output open,
        as in Codex. Unknown or starting processes give ``running: false``.
        """
        entry = self._processes.get(p.process_id)
        if not isinstance(entry, ChildProcess) or entry.exit_code is not None:
            return ProcessTerminateResult(running=False)
        entry.kill_group(signal_module.SIGKILL)
        if entry.tty:
            # A shell with job control may run its foreground job in another group.
            foreground = entry.foreground_group()
            if foreground != entry.pid:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(foreground, signal_module.SIGKILL)
        return ProcessTerminateResult(running=True)

    async def signal(self, p: ProcessSignalParams) -> Empty:
        """Send a named signal (``interrupt`` = SIGINT, ``terminate``, ``kill``,
        ``hangup``, ``quit``) to the process group; for a PTY, to the terminal's
        foreground group, which is what a keyboard signal would reach.

        Codex 0.133 does not implement ``process/signal`` (-32601); 0.171 supports
        ``interrupt`` only, so a 0.171 process gets 0.171's -32602 for the others.
        An unknown or closed process is not signalled (``{}``, as 0.171 answers).
        """
        entry = self._processes.get(p.process_id)
        if not isinstance(entry, ChildProcess):
            return Empty()
        process = entry
        if process.codex_0171 and p.signal != "interrupt":
            raise InvalidParams(f"unknown variant `{p.signal}`, expected `interrupt`")
        signum = _SIGNALS.get(p.signal)
        if signum is None:  # only reachable if params bypassed decoding
            raise InvalidParams(f"unsupported signal {p.signal!r}")
        if process.closed:
            return Empty()
        target = process.foreground_group() if process.tty else process.pid
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(target, signum)
        return Empty()

    # -- process/resize -----------------------------------------------------------

    async def resize(self, p: ProcessResizeParams) -> Empty:
        """Our extension: set a PTY process's window size (the kernel sends SIGWINCH)."""
        process = self._get(p.process_id)
        for name, value in (("rows", p.rows), ("cols", p.cols)):
            if not 0 < value <= _U16_MAX:
                raise InvalidParams(f"{name} must be between 1 and {_U16_MAX}, got {value}")
        if not process.tty:
            raise InvalidRequest(
                f"process {p.process_id} has no pty: resize needs a process started with tty: true"
            )
        process.resize(p.rows, p.cols)
        return Empty()

    # -- teardown ---------------------------------------------------------------

    async def close(self) -> None:
        """Kill every process group and known descendant with SIGKILL, reap the
        children, close every fd and stop every task and timer. Idempotent; pending
        notifications are dropped, waiting reads return their current state.
        """
        if self._close_done is not None:
            await self._close_done.wait()
            return
        self._closed = True
        self._close_done = asyncio.Event()
        try:
            processes = [e for e in self._processes.values() if isinstance(e, ChildProcess)]
            self._processes.clear()
            live = [proc.pid for proc in processes if proc.exit_code is None]
            # Children that escaped the group (setsid, setpgid) are still our
            # descendants while their ancestors live: find them before killing.
            strays = _descendants(live) if live else []
            for proc in processes:
                proc.kill_group(signal_module.SIGKILL, even_if_closed=True)
            for pid in strays:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal_module.SIGKILL)
            pending = [proc.exit_observed for proc in processes if not proc.exit_observed.done()]
            if pending:
                await asyncio.wait(pending, timeout=CLOSE_REAP_TIMEOUT_S)
            senders = [proc.sender for proc in processes if proc.sender is not None]
            for proc in processes:
                proc.dispose()
            await asyncio.gather(*senders, return_exceptions=True)
            if self._placeholder_timer is not None:
                self._placeholder_timer.cancel()
                self._placeholder_timer = None
            PLACEHOLDERS.collect()
        finally:
            self._close_done.set()


def _descendants(roots: list[int]) -> list[int]:
    """Every live descendant of ``roots`` (one scan of the process table)."""
    children: dict[int, list[int]] = {}
    for proc in psutil.process_iter(["ppid"]):
        ppid = proc.info.get("ppid")
        if isinstance(ppid, int):
            children.setdefault(ppid, []).append(proc.pid)
    found: list[int] = []
    stack = list(roots)
    while stack:
        for child in children.get(stack.pop(), ()):
            found.append(child)
            stack.append(child)
    return found
