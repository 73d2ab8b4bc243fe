"""libc through ctypes, for the few system calls Python does not wrap: mount,
unshare, prctl, capset. Loaded once; call from any thread (or a forked child)."""

from __future__ import annotations

import ctypes
import functools
import os

CLONE_NEWNS = 0x00020000
CLONE_NEWUSER = 0x10000000
PR_SET_NO_NEW_PRIVS = 38
PR_GET_SECCOMP = 21


@functools.lru_cache(maxsize=1)
def libc() -> ctypes.CDLL:
    c = ctypes.CDLL(None, use_errno=True)
    c.mount.argtypes = [ctypes.c_char_p] * 3 + [ctypes.c_ulong, ctypes.c_char_p]
    c.unshare.argtypes = [ctypes.c_int]
    return c


def check(result: int, what: str) -> None:
    """Raise ``OSError`` (with errno) if a libc call returned an error."""
    if result < 0:
        code = ctypes.get_errno()
        raise OSError(code, f"{what}: {os.strerror(code)}")


def unshare(flags: int, what: str) -> None:
    check(libc().unshare(flags), what)


def _write_proc(path: str, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def enter_user_namespace() -> None:
    """Move the calling process (it must be single-threaded: a forked child) into a
    new user namespace and a new mount namespace owned by it, keeping its uid and gid
    (mapped onto themselves). It then holds every capability over that mount
    namespace, and none outside."""
    uid, gid = os.geteuid(), os.getegid()
    unshare(CLONE_NEWUSER | CLONE_NEWNS, "unshare(CLONE_NEWUSER | CLONE_NEWNS)")
    _write_proc("/proc/self/setgroups", "deny")
    _write_proc("/proc/self/uid_map", f"{uid} {uid} 1")
    _write_proc("/proc/self/gid_map", f"{gid} {gid} 1")
