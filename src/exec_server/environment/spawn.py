"""Starting a child: fork/exec with pipes or a PTY, confined when asked.

The child leads its own session and process group (``start_new_session``). Pipes
keep ``vfork`` (no ``preexec_fn``, so CPython can use it: about 1 ms per spawn); a
PTY needs code in the child (the terminal becomes its controlling tty), so it forks.
A confined child is launched through the :class:`SandboxEnforcer` (from a confined
thread, or with its confinement run in the forked child). Failures carry the OS
error as Rust prints it on Codex's musl build, and for 0.171 requests
``data.kind`` (``spawnNotFound``, ``spawnPermissionDenied``, ``spawnFailed``,
``sandboxUnavailable``).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import struct
import subprocess
import termios
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from ..protocol.errors import InternalError
from ..protocol.messages import OutputStream, ProcessStartParams
from ..protocol.path_uri import speaks_uri
from .rust_compat import os_error_text
from .sandbox import UnsupportedPolicy
from .sandbox.confinement import DEFAULT_ENFORCER, PreexecFn, SandboxEnforcer
from .sandbox.placeholders import ConfinementLease
from .sandbox.plan import Confinement

#: Requested capacity of output pipes (Linux F_SETPIPE_SZ); a bigger pipe lets a fast
#: writer run longer between our wakeups. Best effort: the per-user pipe budget may
#: refuse it, and then the 64 KiB default stays.
PIPE_CAPACITY_BYTES = 1024 * 1024
#: Initial PTY window when ``process/start`` gives no size (Codex uses 24x80).
DEFAULT_PTY_ROWS = 24
DEFAULT_PTY_COLS = 80


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


def set_winsize(fd: int, rows: int, cols: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


def _grow_pipe(fd: int) -> None:
    with contextlib.suppress(OSError, AttributeError):
        fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, PIPE_CAPACITY_BYTES)


def close_fds(fds: Iterable[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


@dataclass
class Spawned:
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
#: Makes the ``Popen`` of a spawn, given extra code to run in the child before exec.
_PopenFactory = Callable[[PreexecFn | None], _Popen]
#: How ``_spawn_*`` run their ``Popen``: directly, or confined by the enforcer.
_Launcher = Callable[[_PopenFactory], _Popen]


def _launch_directly(popen: _PopenFactory) -> _Popen:
    return popen(None)


def _then(first: PreexecFn, second: PreexecFn | None) -> PreexecFn:
    if second is None:
        return first

    def both() -> None:
        first()
        second()

    return both


def spawn_child(
    params: ProcessStartParams,
    cwd: str,
    env: dict[str, str],
    confinement: Confinement | None = None,
    enforcer: SandboxEnforcer = DEFAULT_ENFORCER,
) -> Spawned:
    """Fork/exec the child; raises InternalError with the OS error text on failure.

    With a ``confinement`` the child is spawned from a thread confined by it (see
    :mod:`.sandbox.confinement`); if that cannot be done the start is refused.
    """
    program = params.argv[0]
    args = [params.arg0 if params.arg0 is not None else program, *params.argv[1:]]
    leases: list[ConfinementLease] = []

    def launch_confined(popen: _PopenFactory) -> _Popen:
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
) -> Spawned:
    rows = params.rows if isinstance(params.rows, int) else DEFAULT_PTY_ROWS
    cols = params.cols if isinstance(params.cols, int) else DEFAULT_PTY_COLS
    master, slave = os.openpty()
    try:
        set_winsize(slave, rows, cols)
        # preexec_fn forces fork() instead of vfork(); TIOCSCTTY needs code in the
        # child and the alternatives (posix_spawn) cannot set a cwd.
        popen = launch(
            lambda preexec: subprocess.Popen(
                args,
                executable=program,
                stdin=slave,
                stdout=slave,
                stderr=slave,
                cwd=cwd,
                env=env,
                start_new_session=True,
                preexec_fn=_then(_acquire_controlling_tty, preexec),
            )
        )
    except BaseException:
        os.close(master)
        raise
    finally:
        # Our copy of the slave must go, or the master never reports EOF (EIO).
        os.close(slave)
    os.set_blocking(master, False)
    return Spawned(popen, [(master, "pty")], master)


def _spawn_pipes(
    params: ProcessStartParams,
    program: str,
    args: list[str],
    cwd: str,
    env: dict[str, str],
    launch: _Launcher = _launch_directly,
) -> Spawned:
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
        # No preexec_fn unless confinement needs one (a user namespace), so CPython
        # can use vfork(): spawning stays around 1 ms.
        popen = launch(
            lambda preexec: subprocess.Popen(
                args,
                executable=program,
                stdin=stdin,
                stdout=out_w,
                stderr=err_w,
                cwd=cwd,
                env=env,
                start_new_session=True,
                preexec_fn=preexec,
            )
        )
    except BaseException:
        close_fds(parent_fds)
        raise
    finally:
        close_fds(child_fds)
    for fd in parent_fds:
        os.set_blocking(fd, False)
    _grow_pipe(out_r)
    _grow_pipe(err_r)
    return Spawned(popen, [(out_r, "stdout"), (err_r, "stderr")], stdin_w)
