"""Kernel confinement of a child process, built from a :class:`SandboxPolicy`.

Codex 0.171 runs a ``workspace-write`` command in a bubblewrap namespace plus a
seccomp filter and answers ``sandboxType: "linuxSeccomp"`` (probed). We get the same
confinement from the kernel directly:

* **Landlock** (ABI >= 3, so truncation is covered too) grants the policy's
  readable roots read/execute and its writable roots everything; whatever no entry
  grants is denied. Landlock also forbids mount changes and ptrace or
  ``/proc/<pid>`` access to processes outside the sandbox, and (ABI >= 6) signals
  to them.
* **A private mount namespace** for what Landlock cannot say. Landlock rights
  only add up along a path, so a read-only ``.git`` inside a writable workspace,
  or a ``none`` directory inside a readable root, is made with mounts: a
  read-only bind mount of the carve-out onto itself, or an empty, inaccessible
  read-only tmpfs (an empty mode-000 file for a file). A protected name that does
  not exist yet (``.git``, ``.agents``, ``.codex``, ``.aws`` under a writable
  root) gets an empty placeholder directory while the command runs, as 0.171
  does (probed: it creates and later removes them too), so it cannot be created
  behind the policy's back. Needs ``CAP_SYS_ADMIN``.
* **seccomp** (through libseccomp): with ``network: "restricted"`` the filter
  0.171 installs, read back from its sandboxed child: ``socket``/``socketpair``
  only for ``AF_UNIX``; ``connect``, ``bind``, ``listen``, ``accept*``,
  ``send{to,mmsg}``, ``recvmmsg``, ``get/setsockopt``, ``getsockname``,
  ``getpeername``, ``shutdown``, ``ptrace``, ``process_vm_*``, ``request_key``
  and ``io_uring_*`` fail with EPERM. Otherwise the non-network part of that list.
* **No privileges**: ``no_new_privs``, and a root server's child loses every
  capability (bounding set included, so exec does not give them back), as in
  0.171.

All of it is per thread in Linux, so it is applied in a throwaway thread, which
then spawns the child (vfork and exec, or fork for a PTY) and ends: the child
inherits the confinement, nothing else in the server is touched, and spawning
stays cheap (see ``benchmarks/sandbox_bench.py``).

**Fail closed.** :meth:`SandboxEnforcer.prepare` refuses (raising
:class:`UnsupportedPolicy`, -32603, with the reason) when the policy asks for
something this machine cannot enforce: no Landlock or too old an ABI, no seccomp,
carve-outs without ``CAP_SYS_ADMIN``, a carve-out with a more permissive entry
beneath it. Any failure while confining happens before the child exists and
refuses the same way: a command never runs with less confinement than asked.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import logging
import os
import posixpath
import tempfile
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from . import landlock
from .policy import Access, FsSandbox, SandboxPolicy, UnsupportedPolicy

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Landlock ABI needed for file restrictions: 3 is the first that handles truncate.
MIN_LANDLOCK_ABI = 3
#: What ``process/start`` reports for a confined child (0.171's name for Linux).
CONFINED_SANDBOX_TYPE: Literal["linuxSeccomp"] = "linuxSeccomp"

#: Character devices a confined command may open read-write wherever the policy
#: puts ``/dev`` (0.171 mounts the same set writable: "linuxRootWritePreservesDevices").
WRITABLE_DEVICES = (
    "/dev/null",
    "/dev/zero",
    "/dev/full",
    "/dev/random",
    "/dev/urandom",
    "/dev/tty",
    "/dev/ptmx",
    "/dev/pts",
)

#: Syscalls denied (EPERM) for every confined child, and with a restricted network.
BASE_DENIED_SYSCALLS = (
    "ptrace",
    "process_vm_readv",
    "process_vm_writev",
    "request_key",
    "io_uring_setup",
    "io_uring_enter",
    "io_uring_register",
)
NETWORK_DENIED_SYSCALLS = (
    "connect",
    "accept",
    "accept4",
    "bind",
    "listen",
    "getsockname",
    "getpeername",
    "shutdown",
    "sendto",
    "sendmmsg",
    "recvmmsg",
    "getsockopt",
    "setsockopt",
)
#: Socket-creating syscalls allowed only for this address family.
UNIX_ONLY_SYSCALLS = ("socket", "socketpair")

# Linux constants (x86-64 / aarch64 share these).
_CLONE_NEWNS = 0x00020000
_MS_RDONLY = 0x1
_MS_NOSUID = 0x2
_MS_NODEV = 0x4
_MS_NOEXEC = 0x8
_MS_REMOUNT = 0x20
_MS_BIND = 0x1000
_MS_REC = 0x4000
_MS_PRIVATE = 0x40000
_PR_CAP_AMBIENT = 47
_PR_CAP_AMBIENT_CLEAR_ALL = 4
_PR_GET_SECCOMP = 21
_PR_SET_SECCOMP = 22
_SECCOMP_MODE_FILTER = 2
_PR_SET_NO_NEW_PRIVS = 38
_PR_SET_SECUREBITS = 28
# NOROOT, NO_SETUID_FIXUP, KEEP_CAPS and NO_CAP_AMBIENT_RAISE, all locked: exec no
# longer makes uid 0 privileged, and nothing can undo that.
_LOCKED_SECUREBITS = 0b11111111
_LINUX_CAPABILITY_VERSION_3 = 0x20080522
_CAP_SYS_ADMIN = 21


# --- what this machine can do ----------------------------------------------------------


@dataclass(frozen=True)
class KernelSupport:
    """The confinement mechanisms available here (``probe_kernel_support``).

    A ``*_problem`` is why a mechanism is unusable (``None``: usable); it ends up
    in the fail-closed error.
    """

    landlock_abi: int
    landlock_problem: str | None = None
    seccomp_problem: str | None = None
    #: Why a private mount namespace cannot be made (``None``: it can).
    mount_namespace_problem: str | None = None


@functools.lru_cache(maxsize=1)
def probe_kernel_support() -> KernelSupport:
    """Probe Landlock, seccomp and ``CAP_SYS_ADMIN`` once per process."""
    abi, landlock_problem = _probe_landlock()
    return KernelSupport(
        landlock_abi=abi,
        landlock_problem=landlock_problem,
        seccomp_problem=_probe_seccomp(),
        mount_namespace_problem=_probe_mount_namespace(),
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
        _seccomp_program(restrict_network=True)
    except Exception as exc:
        return f"seccomp through libseccomp is not available ({exc})"
    libc = _libc()
    if libc.prctl(_PR_GET_SECCOMP, 0, 0, 0, 0) < 0:
        return f"the kernel has no seccomp ({os.strerror(ctypes.get_errno())})"
    return None


def _probe_mount_namespace() -> str | None:
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("CapEff:"):
                    if int(line.split()[1], 16) >> _CAP_SYS_ADMIN & 1:
                        return None
                    break
    except (OSError, ValueError) as exc:
        return f"cannot read this process's capabilities ({exc})"
    return "exec-server lacks CAP_SYS_ADMIN (run it as root)"


# --- the plan ------------------------------------------------------------------------------


MountKind = Literal["read_only", "hide_dir", "hide_file"]


@dataclass(frozen=True)
class Mount:
    """One mount in the child's private namespace, applied in list order."""

    kind: MountKind
    path: str


