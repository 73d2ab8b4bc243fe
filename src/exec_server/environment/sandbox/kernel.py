"""What this machine can confine with: probed once per process.

* Landlock and its ABI (3 or later: the first that covers truncation);
* seccomp, through libseccomp;
* a private mount namespace for carve-outs: directly with ``CAP_SYS_ADMIN`` (a
  root server), else inside a new user namespace where the kernel lets an
  unprivileged process make one (tried for real: some kernels, distributions and
  container runtimes forbid it).

A ``*_problem`` says why a mechanism is unusable; it ends up, word for word, in
the fail-closed error of a sandbox that needs it.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import tempfile
from dataclasses import dataclass
from typing import Literal

from . import landlock
from .seccomp import seccomp_program
from .syscalls import PR_GET_SECCOMP, enter_user_namespace, libc

#: Landlock ABI needed for file restrictions: 3 is the first that handles truncate.
MIN_LANDLOCK_ABI = 3

_CAP_SYS_ADMIN = 21
_MS_NOSUID = 0x2
_MS_NODEV = 0x4

#: How a private mount namespace is made: by a privileged server in the confining
#: thread, or in the child right after fork, inside a new user namespace.
MountNamespaceVia = Literal["privileged", "user_namespace"]


@dataclass(frozen=True)
class KernelSupport:
    """The confinement mechanisms available here (``probe_kernel_support``).

    A ``*_problem`` is why a mechanism is unusable (``None``: usable); it ends up
    in the fail-closed error.
    """

    landlock_abi: int
    landlock_problem: str | None = None
    seccomp_problem: str | None = None
    #: Why a private mount namespace cannot be made (``None``: it can) ...
    mount_namespace_problem: str | None = None
    #: ... and how it is made when it can.
    mount_namespace_via: MountNamespaceVia = "privileged"


@functools.lru_cache(maxsize=1)
def probe_kernel_support() -> KernelSupport:
    """Probe Landlock, seccomp and mount namespaces once per process."""
    abi, landlock_problem = _probe_landlock()
    via, mount_problem = _probe_mount_namespace()
    return KernelSupport(
        landlock_abi=abi,
        landlock_problem=landlock_problem,
        seccomp_problem=_probe_seccomp(),
        mount_namespace_problem=mount_problem,
        mount_namespace_via=via,
    )


def _probe_landlock() -> tuple[int, str | None]:
    try:
        abi = landlock.abi_version()
    except OSError as exc:
        return 0, f"Landlock is not available ({exc.strerror})"
    if abi < MIN_LANDLOCK_ABI:
        return abi, f"Landlock ABI {abi} is too old (need >= {MIN_LANDLOCK_ABI})"
    return abi, None


def _probe_seccomp() -> str | None:
    try:
        seccomp_program(restrict_network=True)
    except Exception as exc:
        return f"seccomp through libseccomp is not available ({exc})"
    if libc().prctl(PR_GET_SECCOMP, 0, 0, 0, 0) < 0:
        return f"the kernel has no seccomp ({os.strerror(ctypes.get_errno())})"
    return None


def _probe_mount_namespace() -> tuple[MountNamespaceVia, str | None]:
    try:
        if has_cap_sys_admin():
            return "privileged", None
    except (OSError, ValueError) as exc:
        return "privileged", f"cannot read this process's capabilities ({exc})"
    problem = probe_user_namespace()
    if problem is None:
        return "user_namespace", None
    return "user_namespace", (
        "exec-server is not root (it lacks CAP_SYS_ADMIN) and cannot make one in a "
        f"user namespace instead: {problem}"
    )


def has_cap_sys_admin() -> bool:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("CapEff:"):
                return bool(int(line.split()[1], 16) >> _CAP_SYS_ADMIN & 1)
    return False


def probe_user_namespace() -> str | None:
    """Try, in a forked child, what confining through a user namespace needs: the
    namespaces, the id maps, and a mount. ``None`` if it all worked, else why not
    (the kernel's error, and the setting that usually causes it)."""
    target = tempfile.mkdtemp(prefix="exec-server-userns-probe-")
    read_end, write_end = os.pipe()
    try:
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child, reported through the pipe
            status = 1
            try:
                enter_user_namespace()
                flags = _MS_NOSUID | _MS_NODEV
                result = libc().mount(b"tmpfs", os.fsencode(target), b"tmpfs", flags, b"size=4k")
                if result < 0:
                    code = ctypes.get_errno()
                    raise OSError(code, f"mount tmpfs: {os.strerror(code)}")
                status = 0
            except BaseException as exc:
                with contextlib.suppress(BaseException):
                    os.write(write_end, describe(exc).encode()[:500])
            finally:
                os._exit(status)
        os.close(write_end)
        write_end = -1
        message = b""
        while chunk := os.read(read_end, 4096):
            message += chunk
        _, status = os.waitpid(pid, 0)
    except OSError as exc:
        return f"probing failed ({exc})"
    finally:
        os.close(read_end)
        if write_end >= 0:
            os.close(write_end)
        with contextlib.suppress(OSError):
            os.rmdir(target)
    if os.waitstatus_to_exitcode(status) == 0:
        return None
    reason = message.decode(errors="replace") or "the probe child failed"
    return f"{reason} ({_userns_hint()})"


def describe(exc: BaseException) -> str:
    """An exception as an error message names it (``OSError`` without "[Errno N]")."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc)


def _userns_hint() -> str:
    """The sysctl that usually forbids unprivileged user namespaces, as set here."""
    for path, wanted in (
        ("/proc/sys/kernel/unprivileged_userns_clone", "1"),
        ("/proc/sys/user/max_user_namespaces", None),
        ("/proc/sys/kernel/apparmor_restrict_unprivileged_userns", "0"),
    ):
        try:
            with open(path, encoding="ascii") as f:
                value = f.read().strip()
        except OSError:
            continue
        name = path.removeprefix("/proc/sys/").replace("/", ".")
        if (wanted is not None and value != wanted) or (wanted is None and value == "0"):
            return f"{name} is {value}"
    return "unprivileged user namespaces are not allowed here"
