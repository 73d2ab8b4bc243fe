"""The process half of a session: spawning, output, stdin, signals and teardown.

One :class:`ProcessManager` per session owns every child process that session
started, keyed by the client's ``processId``. It owns, per process:

* the OS resources: the child (in its own session and process group), its output
  pipes or PTY master, its stdin pipe, and a pidfd that reports its exit;
* the event log: one ``seq`` counter from 1 shared by output chunks, the exit event
  and the closed event, a bounded buffer of retained output for ``process/read``,
  and the notifications pushed through the session's :data:`NotificationSink`;
* the lifecycle: ``closed`` once the exit is known *and* every output stream hit
  EOF; closed entries are forgotten after a retention delay so the id is reusable.

The data path avoids a task per read: output fds are watched with
``loop.add_reader`` and read in large non-blocking reads, split into chunks of at
most ``output_chunk_bytes``, sequenced and retained at once (so ``process/read``
sees them even while notifications are stalled), and queued to one sender task per
process that awaits the sink. When that queue grows past a high-water mark the
process's readers are paused, so a slow sink stalls that child alone.

Wire behaviour follows the observed Codex 0.133 executor; the docstrings of
the public methods say where we extend or deviate.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import logging
import operator
import os
import re
import signal as signal_module
import struct
import subprocess
import termios
import threading
from bisect import bisect_right
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache

import psutil

from ..protocol.errors import InternalError, InvalidParams, InvalidRequest
from ..protocol.messages import (
    PROCESS_CLOSED,
    PROCESS_EXITED,
    PROCESS_OUTPUT,
    Empty,
    EnvPolicy,
    Message,
    OutputStream,
    ProcessClosedNotification,
    ProcessExitedNotification,
    ProcessOutputChunk,
    ProcessOutputNotification,
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
    WriteStatus,
)
from ..protocol.path_uri import file_uri_to_path, speaks_uri
from ..protocol.rust_uuid import uuid_error
from .child_signals import prepare_child_signals
from .rust_compat import os_error_text
from .sandbox import UnsupportedPolicy, parse_sandbox, resolve_policy
from .sandbox.confinement import (
    DEFAULT_ENFORCER,
    PLACEHOLDERS,
    Confinement,
    ConfinementLease,
    SandboxEnforcer,
)
from .sandbox.denial import looks_like_sandbox_denial

log = logging.getLogger(__name__)

NotificationSink = Callable[[str, Message], Awaitable[None]]
"""``(method, notification)``; awaiting it applies the connection's backpressure.

The session's sink returns at once (dropping the notification) while detached."""

#: Largest output chunk; Codex 0.133 never sends more than 8 KiB raw per chunk.
OUTPUT_CHUNK_BYTES = 8192
#: Upper bound of the ``outputChunkBytes`` extension of ``process/start`` (a client may
#: ask for larger chunks than Codex's 8 KiB: fewer messages, less overhead per byte).
MAX_OUTPUT_CHUNK_BYTES = 1024 * 1024
#: Output kept per process for ``process/read`` (Codex: 1 MiB, oldest evicted first).
RETAINED_OUTPUT_BYTES = 1024 * 1024
#: How long a closed process stays readable before its id can be reused (Codex: 30 s).
CLOSED_PROCESS_RETENTION_S = 30.0
#: Processes one session may hold at once (running, starting or retained).
MAX_PROCESSES = 1024
#: Bytes queued for a child's stdin that it has not consumed yet.
MAX_PENDING_STDIN_BYTES = 8 * 1024 * 1024

#: One ``os.read`` takes up to this much; large reads keep syscalls and wakeups per
#: byte low, and the data is split into chunks afterwards.
READ_BYTES = 256 * 1024
#: Output chunks at least this big are read one chunk per ``os.read`` (no slicing copy).
CHUNKED_READ_MIN_BYTES = 64 * 1024
#: Requested capacity of output pipes (Linux F_SETPIPE_SZ); a bigger pipe lets a fast
#: writer run longer between our wakeups. Best effort: the per-user pipe budget may
#: refuse it, and then the 64 KiB default stays.
PIPE_CAPACITY_BYTES = 1024 * 1024
#: Queued-but-unsent notification payload at which a process's readers pause ...
NOTIFY_HIGH_WATER_BYTES = 512 * 1024
#: ... or this many queued notifications (tiny chunks cost more than their bytes) ...
NOTIFY_HIGH_WATER_COUNT = 1024
#: ... and the payload below which they resume.
NOTIFY_LOW_WATER_BYTES = 128 * 1024
#: On exit, read at most this much per stream before recording the exit, so output
#: the child wrote before dying gets a lower seq than ``exited``, while a grandchild
#: that keeps writing cannot delay the exit event forever.
EXIT_DRAIN_BYTES = PIPE_CAPACITY_BYTES + READ_BYTES
#: Retained chunks are bounded by count too: a child that trickles single bytes must
#: not turn 1 MiB of payload into a million Python objects.
MIN_ACCOUNTED_CHUNK_BYTES = 64
#: Initial PTY window when ``process/start`` gives no size (Codex uses 24x80).
DEFAULT_PTY_ROWS = 24
DEFAULT_PTY_COLS = 80
#: ``close()`` waits this long for SIGKILLed children to be reaped.
CLOSE_REAP_TIMEOUT_S = 2.0
#: After a sandboxed child closes, its unused placeholder directories are removed
#: this much later (one /proc scan for a burst of commands, off the spawn path) ...
PLACEHOLDER_COLLECT_DELAY_S = 0.2
#: ... and rechecked this often while a lingering process still needs them.
PLACEHOLDER_RECHECK_S = 5.0