@dataclass(frozen=True)
class Confinement:
    """Everything to apply before the child of one ``process/start`` execs."""

    #: (path, allowed Landlock access bits); empty when files are not restricted.
    landlock_rules: tuple[tuple[str, int], ...]
    restricts_files: bool
    restricts_network: bool
    mounts: tuple[Mount, ...] = ()
    #: Missing protected paths to create (empty directories) for the mounts.
    placeholders: tuple[str, ...] = ()
    landlock_abi: int = 0

    @property
    def sandbox_type(self) -> Literal["linuxSeccomp"]:
        return CONFINED_SANDBOX_TYPE


def _read_rights() -> int:
    return landlock.READ_RIGHTS


def _device_rights() -> int:
    return (
        landlock.READ_FILE
        | landlock.WRITE_FILE
        | landlock.READ_DIR
        | landlock.TRUNCATE
        | landlock.IOCTL_DEV
    )


def _file_rights() -> int:
    return landlock.FILE_RIGHTS


def _all_rights(abi: int) -> int:
    return landlock.fs_rights_for_abi(abi)


_RANK = {Access.NONE: 0, Access.READ: 1, Access.WRITE: 2}


def plan_confinement(policy: SandboxPolicy, support: KernelSupport) -> Confinement | None:
    """The confinement ``policy`` needs, or ``None`` when it confines nothing.

    Raises :class:`UnsupportedPolicy` (fail closed) when this machine cannot
    enforce it. Touches the disk (which paths exist, are directories).
    """
    if not policy.confines:
        return None
    if support.seccomp_problem is not None:
        raise _refuse(support.seccomp_problem)
    # Built here, in the parent: the confining thread only makes system calls.
    _seccomp_program(policy.restricts_network)
    files = policy.files
    if files is None:
        return Confinement(
            landlock_rules=(), restricts_files=False, restricts_network=policy.restricts_network
        )
    if support.landlock_problem is not None:
        raise _refuse(support.landlock_problem)
    if support.landlock_abi < MIN_LANDLOCK_ABI:
        raise _refuse(
            f"Landlock ABI {support.landlock_abi} is too old (need >= {MIN_LANDLOCK_ABI})"
        )
    rules, mounts, placeholders = _plan_files(files, support.landlock_abi)
    if mounts and support.mount_namespace_problem is not None:
        first = mounts[0].path
        raise _refuse(
            f"its carve-outs (such as {first}) need a private mount namespace, but "
            f"{support.mount_namespace_problem}"
        )
    if any(mount.kind == "hide_file" for mount in mounts):
        _inaccessible_file()
    return Confinement(
        landlock_rules=tuple(rules),
        restricts_files=True,
        restricts_network=policy.restricts_network,
        mounts=tuple(mounts),
        placeholders=tuple(placeholders),
        landlock_abi=support.landlock_abi,
    )


