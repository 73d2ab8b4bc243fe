"""One child process of a session: its fds, its events, its stdin and its exit.

A :class:`ChildProcess` owns, for one spawned child:

* the OS resources: the child (leading its own session and process group), its
  output pipes or PTY master, its stdin pipe, and a pidfd that reports its exit;
* the events: one ``seq`` counter from 1 shared by output chunks, the exit event
  and the closed event; the retained output for ``process/read``
  (:class:`~.output_log.OutputLog`); the notifications pushed to the session's
  :data:`NotificationSink`;
* the lifecycle: ``closed`` once the exit is known *and* every output stream hit
  EOF.

The data path avoids a task per read: output fds are watched with
``loop.add_reader`` and read in large non-blocking reads, split into chunks of at
most the chunk size, sequenced and retained at once (so ``process/read`` sees them
even while notifications are stalled), and queued to one sender task that awaits
the sink (:class:`~.notification_outbox.NotificationOutbox`). When that queue grows
past a high-water mark the readers are paused, so a slow sink stalls that child alone.
Runs on the event loop thread only.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import signal as signal_module
import threading
from collections.abc import Callable
from dataclasses import dataclass

from ..protocol.errors import InvalidRequest
from ..protocol.messages import (
    PROCESS_CLOSED,
    PROCESS_EXITED,
    PROCESS_OUTPUT,
    OutputStream,
    ProcessClosedNotification,
    ProcessExitedNotification,
    ProcessOutputChunk,
    ProcessOutputNotification,
    ProcessReadResult,
    WriteStatus,
)
from .notification_outbox import NotificationOutbox, NotificationSink
from .output_log import OutputLog
from .sandbox.denial import looks_like_sandbox_denial
from .spawn import PIPE_CAPACITY_BYTES, Spawned, close_fds, set_winsize
from .stdin_writer import StdinWriter

log = logging.getLogger(__name__)

#: Largest output chunk; Codex 0.133 never sends more than 8 KiB raw per chunk.
OUTPUT_CHUNK_BYTES = 8192
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
#: On exit, read at most this much per stream before recording the exit, so output
#: the child wrote before dying gets a lower seq than ``exited``, while a grandchild
#: that keeps writing cannot delay the exit event forever.
EXIT_DRAIN_BYTES = PIPE_CAPACITY_BYTES + READ_BYTES

#: Codex 0.133 reports -1 when a process has no exit code (it was killed by a signal).
NO_EXIT_CODE = -1
#: Codex 0.171 reports death by signal N as 128 + N.
SIGNAL_EXIT_BASE = 128


@dataclass(frozen=True)
class ProcessLimits:
    """Per-session process limits (all enforced; see the module constants)."""

    output_chunk_bytes: int = OUTPUT_CHUNK_BYTES
    retained_output_bytes: int = RETAINED_OUTPUT_BYTES
    closed_process_retention_s: float = CLOSED_PROCESS_RETENTION_S
    max_processes: int = MAX_PROCESSES
    max_pending_stdin_bytes: int = MAX_PENDING_STDIN_BYTES


DEFAULT_PROCESS_LIMITS = ProcessLimits()


class _OutputStream:
    __slots__ = ("fd", "name")

    def __init__(self, fd: int, name: OutputStream) -> None:
        self.fd: int | None = fd
        self.name: OutputStream = name


class ChildProcess:
    """A spawned child and its event log. Runs on the event loop thread only."""

    def __init__(
        self,
        process_id: str,
        spawned: Spawned,
        *,
        tty: bool,
        pipe_stdin: bool,
        notify: NotificationSink,
        limits: ProcessLimits,
        on_closed: Callable[[ChildProcess], None],
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
        self._limits = limits
        self._chunk_bytes = output_chunk_bytes or limits.output_chunk_bytes
        self._read_size = (
            self._chunk_bytes if self._chunk_bytes >= CHUNKED_READ_MIN_BYTES else READ_BYTES
        )
        self._on_closed = on_closed
        self._loop = asyncio.get_running_loop()

        self._streams = [_OutputStream(fd, name) for fd, name in spawned.outputs]
        self.stdin = StdinWriter(
            self._loop,
            spawned.stdin_fd,
            tty=tty,
            max_pending_bytes=limits.max_pending_stdin_bytes,
            process_id=process_id,
        )

        #: The seq of the next event (output chunk, exit or close), from 1.
        self.next_seq = 1
        self.output = OutputLog(limits.retained_output_bytes)

        self.exit_code: int | None = None
        self.closed = False
        self.exit_observed: asyncio.Future[None] = self._loop.create_future()
        self._pidfd: int | None = None
        self._wait_thread: threading.Thread | None = None
        self._waiters: list[asyncio.Future[None]] = []

        self.notifications = NotificationOutbox(
            self._loop, notify, process_id, self._resume_reading
        )
        self.retention_timer: asyncio.TimerHandle | None = None
        self._disposed = False

    @property
    def sender(self) -> asyncio.Task[None] | None:
        """The task that sends this process's notifications (see :attr:`notifications`)."""
        return self.notifications.task

    # -- lifecycle ----------------------------------------------------------------

    def begin(self) -> None:
        """Start watching output and exit, and start the notification sender."""
        self.notifications.start()
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
            close_fds([self._pidfd])
            self._pidfd = None
        if self.exit_code is None and self.popen.poll() is not None:
            self.exit_code = self._exit_code_of(self.popen.returncode)
        for stream in self._streams:
            self._close_stream(stream)
        self.stdin.close()
        if self.retention_timer is not None:
            self.retention_timer.cancel()
        self.notifications.cancel()
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
        self.notifications.wake()
        if self.notifications.should_pause():
            self._pause_reading()

    def _record_output(self, name: OutputStream, data: bytes) -> None:
        size = self._chunk_bytes
        pieces = (
            [data] if len(data) <= size else [data[i : i + size] for i in range(0, len(data), size)]
        )
        output = self.output
        add_notification = self.notifications.add_output
        pid = self.id
        seq = self.next_seq
        for piece in pieces:
            output.append(ProcessOutputChunk(seq=seq, stream=name, chunk=piece))
            add_notification(
                PROCESS_OUTPUT,
                ProcessOutputNotification(process_id=pid, seq=seq, stream=name, chunk=piece),
                len(piece),
            )
            seq += 1
        self.next_seq = seq

    def _stream_eof(self, stream: _OutputStream) -> None:
        self._close_stream(stream)
        self._maybe_close()

    def _close_stream(self, stream: _OutputStream) -> None:
        fd = stream.fd
        if fd is None:
            return
        stream.fd = None
        self._loop.remove_reader(fd)
        if fd == self.stdin.fd:
            # The PTY master carries both directions; writes end with it.
            self.stdin.master_closed()
        close_fds([fd])

    def _pause_reading(self) -> None:
        for stream in self._streams:
            if stream.fd is not None:
                self._loop.remove_reader(stream.fd)

    def _resume_reading(self) -> None:
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
            close_fds([self._pidfd])
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
            self.sandbox_denied = looks_like_sandbox_denial(shell_code, self.output.payloads())
        if self.codex_0171:
            exited.sandbox_denied = self.sandbox_denied
        self.notifications.add(PROCESS_EXITED, exited)
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
        self.notifications.add(
            PROCESS_CLOSED, ProcessClosedNotification(process_id=self.id, seq=seq)
        )
        self.stdin.close()
        self._wake_readers()
        if self._lease is not None:
            self._lease.release()
        self._on_closed(self)

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
        """``process/read``'s answer now: retained chunks after ``after_seq``."""
        read = self.output.read(after_seq, max_bytes)
        chunks = read.chunks
        if chunks and (read.limited or not self.codex_0171):
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
        if read.first_retained_seq is not None:
            result.first_retained_seq = read.first_retained_seq
        return result

    # -- stdin ----------------------------------------------------------------------

    def write_stdin(self, data: bytes) -> WriteStatus:
        return self.stdin.write(data)

    # -- pty ------------------------------------------------------------------------

    def resize(self, rows: int, cols: int) -> None:
        fd = self._streams[0].fd
        if fd is None:
            raise InvalidRequest(f"process {self.id} is closed; its pty is gone")
        # The kernel sends SIGWINCH to the PTY's foreground process group.
        set_winsize(fd, rows, cols)