#: Codex 0.133 reports -1 when a process has no exit code (it was killed by a signal).
NO_EXIT_CODE = -1
#: Codex 0.171 reports death by signal N as 128 + N.
SIGNAL_EXIT_BASE = 128
#: ``writeId``s remembered per process to drop retried writes (oldest forgotten first).
MAX_REMEMBERED_WRITE_IDS = 4096

_SIGNALS: dict[SignalName, signal_module.Signals] = {
    "interrupt": signal_module.SIGINT,
    "terminate": signal_module.SIGTERM,
    "kill": signal_module.SIGKILL,
    "hangup": signal_module.SIGHUP,
    "quit": signal_module.SIGQUIT,
}

#: Server variables kept by ``inherit: "core"`` (union of Codex's lists over time;
#: compared case-insensitively, as current Codex does).
CORE_ENV_VARS = frozenset(
    name.upper()
    for name in (
        "HOME",
        "LOGNAME",
        "PATH",
        "SHELL",
        "USER",
        "USERNAME",
        "TMPDIR",
        "TEMP",
        "TMP",
        "LANG",
        "LC_ALL",
        "LC_CTYPE",
    )
)
#: Removed unless ``ignoreDefaultExcludes`` (Codex's default excludes).
DEFAULT_ENV_EXCLUDES = ("*KEY*", "*SECRET*", "*TOKEN*")

_U16_MAX = 0xFFFF
_U64_MAX = 2**64 - 1


@dataclass(frozen=True)
class ProcessLimits:
    """Per-session process limits (all enforced; see the module constants)."""

    output_chunk_bytes: int = OUTPUT_CHUNK_BYTES
    retained_output_bytes: int = RETAINED_OUTPUT_BYTES
    closed_process_retention_s: float = CLOSED_PROCESS_RETENTION_S
    max_processes: int = MAX_PROCESSES
    max_pending_stdin_bytes: int = MAX_PENDING_STDIN_BYTES


DEFAULT_PROCESS_LIMITS = ProcessLimits()


# --- child environment -----------------------------------------------------------