def _refuse(reason: str) -> UnsupportedPolicy:
    return UnsupportedPolicy(
        f"sandbox cannot be enforced here: {reason}; refusing to run the command unconfined"
    )


def _plan_files(files: FsSandbox, abi: int) -> tuple[list[tuple[str, int]], list[Mount], list[str]]:
    rules: list[tuple[str, int]] = []
    mounts: list[Mount] = []
    placeholders: list[str] = []
    carve_outs: list[tuple[str, Access]] = []
    # One decision per path; a missing path is skipped only if every entry naming
    # it says so (an implicit protected name never does).
    skippable: dict[str, bool] = {}
    for entry in files.entries:
        skip = entry.skip_if_missing and not entry.protected
        skippable[entry.path] = skippable.get(entry.path, True) and skip
    # Shallow first: a mount must exist before one beneath it is made.
    for path in sorted(skippable, key=lambda p: (_depth(p), p)):
        access = files.access(path)
        assert access is not None  # the entry itself covers its path
        inherited = _inherited_access(files, path)
        exists = os.path.lexists(path)
        for carved, carved_access in carve_outs:
            if _is_within(path, carved) and _RANK[access] > _RANK[carved_access]:
                raise _refuse(
                    f"{path} ({access.name.lower()}) lies inside the carve-out {carved} "
                    f"({carved_access.name.lower()})"
                )
        if access is not Access.NONE and exists:
            rules.append((path, _rights_for(path, access, abi)))
        if inherited is None or _RANK[access] >= _RANK[inherited]:
            continue
        # A carve-out: Landlock cannot take back what an ancestor grants.
        carve_outs.append((path, access))
        if not exists:
            # What cannot be created needs no protection; what can, gets a
            # placeholder unless the entry said to skip it.
            if inherited is not Access.WRITE or skippable[path]:
                continue
            placeholders.append(path)
            mounts.append(Mount("read_only" if access is Access.READ else "hide_dir", path))
            continue
        if access is Access.READ:
            mounts.append(Mount("read_only", path))
        else:
            is_dir = os.path.isdir(path)
            mounts.append(Mount("hide_dir" if is_dir else "hide_file", path))
    for device, location, is_dir in _devices():
        if files.can_read(location):
            rights = _device_rights() & _all_rights(abi)
            if not is_dir:
                rights &= _file_rights()
            rules.append((device, rights))
    return rules, mounts, placeholders


