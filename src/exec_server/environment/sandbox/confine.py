"""Applying a :class:`~.plan.Confinement`: system calls only, nothing decided here.

Everything is per thread in Linux (and inherited by children), so a root server
applies it in a throwaway thread that then spawns the child: nothing else in the
server is touched and pipes keep vfork (see ``benchmarks/sandbox_bench.py``). In
order:

1. the carve-out mounts, in a private mount namespace (:func:`make_mounts`);
2. Landlock (it forbids mount changes, so it comes after them);
3. the seccomp filter (:mod:`.seccomp`);
4. no capabilities: a root server's child loses every one (bounding set included,
   so exec does not give them back), as in 0.171; ``no_new_privs`` is set too.

A server without ``CAP_SYS_ADMIN`` makes the mount namespace inside a new user
namespace instead, which a multi-threaded process cannot enter: so that all of it
runs in the forked child before exec (:func:`confine_child`, a ``preexec_fn``),
and the child reports its namespace, or what failed, through a pipe.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
from collections.abc import Iterable

from . import landlock
from .kernel import describe
from .placeholders import inaccessible_file
from .plan import Confinement, Mount
from .seccomp import load_seccomp, seccomp_program
from .syscalls import CLONE_NEWNS, check, enter_user_namespace, libc, unshare

_MS_RDONLY = 0x1
_MS_NOSUID = 0x2
_MS_NODEV = 0x4
_MS_NOEXEC = 0x8
_MS_REMOUNT = 0x20
_MS_BIND = 0x1000
_MS_REC = 0x4000
_MS_PRIVATE = 0x40000
_MS_NOATIME = 0x400
_MS_NODIRATIME = 0x800
_MS_RELATIME = 0x200000
#: A mount's flags that a remount must keep (in a user namespace they are locked).
_KEPT_FLAGS = (
    (os.ST_NOSUID, _MS_NOSUID),
    (os.ST_NODEV, _MS_NODEV),
    (os.ST_NOEXEC, _MS_NOEXEC),
    (os.ST_NOATIME, _MS_NOATIME),
    (os.ST_NODIRATIME, _MS_NODIRATIME),
    (os.ST_RELATIME, _MS_RELATIME),
)
_PR_CAP_AMBIENT = 47
_PR_CAP_AMBIENT_CLEAR_ALL = 4
_PR_SET_SECUREBITS = 28
# NOROOT, NO_SETUID_FIXUP, KEEP_CAPS and NO_CAP_AMBIENT_RAISE, all locked: exec no
# longer makes uid 0 privileged, and nothing can undo that.
_LOCKED_SECUREBITS = 0b11111111
_LINUX_CAPABILITY_VERSION_3 = 0x20080522


def confine_thread(confinement: Confinement) -> int | None:
    """Confine the calling thread (a server with ``CAP_SYS_ADMIN``, or a plan
    without mounts); returns its new mount namespace's inode, if any."""
    namespace: int | None = None
    if confinement.mounts:
        unshare(CLONE_NEWNS, "unshare(CLONE_NEWNS)")
        make_mounts(confinement.mounts)
        namespace = os.stat("/proc/thread-self/ns/mnt").st_ino
    _confine_rest(confinement)
    return namespace


def confine_child(confinement: Confinement, report_fd: int) -> None:
    """The ``preexec_fn`` of a child confined through a user namespace.

    Writes ``ns <inode>`` to ``report_fd`` once confined, or ``error <reason>`` and
    raises (so the spawn fails and nothing runs unconfined).
    """
    try:
        enter_user_namespace()
        make_mounts(confinement.mounts)
        namespace = os.stat("/proc/self/ns/mnt").st_ino
        _confine_rest(confinement)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.write(report_fd, f"error {describe(exc)}".encode()[:1000])
        raise
    os.write(report_fd, f"ns {namespace}".encode())


def _confine_rest(confinement: Confinement) -> None:
    if confinement.restricts_files:
        _restrict_landlock(confinement)
    load_seccomp(seccomp_program(confinement.restricts_network))
    _drop_capabilities()


def _mount(
    source: str | None, target: str, fstype: str | None, flags: int, data: str | None
) -> None:
    encode = os.fsencode
    result = libc().mount(
        None if source is None else encode(source),
        encode(target),
        None if fstype is None else encode(fstype),
        flags,
        None if data is None else data.encode(),
    )
    check(result, f"mount {target}")


def _kept_flags(path: str) -> int:
    """The flags of the mount at ``path`` that a read-only remount must keep."""
    current = os.statvfs(path).f_flag
    return sum(flag for st_flag, flag in _KEPT_FLAGS if current & st_flag)


def make_mounts(mounts: Iterable[Mount]) -> None:
    """Make ``mounts`` in the (already private to us) mount namespace."""
    # Nothing we mount may propagate back to the host's namespace.
    _mount(None, "/", None, _MS_REC | _MS_PRIVATE, None)
    for mount in mounts:
        if mount.kind == "read_only":
            _mount(mount.path, mount.path, None, _MS_BIND | _MS_REC, None)
            flags = _MS_REMOUNT | _MS_BIND | _MS_RDONLY | _MS_NOSUID | _MS_NODEV
            _mount(None, mount.path, None, flags | _kept_flags(mount.path), None)
        elif mount.kind == "hide_dir":
            flags = _MS_RDONLY | _MS_NOSUID | _MS_NODEV | _MS_NOEXEC
            _mount("tmpfs", mount.path, "tmpfs", flags, "mode=000,size=4k")
        else:
            _mount(inaccessible_file(), mount.path, None, _MS_BIND, None)
            flags = _MS_REMOUNT | _MS_BIND | _MS_RDONLY | _MS_NOSUID | _MS_NODEV | _MS_NOEXEC
            _mount(None, mount.path, None, flags | _kept_flags(mount.path), None)


def _restrict_landlock(confinement: Confinement) -> None:
    ruleset = confinement.ruleset
    if ruleset is not None and ruleset.fd >= 0:
        landlock.restrict_with(ruleset.fd)
        return
    rules = list(confinement.landlock_rules)
    landlock.restrict_thread(confinement.landlock_abi, rules, confinement.landlock_scopes)


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
    at exec and only clear what they hold (in a user namespace of their own: all
    of its capabilities).
    """
    c = libc()
    if os.geteuid() == 0:
        check(c.prctl(_PR_SET_SECUREBITS, _LOCKED_SECUREBITS, 0, 0, 0), "securebits")
    check(c.prctl(_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0), "clearing ambient caps")
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    check(c.capset(ctypes.byref(header), data), "capset")