@lru_cache(maxsize=256)
def _compile_env_pattern(pattern: str) -> re.Pattern[str]:
    # Codex matches with `*` and `?` wildcards only (no character classes), ignoring case.
    parts = (".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.compile("".join(parts), re.IGNORECASE | re.DOTALL)


def env_pattern_matches(pattern: str, name: str) -> bool:
    """Whether ``name`` matches a Codex env-var glob (``*``, ``?``; case-insensitive)."""
    return _compile_env_pattern(pattern).fullmatch(name) is not None


def _matches_any(name: str, patterns: Iterable[str]) -> bool:
    return any(env_pattern_matches(p, name) for p in patterns)


def build_child_env(params: ProcessStartParams, server_env: Mapping[str, str]) -> dict[str, str]:
    """The environment a child gets, as Codex builds it.

    Without ``envPolicy`` it is exactly ``params.env``. With one, Codex's
    ``ShellEnvironmentPolicy`` derives it from ``server_env`` (inherit, default
    excludes, excludes, set, includeOnly, in that order) and ``params.env`` is
    overlaid last.
    """
    policy = params.env_policy
    if policy is None:
        return dict(params.env)
    env = _apply_env_policy(policy, server_env)
    env.update(params.env)
    return env


def _apply_env_policy(policy: EnvPolicy, server_env: Mapping[str, str]) -> dict[str, str]:
    if policy.inherit == "all":
        env = dict(server_env)
    elif policy.inherit == "core":
        env = {k: v for k, v in server_env.items() if k.upper() in CORE_ENV_VARS}
    else:
        env = {}
    if not policy.ignore_default_excludes:
        env = {k: v for k, v in env.items() if not _matches_any(k, DEFAULT_ENV_EXCLUDES)}
    if policy.exclude:
        env = {k: v for k, v in env.items() if not _matches_any(k, policy.exclude)}
    env.update(policy.set)
    if policy.include_only:
        env = {k: v for k, v in env.items() if _matches_any(k, policy.include_only)}
    return env


def resolve_cwd(cwd: str) -> str:
    """An absolute native path from a ``process/start`` cwd (path or ``file://`` URI).

    Codex 0.133 passes the string to the OS as is (a relative cwd resolves against
    the server's cwd, a URI fails with ENOENT); a URI is parsed as Codex 0.171 does
    (with its error texts); a relative path is rejected, since it would depend on
    where the server was started.
    """
    if speaks_uri(cwd):
        return file_uri_to_path(cwd)
    if not os.path.isabs(cwd):
        raise InvalidParams(f"cwd must be an absolute path or a file:// URI, got {cwd!r}")
    return cwd


# --- spawning --------------------------------------------------------------------


def _acquire_controlling_tty() -> None:
    # Runs in the child between fork and exec, after setsid() (start_new_session)
    # and after fd 0 became the PTY slave: make the PTY the controlling terminal, so
    # /dev/tty, job control and terminal-generated signals work as in a real terminal.
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


def _os_error_text(exc: OSError) -> str:
    # Rust's io::Error display on Codex's musl build, sent verbatim, e.g.
    # "No such file or directory (os error 2)" (the same text as fs/* errors).
    if exc.errno is None:
        return str(exc)
    return os_error_text(exc.errno)


def _set_winsize(fd: int, rows: int, cols: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


def _grow_pipe(fd: int) -> None:
    with contextlib.suppress(OSError, AttributeError):
        fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, PIPE_CAPACITY_BYTES)


def _close_fds(fds: Iterable[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


@dataclass
class _Spawned:
    popen: subprocess.Popen[bytes]
    #: (fd, stream name) of each output stream we read.
    outputs: list[tuple[int, OutputStream]]
    #: Where writes go: the stdin pipe, the PTY master, or None.
    stdin_fd: int | None
    #: A sandboxed child's hold on its placeholders (released once it is closed).
    lease: ConfinementLease | None = None


def _spawn_failure_kind(exc: OSError) -> str:
    # Codex 0.171's ProcessStartErrorData kinds.
    if exc.errno == errno.ENOENT:
        return "spawnNotFound"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return "spawnPermissionDenied"
    return "spawnFailed"


_Popen = subprocess.Popen[bytes]
#: How ``_spawn_*`` run their ``Popen``: directly, or in a confined thread.
_Launcher = Callable[[Callable[[], _Popen]], _Popen]


def _launch_directly(popen: Callable[[], _Popen]) -> _Popen:
    return popen()


def _spawn(
    params: ProcessStartParams,
    cwd: str,
    env: dict[str, str],
    confinement: Confinement | None = None,
    enforcer: SandboxEnforcer = DEFAULT_ENFORCER,
) -> _Spawned:
    """Fork/exec the child; raises InternalError with the OS error text on failure.

    With a ``confinement`` the child is spawned from a thread confined by it (see
    :mod:`.sandbox.confinement`); if that cannot be done the start is refused.
    """
    program = params.argv[0]
    args = [params.arg0 if params.arg0 is not None else program, *params.argv[1:]]
    leases: list[ConfinementLease] = []

    def launch_confined(popen: Callable[[], _Popen]) -> _Popen:
        assert confinement is not None
        child, lease = enforcer.spawn(confinement, popen)
        leases.append(lease)
        return child

    launch = _launch_directly if confinement is None else launch_confined
    try:
        if params.tty:
            spawned = _spawn_pty(params, program, args, cwd, env, launch)
        else:
            spawned = _spawn_pipes(params, program, args, cwd, env, launch)
        spawned.lease = leases[0] if leases else None
        return spawned
    except UnsupportedPolicy as refused:
        if speaks_uri(params.cwd):
            refused.data = {"kind": "sandboxUnavailable"}
        raise
    except OSError as exc:
        data = {"kind": _spawn_failure_kind(exc)} if speaks_uri(params.cwd) else None
        raise InternalError(_os_error_text(exc), data=data) from exc
    except ValueError as exc:
        # Embedded NUL bytes and malformed env names; the first wording is Rust's.
        text = "nul byte found in provided data" if "null byte" in str(exc) else str(exc)
        raise InternalError(text) from exc
    except subprocess.SubprocessError as exc:
        raise InternalError(str(exc)) from exc


def _spawn_pty(
    params: ProcessStartParams,
    program: str,
    args: list[str],
    cwd: str,
    env: dict[str, str],
    launch: _Launcher = _launch_directly,
) -> _Spawned:
    rows = params.rows if isinstance(params.rows, int) else DEFAULT_PTY_ROWS
    cols = params.cols if isinstance(params.cols, int) else DEFAULT_PTY_COLS
    master, slave = os.openpty()
    try:
        _set_winsize(slave, rows, cols)
        # preexec_fn forces fork() instead of vfork(); TIOCSCTTY needs code in the
        # child and the alternatives (posix_spawn) cannot set a cwd.
        popen = launch(
            lambda: subprocess.Popen(
                args,
                executable=program,
                stdin=slave,
                stdout=slave,
                stderr=slave,
                cwd=cwd,
                env=env,
                start_new_session=True,
                preexec_fn=_acquire_controlling_tty,
            )
        )
    except BaseException:
        os.close(master)
        raise
    finally:
        # Our copy of the slave must go, or the master never reports EOF (EIO).
        os.close(slave)
    os.set_blocking(master, False)
    return _Spawned(popen, [(master, "pty")], master)


def _spawn_pipes(
    params: ProcessStartParams,
    program: str,
    args: list[str],
    cwd: str,
    env: dict[str, str],
    launch: _Launcher = _launch_directly,
) -> _Spawned:
    parent_fds: list[int] = []
    child_fds: list[int] = []
    try:
        out_r, out_w = os.pipe()
        parent_fds.append(out_r)
        child_fds.append(out_w)
        err_r, err_w = os.pipe()
        parent_fds.append(err_r)
        child_fds.append(err_w)
        stdin: int
        stdin_w: int | None = None
        if params.pipe_stdin:
            stdin, stdin_w = os.pipe()
            child_fds.append(stdin)
            parent_fds.append(stdin_w)
        else:
            # Opened here, not by Popen: a sandboxed launch need not reach /dev.
            stdin = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
            child_fds.append(stdin)
        # No preexec_fn, so CPython can use vfork(): spawning stays around 1 ms.
        popen = launch(
            lambda: subprocess.Popen(
                args,
                executable=program,
                stdin=stdin,
                stdout=out_w,
                stderr=err_w,
                cwd=cwd,
                env=env,
                start_new_session=True,
            )
        )
    except BaseException:
        _close_fds(parent_fds)
        raise
    finally:
        _close_fds(child_fds)
    for fd in parent_fds:
        os.set_blocking(fd, False)
    _grow_pipe(out_r)
    _grow_pipe(err_r)
    return _Spawned(popen, [(out_r, "stdout"), (err_r, "stderr")], stdin_w)


# --- one process -------------------------------------------------------------------


class _Starting:
    """Placeholder for a processId whose ``process/start`` has not finished."""


_STARTING = _Starting()

_seq_of = operator.attrgetter("seq")


class _OutputStream:
    __slots__ = ("fd", "name")

    def __init__(self, fd: int, name: OutputStream) -> None:
        self.fd: int | None = fd
        self.name: OutputStream = name


class _Process:
    """A spawned child and its event log. Runs on the event loop thread only."""

    def __init__(
        self,
        process_id: str,
        spawned: _Spawned,
        *,
        tty: bool,
        pipe_stdin: bool,
        notify: NotificationSink,
        limits: ProcessLimits,
        on_closed: Callable[[_Process], None],
        output_chunk_bytes: int | None = None,
        codex_0171: bool = False,
        confined: bool = False,
    ) -> None:
        self.id = process_id
        #: Started by a 0.171 request (a ``file://`` cwd): answered in 0.171's shapes.
        self.codex_0171 = codex_0171
        #: Whether a sandbox denial caused the failure (reported to 0.171 clients).
        self.sandbox_denied = False
        #: Recent ``process/write`` ids, so a retried write is not written twice.
        self.write_ids: dict[str, None] = {}
        self.popen = spawned.popen
        #: Spawned under kernel confinement (sandboxType linuxSeccomp).
        self.confined = confined
        self._lease = spawned.lease
        self.pid = spawned.popen.pid
        self.tty = tty
        self.pipe_stdin = pipe_stdin
        self._notify = notify
        self._limits = limits
        self._chunk_bytes = output_chunk_bytes or limits.output_chunk_bytes
        self._read_size = (
            self._chunk_bytes if self._chunk_bytes >= CHUNKED_READ_MIN_BYTES else READ_BYTES
        )
        self._on_closed = on_closed
        self._loop = asyncio.get_running_loop()

        self._streams = [_OutputStream(fd, name) for fd, name in spawned.outputs]
        self._stdin_fd = spawned.stdin_fd
        self._stdin_queue: deque[memoryview] = deque()
        self._stdin_pending = 0
        self._stdin_eof_requested = False
        self._stdin_writer_registered = False

        self.next_seq = 1
        # Retained output: a list with a moving head, so reads can bisect by seq.
        self._retained: list[ProcessOutputChunk] = []
        self._head = 0
        self._retained_bytes = 0
        self._dead_bytes = 0  # evicted chunks still referenced below the head
        self._max_retained_chunks = max(
            1, limits.retained_output_bytes // MIN_ACCOUNTED_CHUNK_BYTES
        )
        self.evicted_through_seq = 0

        self.exit_code: int | None = None
        self.closed = False
        self.exit_observed: asyncio.Future[None] = self._loop.create_future()
        self._pidfd: int | None = None
        self._wait_thread: threading.Thread | None = None
        self._waiters: list[asyncio.Future[None]] = []

        self._outbox: deque[tuple[str, Message, int]] = deque()
        self._outbox_bytes = 0
        self._paused = False
        self._sender_wakeup: asyncio.Future[None] | None = None
        self.sender: asyncio.Task[None] | None = None
        self.retention_timer: asyncio.TimerHandle | None = None
        self._disposed = False

    # -- lifecycle ----------------------------------------------------------------

    def begin(self) -> None:
        """Start watching output and exit, and start the notification sender."""
        self.sender = self._loop.create_task(self._send_loop(), name=f"process {self.id} notify")
        for stream in self._streams:
            assert stream.fd is not None
            self._loop.add_reader(stream.fd, self._on_readable, stream)
        try:
            self._pidfd = os.pidfd_open(self.pid)
        except (OSError, AttributeError):
            # Kernels before 5.3: a thread blocks in waitpid for this one child.
            self._wait_thread = threading.Thread(
                target=self._wait_in_thread, name=f"wait {self.pid}", daemon=True
            )
            self._wait_thread.start()
        else:
            self._loop.add_reader(self._pidfd, self._on_exit)

    def _wait_in_thread(self) -> None:
        self.popen.wait()
        with contextlib.suppress(RuntimeError):  # loop already closed
            self._loop.call_soon_threadsafe(self._on_exit)

    def kill_group(self, sig: int, *, even_if_closed: bool = False) -> None:
        """Signal the child's process group (pgid == pid: it leads its own session).

        After ``closed`` the group is usually empty and its id could in principle be
        recycled, so only teardown (``even_if_closed``) still sends: a daemonized
        grandchild that closed its stdio keeps the group id alive and must not
        outlive the session.
        """
        if self.closed and not even_if_closed:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, sig)

    def foreground_group(self) -> int:
        """The PTY's foreground process group (a shell's job), else the child's group."""
        fd = self._streams[0].fd if self.tty else None
        if fd is not None:
            with contextlib.suppress(OSError):
                group = os.tcgetpgrp(fd)
                # 0 once the session leader is gone; killpg(0) would hit our own group.
                if group > 0:
                    return group
        return self.pid

    def dispose(self) -> None:
        """Release every fd, watcher, timer and the sender (used by ``close()``)."""
        if self._disposed:
            return
        self._disposed = True
        if self._pidfd is not None:
            self._loop.remove_reader(self._pidfd)
            _close_fds([self._pidfd])
            self._pidfd = None
        if self.exit_code is None and self.popen.poll() is not None:
            self.exit_code = self._exit_code_of(self.popen.returncode)
        for stream in self._streams:
            self._close_stream(stream)
        self._close_stdin()
        if self.retention_timer is not None:
            self.retention_timer.cancel()
        if self.sender is not None:
            self.sender.cancel()
        if not self.exit_observed.done():
            self.exit_observed.set_result(None)
        self._wake_readers()
        if self._lease is not None:
            self._lease.release()

    # -- output -------------------------------------------------------------------

    def _on_readable(self, stream: _OutputStream) -> None:
        fd = stream.fd
        if fd is None:
            return
        # Large chunks are read one chunk per os.read, so no chunk is a copy sliced out
        # of a bigger read; small ones are read in bulk and sliced (fewer syscalls).
        size = self._read_size
        budget = READ_BYTES
        recorded = False
        while budget > 0:
            try:
                data = os.read(fd, size)
            except BlockingIOError:
                break
            except OSError as exc:
                # A PTY master reports EIO once every slave fd is closed: that is its EOF.
                if exc.errno != errno.EIO:
                    log.warning("process %s: reading %s failed: %s", self.id, stream.name, exc)
                data = b""
            if not data:
                self._stream_eof(stream)
                break
            self._record_output(stream.name, data)
            recorded = True
            budget -= len(data)
            if len(data) < size:
                break
        if not recorded:
            return
        self._wake_readers()
        self._wake_sender()
        if not self._paused and (
            self._outbox_bytes >= NOTIFY_HIGH_WATER_BYTES
            or len(self._outbox) >= NOTIFY_HIGH_WATER_COUNT
        ):
            self._pause_reading()

    def _record_output(self, name: OutputStream, data: bytes) -> None:
        size = self._chunk_bytes
        pieces = (
            [data] if len(data) <= size else [data[i : i + size] for i in range(0, len(data), size)]
        )
        retained = self._retained
        outbox = self._outbox
        pid = self.id
        seq = self.next_seq
        for piece in pieces:
            retained.append(ProcessOutputChunk(seq=seq, stream=name, chunk=piece))
            outbox.append(
                (
                    PROCESS_OUTPUT,
                    ProcessOutputNotification(process_id=pid, seq=seq, stream=name, chunk=piece),
                    len(piece),
                )
            )
            seq += 1
        self.next_seq = seq
        self._retained_bytes += len(data)
        self._outbox_bytes += len(data)
        self._evict()

    def _evict(self) -> None:
        limit = self._limits.retained_output_bytes
        retained = self._retained
        head = self._head
        # The newest chunk always stays, so a reader can see where retention starts.
        while (
            self._retained_bytes > limit or len(retained) - head > self._max_retained_chunks
        ) and len(retained) - head > 1:
            evicted = retained[head]
            head += 1
            self._retained_bytes -= len(evicted.chunk)
            self._dead_bytes += len(evicted.chunk)
            self.evicted_through_seq = evicted.seq
        # Evicted chunks stay referenced below the head until the list is compacted:
        # compact once they hold a quarter of the limit (so memory stays within 1.25x
        # the retention limit plus one chunk, whatever the chunk size) or outnumber
        # the live ones (so compaction stays amortized O(1) for tiny chunks).
        if self._dead_bytes > limit // 4 or (head > 1024 and head * 2 > len(retained)):
            del retained[:head]
            head = 0
            self._dead_bytes = 0
        self._head = head

    def _stream_eof(self, stream: _OutputStream) -> None:
        self._close_stream(stream)
        self._maybe_close()

    def _close_stream(self, stream: _OutputStream) -> None:
        fd = stream.fd
        if fd is None:
            return
        stream.fd = None
        self._loop.remove_reader(fd)
        if fd == self._stdin_fd:
            # The PTY master carries both directions; writes end with it.
            self._loop.remove_writer(fd)
            self._stdin_fd = None
            self._drop_stdin_queue()
        _close_fds([fd])

    def _pause_reading(self) -> None:
        self._paused = True
        for stream in self._streams:
            if stream.fd is not None:
                self._loop.remove_reader(stream.fd)

    def _resume_reading(self) -> None:
        self._paused = False
        for stream in self._streams:
            if stream.fd is not None:
                self._loop.add_reader(stream.fd, self._on_readable, stream)

    # -- exit and close -----------------------------------------------------------

    def _exit_code_of(self, returncode: int) -> int:
        # Popen reports death by signal N as -N. Codex 0.133 reports -1 for it, 0.171
        # 128 + N, as a shell does (for a PTY child 0.171 says 1; we say 128 + N too).
        if returncode >= 0:
            return returncode
        return SIGNAL_EXIT_BASE - returncode if self.codex_0171 else NO_EXIT_CODE

    def _on_exit(self) -> None:
        if self._disposed or self.exit_code is not None:
            return
        returncode = self.popen.poll()
        if returncode is None:
            return  # not reaped yet (spurious wakeup); the pidfd stays readable
        if self._pidfd is not None:
            self._loop.remove_reader(self._pidfd)
            _close_fds([self._pidfd])
            self._pidfd = None
        # Everything the child wrote is in the pipes now; sequence it before `exited`.
        for stream in self._streams:
            self._drain(stream)
        seq = self.next_seq
        self.next_seq = seq + 1
        self.exit_code = self._exit_code_of(returncode)
        if self.confined:
            # As 0.171, whose sandboxed command is the init of its own pid namespace:
            # when it exits, what it left running in the background goes with it.
            self.kill_group(signal_module.SIGKILL)
        exited = ProcessExitedNotification(process_id=self.id, seq=seq, exit_code=self.exit_code)
        if self.confined:
            # Judged as 0.171 does, with a death by signal N counted as 128 + N.
            shell_code = returncode if returncode >= 0 else SIGNAL_EXIT_BASE - returncode
            output = (chunk.chunk for chunk in self._retained[self._head :])
            self.sandbox_denied = looks_like_sandbox_denial(shell_code, output)
        if self.codex_0171:
            exited.sandbox_denied = self.sandbox_denied
        self._enqueue(PROCESS_EXITED, exited)
        if not self.exit_observed.done():
            self.exit_observed.set_result(None)
        self._maybe_close()
        self._wake_readers()

    def _drain(self, stream: _OutputStream) -> None:
        budget = EXIT_DRAIN_BYTES
        while stream.fd is not None and budget > 0:
            try:
                data = os.read(stream.fd, READ_BYTES)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not data:
                self._close_stream(stream)
                return
            budget -= len(data)
            self._record_output(stream.name, data)

    def _maybe_close(self) -> None:
        if self.closed or self.exit_code is None:
            return
        if any(stream.fd is not None for stream in self._streams):
            return
        self.closed = True
        seq = self.next_seq
        self.next_seq = seq + 1
        self._enqueue(PROCESS_CLOSED, ProcessClosedNotification(process_id=self.id, seq=seq))
        self._close_stdin()
        self._wake_readers()
        if self._lease is not None:
            self._lease.release()
        self._on_closed(self)

    # -- notifications ------------------------------------------------------------

    def _enqueue(self, method: str, message: Message) -> None:
        self._outbox.append((method, message, 0))
        self._wake_sender()

    def _wake_sender(self) -> None:
        wakeup = self._sender_wakeup
        if wakeup is not None and not wakeup.done():
            wakeup.set_result(None)

    async def _send_loop(self) -> None:
        outbox = self._outbox
        notify = self._notify
        while True:
            while outbox:
                method, message, size = outbox.popleft()
                self._outbox_bytes -= size
                if self._paused and self._outbox_bytes <= NOTIFY_LOW_WATER_BYTES:
                    self._resume_reading()
                try:
                    await notify(method, message)
                except Exception:
                    # A failing sink must not stall the process: the event stays
                    # retained for process/read.
                    log.exception("process %s: %s notification failed", self.id, method)
                if method == PROCESS_CLOSED:
                    return
            self._sender_wakeup = self._loop.create_future()
            await self._sender_wakeup
            self._sender_wakeup = None

    # -- reads ----------------------------------------------------------------------

    def _wake_readers(self) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    async def wait_for_event(self, timeout_s: float) -> None:
        waiter = self._loop.create_future()
        self._waiters.append(waiter)
        try:
            await asyncio.wait((waiter,), timeout=timeout_s)
        finally:
            if not waiter.done():
                waiter.cancel()
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)

    def snapshot(self, after_seq: int, max_bytes: int | None) -> ProcessReadResult:
        retained = self._retained
        start = bisect_right(retained, after_seq, lo=self._head, key=_seq_of)
        chunks: list[ProcessOutputChunk] = []
        total = 0
        limited = False
        for index in range(start, len(retained)):
            chunk = retained[index]
            size = len(chunk.chunk)
            # Whole chunks only; the first one is always included.
            if max_bytes is not None and chunks and total + size > max_bytes:
                limited = True
                break
            chunks.append(chunk)
            total += size
            if max_bytes is not None and total >= max_bytes:
                limited = True
                break
        if chunks and (limited or not self.codex_0171):
            # 0.133: after the last chunk returned. 0.171 does so only when maxBytes
            # cut the read short; otherwise it counts the exit and close events too.
            next_seq = chunks[-1].seq + 1
        else:
            next_seq = self.next_seq
        result = ProcessReadResult(
            chunks=chunks,
            next_seq=next_seq,
            exited=self.exit_code is not None,
            exit_code=self.exit_code,
            closed=self.closed,
            failure=None,
        )
        if self.codex_0171:
            result.sandbox_denied = self.sandbox_denied
        if after_seq < self.evicted_through_seq and chunks:
            result.first_retained_seq = chunks[0].seq
        return result

    # -- stdin ----------------------------------------------------------------------

    def write_stdin(self, data: bytes) -> WriteStatus:
        fd = self._stdin_fd
        if fd is None or self._stdin_eof_requested:
            return "stdinClosed"
        if not data:
            if not self.tty:
                self._stdin_eof_requested = True
                if not self._stdin_queue:
                    self._close_stdin()
            return "accepted"
        if self._stdin_pending + len(data) > self._limits.max_pending_stdin_bytes:
            raise InvalidRequest(
                f"process {self.id} stdin buffer is full: {self._stdin_pending} bytes "
                f"pending, limit is {self._limits.max_pending_stdin_bytes} bytes"
            )
        view = memoryview(data)
        if not self._stdin_queue:
            try:
                written = os.write(fd, view)
            except BlockingIOError:
                written = 0
            except OSError:
                self._stdin_broken()
                return "stdinClosed"
            if written == len(view):
                return "accepted"
            view = view[written:]
        self._stdin_queue.append(view)
        self._stdin_pending += len(view)
        if not self._stdin_writer_registered:
            self._stdin_writer_registered = True
            self._loop.add_writer(fd, self._on_writable)
        return "accepted"

    def _on_writable(self) -> None:
        fd = self._stdin_fd
        queue = self._stdin_queue
        while fd is not None and queue:
            view = queue[0]
            try:
                written = os.write(fd, view)
            except BlockingIOError:
                return
            except OSError:
                self._stdin_broken()
                return
            self._stdin_pending -= written
            if written == len(view):
                queue.popleft()
            else:
                queue[0] = view[written:]
        if fd is not None:
            self._loop.remove_writer(fd)
        self._stdin_writer_registered = False
        if self._stdin_eof_requested:
            self._close_stdin()

    def _stdin_broken(self) -> None:
        # The reader end is gone (EPIPE) or the PTY hung up (EIO).
        self._drop_stdin_queue()
        if self.tty:
            # The master also carries output; its reader closes it at EOF.
            self._stdin_eof_requested = True
        else:
            self._close_stdin()

    def _drop_stdin_queue(self) -> None:
        if self._stdin_writer_registered and self._stdin_fd is not None:
            self._loop.remove_writer(self._stdin_fd)
        self._stdin_writer_registered = False
        self._stdin_queue.clear()
        self._stdin_pending = 0

    def _close_stdin(self) -> None:
        fd = self._stdin_fd
        if fd is None:
            return
        self._drop_stdin_queue()
        if self.tty:
            if all(stream.fd != fd for stream in self._streams):
                self._stdin_fd = None
            return  # the master is closed with its output stream
        self._stdin_fd = None
        _close_fds([fd])

    # -- pty ------------------------------------------------------------------------

    def resize(self, rows: int, cols: int) -> None:
        fd = self._streams[0].fd
        if fd is None:
            raise InvalidRequest(f"process {self.id} is closed; its pty is gone")
        # The kernel sends SIGWINCH to the PTY's foreground process group.
        _set_winsize(fd, rows, cols)


# --- the manager -------------------------------------------------------------------


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
        self._processes: dict[str, _Process | _Starting] = {}
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
        if p.metadata is not None and p.metadata.thread_id is not None:
            problem = uuid_error(p.metadata.thread_id)
            if problem is not None:
                raise InvalidParams(problem)
        if p.sandbox is not None:
            parse_sandbox(p.sandbox)  # the shape: -32602 as Codex, e.g. for `{}`
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
        cwd = resolve_cwd(p.cwd)
        codex_0171 = speaks_uri(p.cwd)
        # Codex 0.171's sandbox intent: enforced in the child, or the start is
        # refused (never run with less confinement than asked).
        try:
            confinement = self._enforcer.prepare(resolve_policy(parse_sandbox(p.sandbox)))
        except UnsupportedPolicy as refused:
            if codex_0171:
                refused.data = {"kind": "sandboxUnavailable"}
            raise
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
        process = _Process(
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
            # close() ran while we were spawning: do not leak the child.
            process.kill_group(signal_module.SIGKILL)
            process.begin()
            await asyncio.wait((process.exit_observed,), timeout=CLOSE_REAP_TIMEOUT_S)
            process.dispose()
            if process.sender is not None:
                await asyncio.gather(process.sender, return_exceptions=True)
            raise InvalidRequest("the session's process manager is shut down")
        self._processes[process_id] = process
        process.begin()
        result = ProcessStartResult(process_id=process_id)
        if codex_0171:
            result.sandbox_type = "none" if confinement is None else confinement.sandbox_type
        return result

    async def _spawn(
        self, p: ProcessStartParams, cwd: str, env: dict[str, str], confinement: Confinement | None
    ) -> _Spawned:
        # Synchronous on purpose: a vfork spawn takes about a millisecond, less than a
        # thread hand-off would add (a sandboxed one joins its confining thread). Kept
        # as a coroutine so the "starting" window is a real await point (and tests can
        # widen it).
        return _spawn(p, cwd, env, confinement, self._enforcer)

    def _make_room(self) -> None:
        if len(self._processes) < self._limits.max_processes:
            return
        # Closed entries are only kept for late reads: the oldest gives way first.
        for process_id, entry in self._processes.items():
            if isinstance(entry, _Process) and entry.closed:
                self._forget(process_id, entry)
                return
        raise InvalidRequest(
            f"too many processes: limit is {self._limits.max_processes} per session"
        )

    def _schedule_expiry(self, process: _Process) -> None:
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

    def _forget(self, process_id: str, process: _Process) -> None:
        if self._processes.get(process_id) is process:
            del self._processes[process_id]
        if process.retention_timer is not None:
            process.retention_timer.cancel()
            process.retention_timer = None

    def _get(self, process_id: str) -> _Process:
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
        if not isinstance(entry, _Process) or entry.exit_code is not None:
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
        if not isinstance(entry, _Process):
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
            processes = [e for e in self._processes.values() if isinstance(e, _Process)]
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