@functools.lru_cache(maxsize=1)
def _devices() -> tuple[tuple[str, str, bool], ...]:
    """The existing :data:`WRITABLE_DEVICES`: (path, real location, is a directory)."""
    return tuple(
        (device, os.path.realpath(device), os.path.isdir(device))
        for device in WRITABLE_DEVICES
        if os.path.exists(device)
    )


def _depth(path: str) -> int:
    return sum(1 for part in path.split("/") if part)


def _inherited_access(files: FsSandbox, path: str) -> Access | None:
    """The access ``path`` would get from its ancestors' entries alone."""
    parent = posixpath.dirname(path)
    if parent == path:
        return None
    return files.access(parent)


def _rights_for(path: str, access: Access, abi: int) -> int:
    rights = _read_rights() if access is Access.READ else _all_rights(abi)
    rights &= _all_rights(abi)
    if not os.path.isdir(path):
        rights &= _file_rights()
    return rights


def _is_within(path: str, root: str) -> bool:
    return root == "/" or path == root or path.startswith(root + "/")


# --- placeholders ------------------------------------------------------------------------


class _PlaceholderRegistry:
    """Empty directories created for missing protected paths, shared by children.

    A placeholder stays while a confined child uses it, and is reused by the next
    one (a workspace's commands mostly need the same ones). It is removed by
    :meth:`collect` once it is idle and every process of the mount namespaces that
    mounted over it is gone: a lingering background process keeps its protection.
    :meth:`collect` scans ``/proc``, so the process manager runs it shortly after
    a confined child closes rather than on the spawn path. Thread-safe.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._users: dict[str, int] = {}
        #: placeholder -> mount-namespace inodes that may still use it.
        self._namespaces: dict[str, set[int]] = {}

    def acquire(self, paths: Iterable[str]) -> tuple[str, ...]:
        """Create (or share) the placeholders; returns those now held."""
        held: list[str] = []
        with self._lock:
            try:
                for path in paths:
                    if path not in self._users:
                        try:
                            os.mkdir(path, 0o555)
                        except FileExistsError:
                            # Made meanwhile by someone else: it is theirs, and real.
                            continue
                        self._users[path] = 0
                        self._namespaces[path] = set()
                    self._users[path] += 1
                    held.append(path)
            except OSError:
                self._release(held, namespace=None)
                raise
        return tuple(held)

    def release(self, paths: Iterable[str], namespace: int | None) -> None:
        with self._lock:
            self._release(list(paths), namespace)

    @property
    def idle(self) -> bool:
        """Whether some placeholder waits for :meth:`collect`."""
        with self._lock:
            return any(users == 0 for users in self._users.values())

    def collect(self) -> None:
        """Remove the idle placeholders no live mount namespace can still use."""
        with self._lock:
            idle = [path for path, users in self._users.items() if users == 0]
            if not idle:
                return
            alive = _live_mount_namespaces()
            for path in idle:
                if self._namespaces[path] & alive:
                    continue
                with contextlib.suppress(OSError):
                    os.rmdir(path)
                del self._users[path]
                del self._namespaces[path]

    def held_under(self, root: str) -> list[str]:
        """Placeholders (idle or not) at or below ``root`` (for tests and logs)."""
        with self._lock:
            return [path for path in self._users if _is_within(path, root)]

    def _release(self, paths: list[str], namespace: int | None) -> None:
        for path in paths:
            if path not in self._users:
                continue
            self._users[path] -= 1
            if namespace is not None:
                self._namespaces[path].add(namespace)


def _live_mount_namespaces() -> set[int]:
    alive: set[int] = set()
    with contextlib.suppress(OSError):
        for name in os.listdir("/proc"):
            if name.isdigit():
                with contextlib.suppress(OSError):
                    alive.add(os.stat(f"/proc/{name}/ns/mnt").st_ino)
    return alive


PLACEHOLDERS = _PlaceholderRegistry()


@dataclass
class ConfinementLease:
    """What a confined child holds until it is gone: its placeholders."""

    placeholders: tuple[str, ...] = ()
    mount_namespace: int | None = None
    _released: bool = False

    def release(self) -> None:
        """Give the placeholders back (idempotent)."""
        if self._released:
            return
        self._released = True
        if self.placeholders:
            PLACEHOLDERS.release(self.placeholders, self.mount_namespace)


# --- applying it ---------------------------------------------------------------------------


class SandboxEnforcer:
    """Prepares and applies confinement; one per server (injectable for tests).

    ``support`` overrides the probe of this machine, e.g. to simulate a kernel
    without Landlock.
    """

    def __init__(self, support: KernelSupport | None = None) -> None:
        self._support = support

    @property
    def support(self) -> KernelSupport:
        return self._support if self._support is not None else probe_kernel_support()

    def prepare(self, policy: SandboxPolicy) -> Confinement | None:
        """The confinement for ``policy`` (``None``: none needed); fails closed."""
        return plan_confinement(policy, self.support)

    def spawn(self, confinement: Confinement, spawn: Callable[[], T]) -> tuple[T, ConfinementLease]:
        """Run ``spawn`` in a fresh thread confined by ``confinement``.

        ``spawn`` must only fork/exec (its thread dies right after). Raises
        :class:`UnsupportedPolicy` if the confinement cannot be applied; then
        ``spawn`` never ran. The lease must be released when the child is gone.
        """
        held = PLACEHOLDERS.acquire(confinement.placeholders)
        lease = ConfinementLease(placeholders=held)
        outcome: dict[str, Any] = {}

        def run() -> None:
            try:
                lease.mount_namespace = _apply(confinement)
            except BaseException as exc:
                outcome["confine_error"] = exc
                return
            try:
                outcome["result"] = spawn()
            except BaseException as exc:
                outcome["spawn_error"] = exc

        thread = threading.Thread(target=run, name="sandboxed spawn", daemon=True)
        try:
            thread.start()
            thread.join()
        except BaseException:
            lease.release()
            raise
        if "result" in outcome:
            return outcome["result"], lease
        lease.release()
        if "spawn_error" in outcome:
            raise outcome["spawn_error"]
        error = outcome["confine_error"]
        if isinstance(error, UnsupportedPolicy):
            raise error
        raise _refuse(f"applying it failed ({error})") from error


DEFAULT_ENFORCER = SandboxEnforcer()


def _apply(confinement: Confinement) -> int | None:
    """Confine the calling thread; returns its new mount namespace's inode, if any."""
    namespace: int | None = None
    if confinement.mounts:
        namespace = _make_mounts(confinement.mounts)
    if confinement.restricts_files:
        _restrict_landlock(confinement)
    _load_seccomp(_seccomp_program(confinement.restricts_network))
    _drop_capabilities()
    return namespace


