"""The three Landlock system calls, through ctypes, for the confining thread.

Why not a binding: ``landlockpy`` (the maintained one) was measured in the same
throwaway-thread spawn path: its ``Ruleset`` builds rights with ``IntFlag``
arithmetic and asks the kernel for the ABI on every ruleset, which cost 128 us per
build+restrict against 76 us for these calls (4 rules; the gap grows with each
rule), on a ~1 ms spawn whose budget is 2x. The ``landlock`` package is a
``1.0.0.dev`` release whose ruleset struct has no network or scope fields. The
ABI is asked once; rights are plain ints.

Kernel reference: Documentation/userspace-api/landlock.rst (ABI 1-7).
"""

from __future__ import annotations

import ctypes
import functools
import os

# Syscall numbers are the same on every architecture (the unified table).
_SYS_CREATE_RULESET = 444
_SYS_ADD_RULE = 445
_SYS_RESTRICT_SELF = 446
_CREATE_RULESET_VERSION = 1 << 0
_RULE_PATH_BENEATH = 1
_PR_SET_NO_NEW_PRIVS = 38

# Filesystem access rights, and the ABI that introduced each.
EXECUTE = 1 << 0
WRITE_FILE = 1 << 1
READ_FILE = 1 << 2
READ_DIR = 1 << 3
REMOVE_DIR = 1 << 4
REMOVE_FILE = 1 << 5
MAKE_CHAR = 1 << 6
MAKE_DIR = 1 << 7
MAKE_REG = 1 << 8
MAKE_SOCK = 1 << 9
MAKE_FIFO = 1 << 10
MAKE_BLOCK = 1 << 11
MAKE_SYM = 1 << 12
REFER = 1 << 13  # ABI 2
TRUNCATE = 1 << 14  # ABI 3
IOCTL_DEV = 1 << 15  # ABI 5
#: Rights that apply to a regular or device file (a rule on a file takes only these).
FILE_RIGHTS = EXECUTE | WRITE_FILE | READ_FILE | TRUNCATE | IOCTL_DEV
READ_RIGHTS = READ_FILE | READ_DIR | EXECUTE

# Scopes (ABI 6): what a sandboxed process may not reach outside its domain.
SCOPE_ABSTRACT_UNIX_SOCKET = 1 << 0
SCOPE_SIGNAL = 1 << 1


def fs_rights_for_abi(abi: int) -> int:
    """Every filesystem right the kernel of ``abi`` handles."""
    rights = (1 << 13) - 1
    if abi >= 2:
        rights |= REFER
    if abi >= 3:
        rights |= TRUNCATE
    if abi >= 5:
        rights |= IOCTL_DEV
    return rights


class _RulesetAttr(ctypes.Structure):
    _fields_ = [
        ("handled_access_fs", ctypes.c_uint64),
        ("handled_access_net", ctypes.c_uint64),
        ("scoped", ctypes.c_uint64),
    ]


class _PathBeneathAttr(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


@functools.lru_cache(maxsize=1)
def _libc() -> ctypes.CDLL:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    return libc


def _call(*args: object) -> int:
    result: int = _libc().syscall(*args)
    if result < 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))
    return result


def abi_version() -> int:
    """The kernel's Landlock ABI; raises ``OSError`` when Landlock is unavailable
    (ENOSYS: not built in; EOPNOTSUPP: disabled at boot)."""
    return _call(
        ctypes.c_long(_SYS_CREATE_RULESET),
        None,
        ctypes.c_size_t(0),
        ctypes.c_uint32(_CREATE_RULESET_VERSION),
    )


def build_ruleset(abi: int, rules: list[tuple[str, int]], scoped: int = 0) -> int:
    """A ruleset fd allowing only ``rules`` ((path, rights)) for :func:`restrict_with`.

    Handles every right of ``abi``; ``scoped`` needs ABI >= 6. A path that does not
    exist is skipped: it grants nothing. Each rule holds the inode its path named
    now, so a ruleset kept for later must be dropped once a path is replaced. The
    fd is close-on-exec; close it when done.
    """
    attr = _RulesetAttr(fs_rights_for_abi(abi), 0, scoped if abi >= 6 else 0)
    size = 8 if abi < 4 else 16 if abi < 6 else 24
    ruleset = _call(
        ctypes.c_long(_SYS_CREATE_RULESET),
        ctypes.byref(attr),
        ctypes.c_size_t(size),
        ctypes.c_uint32(0),
    )
    try:
        for path, rights in rules:
            try:
                fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
            except FileNotFoundError:
                continue
            try:
                rule = _PathBeneathAttr(rights, fd)
                _call(
                    ctypes.c_long(_SYS_ADD_RULE),
                    ctypes.c_int(ruleset),
                    ctypes.c_int(_RULE_PATH_BENEATH),
                    ctypes.byref(rule),
                    ctypes.c_uint32(0),
                )
            finally:
                os.close(fd)
    except BaseException:
        os.close(ruleset)
        raise
    return ruleset


def restrict_with(ruleset: int) -> None:
    """Confine the calling thread by a :func:`build_ruleset` fd (which stays open).

    Sets ``no_new_privs`` (required). Irreversible, and inherited by the thread's
    children.
    """
    libc = _libc()
    if libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        code = ctypes.get_errno()
        raise OSError(code, f"no_new_privs: {os.strerror(code)}")
    _call(ctypes.c_long(_SYS_RESTRICT_SELF), ctypes.c_int(ruleset), ctypes.c_uint32(0))


def restrict_thread(abi: int, rules: list[tuple[str, int]], scoped: int = 0) -> None:
    """Confine the calling thread: only ``rules`` ((path, rights)) are allowed
    (:func:`build_ruleset` then :func:`restrict_with`)."""
    ruleset = build_ruleset(abi, rules, scoped)
    try:
        restrict_with(ruleset)
    finally:
        os.close(ruleset)