@functools.lru_cache(maxsize=1)
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> None:
    if result < 0:
        code = ctypes.get_errno()
        raise OSError(code, f"{what}: {os.strerror(code)}")


def _mount(
    source: str | None, target: str, fstype: str | None, flags: int, data: str | None
) -> None:
    libc = _libc()
    libc.mount.argtypes = [ctypes.c_char_p] * 3 + [ctypes.c_ulong, ctypes.c_char_p]
    encode = os.fsencode
    result = libc.mount(
        None if source is None else encode(source),
        encode(target),
        None if fstype is None else encode(fstype),
        flags,
        None if data is None else data.encode(),
    )
    _check(result, f"mount {target}")


def _make_mounts(mounts: Iterable[Mount]) -> int:
    libc = _libc()
    libc.unshare.argtypes = [ctypes.c_int]
    _check(libc.unshare(_CLONE_NEWNS), "unshare(CLONE_NEWNS)")
    # Nothing we mount may propagate back to the host's namespace.
    _mount(None, "/", None, _MS_REC | _MS_PRIVATE, None)
    for mount in mounts:
        if mount.kind == "read_only":
            _mount(mount.path, mount.path, None, _MS_BIND | _MS_REC, None)
            flags = _MS_REMOUNT | _MS_BIND | _MS_RDONLY | _MS_NOSUID | _MS_NODEV
            _mount(None, mount.path, None, flags, None)
        elif mount.kind == "hide_dir":
            flags = _MS_RDONLY | _MS_NOSUID | _MS_NODEV | _MS_NOEXEC
            _mount("tmpfs", mount.path, "tmpfs", flags, "mode=000,size=4k")
        else:
            _mount(_inaccessible_file(), mount.path, None, _MS_BIND, None)
            flags = _MS_REMOUNT | _MS_BIND | _MS_RDONLY | _MS_NOSUID | _MS_NODEV | _MS_NOEXEC
            _mount(None, mount.path, None, flags, None)
    return os.stat("/proc/thread-self/ns/mnt").st_ino


@functools.lru_cache(maxsize=1)
def _inaccessible_file() -> str:
    """An empty mode-000 file to mount over hidden files (made once per process)."""
    directory = tempfile.mkdtemp(prefix="exec-server-sandbox-")
    path = os.path.join(directory, "hidden")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0)
    os.close(fd)
    os.chmod(path, 0)
    return path


def _restrict_landlock(confinement: Confinement) -> None:
    abi = confinement.landlock_abi
    scoped = 0
    if abi >= 6:
        scoped = landlock.SCOPE_SIGNAL
        if confinement.restricts_network:
            scoped |= landlock.SCOPE_ABSTRACT_UNIX_SOCKET
    landlock.restrict_thread(abi, list(confinement.landlock_rules), scoped)


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


@dataclass(frozen=True)
class _SeccompProgram:
    """A BPF program generated once by libseccomp, loaded with one ``prctl``."""

    code: ctypes.Array[ctypes.c_char]
    fprog: _SockFprog


@functools.lru_cache(maxsize=2)
def _seccomp_program(restrict_network: bool) -> _SeccompProgram:
    """libseccomp's program for the filter (built once; it adds the arch and x32
    checks), exported as raw BPF so each spawn only loads it."""
    import socket

    import pyseccomp

    deny = pyseccomp.ERRNO(errno.EPERM)
    syscall_filter = pyseccomp.SyscallFilter(defaction=pyseccomp.ALLOW)
    names = BASE_DENIED_SYSCALLS + (NETWORK_DENIED_SYSCALLS if restrict_network else ())
    for name in names:
        syscall_filter.add_rule(deny, name)
    if restrict_network:
        for name in UNIX_ONLY_SYSCALLS:
            syscall_filter.add_rule(deny, name, pyseccomp.Arg(0, pyseccomp.NE, socket.AF_UNIX))
    with tempfile.TemporaryFile() as exported:
        syscall_filter.export_bpf(exported)
        exported.seek(0)
        raw = exported.read()
    if not raw or len(raw) % 8:
        raise RuntimeError(f"libseccomp exported a {len(raw)}-byte program")
    code = ctypes.create_string_buffer(raw, len(raw))
    fprog = _SockFprog(len(raw) // 8, ctypes.addressof(code))
    return _SeccompProgram(code, fprog)


def _load_seccomp(program: _SeccompProgram) -> None:
    libc = _libc()
    # Landlock set it already when files are restricted; required either way.
    _check(libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")
    _check(
        libc.prctl(_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, ctypes.byref(program.fprog), 0, 0),
        "installing the seccomp filter",
    )


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    ]


def _drop_capabilities() -> None:
    """Leave this thread, and so the child, with no capabilities.

    For root, locked securebits make exec stop granting uid 0 every capability
    (with ``no_new_privs``, file capabilities are ignored too); then the ambient,
    effective, permitted and inheritable sets are emptied. Other users gain none
    at exec and only clear what they hold.
    """
    libc = _libc()
    if os.geteuid() == 0:
        _check(libc.prctl(_PR_SET_SECUREBITS, _LOCKED_SECUREBITS, 0, 0, 0), "securebits")
    _check(libc.prctl(_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0), "clearing ambient caps")
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    _check(libc.capset(ctypes.byref(header), data), "capset")
