"""The confinement a policy needs, planned in the server before the child exists.

* **Landlock** (ABI >= 3, so truncation is covered too) grants the policy's
  readable roots read/execute and its writable roots everything; whatever no entry
  grants is denied. Landlock also forbids mount changes and ptrace or
  ``/proc/<pid>`` access to processes outside the sandbox, and (ABI >= 6) signals
  to them.
* **A private mount namespace** for what Landlock cannot say. Landlock rights only
  add up along a path, so a read-only ``.git`` inside a writable workspace, or a
  ``none`` directory inside a readable root, is made with mounts: a read-only bind
  mount of the carve-out onto itself, or an empty, inaccessible read-only tmpfs (an
  empty mode-000 file for a file). A protected name that does not exist yet
  (``.git``, ``.agents``, ``.codex``, ``.aws`` under a writable root) gets an empty
  placeholder directory while the command runs, as 0.171 does (probed: it creates
  and later removes them too), so it cannot be created behind the policy's back.
* **seccomp** (:mod:`.seccomp`) and **no privileges** (see :mod:`.confine`).

:func:`plan_confinement` refuses (:class:`UnsupportedPolicy`, -32603, with the
reason) what this machine cannot enforce: no Landlock or too old an ABI, no
seccomp, carve-outs without a way to make a mount namespace, a carve-out with a
more permissive entry beneath it.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
from dataclasses import dataclass, field
from typing import Literal

from . import landlock
from .disk_view import DiskView
from .fs_sandbox import FsSandbox, is_within
from .kernel import MIN_LANDLOCK_ABI, KernelSupport
from .placeholders import inaccessible_file
from .policy import SandboxPolicy
from .seccomp import seccomp_program
from .spec import Access, UnsupportedPolicy

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

MountKind = Literal["read_only", "hide_dir", "hide_file"]


@dataclass(frozen=True)
class Mount:
    """One mount in the child's private namespace, applied in list order."""

    kind: MountKind
    path: str


class PreparedRuleset:
    """A Landlock ruleset built ahead of time for a cached plan (an fd; see
    :func:`.landlock.build_ruleset`), closed once nothing refers to it."""

    __slots__ = ("fd",)

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def __del__(self) -> None:
        fd, self.fd = self.fd, -1
        if fd >= 0:
            with contextlib.suppress(OSError):
                os.close(fd)


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
    #: The mount namespace is made inside a new user namespace, in the forked child
    #: (a server without ``CAP_SYS_ADMIN``).
    user_namespace: bool = False
    #: ``landlock_rules`` already built into a ruleset (cached plans only).
    ruleset: PreparedRuleset | None = field(default=None, compare=False, repr=False)

    @property
    def sandbox_type(self) -> Literal["linuxSeccomp"]:
        return CONFINED_SANDBOX_TYPE

    @property
    def landlock_scopes(self) -> int:
        """The Landlock scopes (ABI >= 6): signals, and with a restricted network
        abstract unix sockets, to processes outside the sandbox."""
        if self.landlock_abi < 6:
            return 0
        scoped = landlock.SCOPE_SIGNAL
        if self.restricts_network:
            scoped |= landlock.SCOPE_ABSTRACT_UNIX_SOCKET
        return scoped


def refuse(reason: str) -> UnsupportedPolicy:
    """The fail-closed error, naming why."""
    return UnsupportedPolicy(
        f"sandbox cannot be enforced here: {reason}; refusing to run the command unconfined"
    )


def plan_confinement(
    policy: SandboxPolicy, support: KernelSupport, view: DiskView | None = None
) -> Confinement | None:
    """The confinement ``policy`` needs, or ``None`` when it confines nothing.

    Raises :class:`UnsupportedPolicy` (fail closed) when this machine cannot
    enforce it. Touches the disk (which paths exist, are directories), through
    ``view`` when given.
    """
    if not policy.confines:
        return None
    if support.seccomp_problem is not None:
        raise refuse(support.seccomp_problem)
    # Built here, in the parent: the confining thread only makes system calls.
    seccomp_program(policy.restricts_network)
    files = policy.files
    if files is None:
        return Confinement(
            landlock_rules=(), restricts_files=False, restricts_network=policy.restricts_network
        )
    if support.landlock_problem is not None:
        raise refuse(support.landlock_problem)
    if support.landlock_abi < MIN_LANDLOCK_ABI:
        raise refuse(f"Landlock ABI {support.landlock_abi} is too old (need >= {MIN_LANDLOCK_ABI})")
    plan = _FilePlan(files, support.landlock_abi, DiskView() if view is None else view)
    plan.plan()
    if plan.mounts and support.mount_namespace_problem is not None:
        raise refuse(
            f"its carve-outs (such as {plan.mounts[0].path}) need a private mount "
            f"namespace, but {support.mount_namespace_problem}"
        )
    if any(mount.kind == "hide_file" for mount in plan.mounts):
        inaccessible_file()
    return Confinement(
        landlock_rules=tuple(plan.rules),
        restricts_files=True,
        restricts_network=policy.restricts_network,
        mounts=tuple(plan.mounts),
        placeholders=tuple(plan.placeholders),
        landlock_abi=support.landlock_abi,
        user_namespace=bool(plan.mounts) and support.mount_namespace_via == "user_namespace",
    )


_RANK = {Access.NONE: 0, Access.READ: 1, Access.WRITE: 2}


class _FilePlan:
    """Landlock rules, mounts and placeholders for a restricted file system."""

    def __init__(self, files: FsSandbox, abi: int, view: DiskView) -> None:
        self.files = files
        self.abi = abi
        self.view = view
        self.rules: list[tuple[str, int]] = []
        self.mounts: list[Mount] = []
        self.placeholders: list[str] = []
        self._carve_outs: list[tuple[str, Access]] = []
        # One decision per path; a missing path is skipped only if every entry
        # naming it says so (an implicit protected name never does).
        self._skippable: dict[str, bool] = {}
        for entry in files.entries:
            skip = entry.skip_if_missing and not entry.protected
            self._skippable[entry.path] = self._skippable.get(entry.path, True) and skip

    def plan(self) -> None:
        # Shallow first: a mount must exist before one beneath it is made.
        for path in sorted(self._skippable, key=lambda p: (_depth(p), p)):
            self._plan_path(path)
        self._plan_devices()

    def _plan_path(self, path: str) -> None:
        access = self.files.access(path)
        assert access is not None  # the entry itself covers its path
        self._check_not_inside_a_carve_out(path, access)
        exists = self.view.lexists(path)
        if access is not Access.NONE and exists:
            self.rules.append((path, _rights_for(access, self.abi, self.view.isdir(path))))
        inherited = _inherited_access(self.files, path)
        if inherited is not None and _RANK[access] < _RANK[inherited]:
            # A carve-out: Landlock cannot take back what an ancestor grants.
            self._carve_out(path, access, inherited, exists)

    def _check_not_inside_a_carve_out(self, path: str, access: Access) -> None:
        for carved, carved_access in self._carve_outs:
            if is_within(path, carved) and _RANK[access] > _RANK[carved_access]:
                raise refuse(
                    f"{path} ({access.name.lower()}) lies inside the carve-out {carved} "
                    f"({carved_access.name.lower()})"
                )

    def _carve_out(self, path: str, access: Access, inherited: Access, exists: bool) -> None:
        self._carve_outs.append((path, access))
        if not exists:
            # What cannot be created needs no protection; what can, gets a
            # placeholder unless the entry said to skip it.
            if inherited is Access.WRITE and not self._skippable[path]:
                self.placeholders.append(path)
                kind: MountKind = "read_only" if access is Access.READ else "hide_dir"
                self.mounts.append(Mount(kind, path))
        elif access is Access.READ:
            self.mounts.append(Mount("read_only", path))
        else:
            self.mounts.append(Mount("hide_dir" if self.view.isdir(path) else "hide_file", path))

    def _plan_devices(self) -> None:
        everything = landlock.fs_rights_for_abi(self.abi)
        for device in WRITABLE_DEVICES:
            if not self.view.exists(device):
                continue
            if self.files.can_read(self.view.realpath(device)):
                rights = _DEVICE_RIGHTS & everything
                if not self.view.isdir(device):
                    rights &= landlock.FILE_RIGHTS
                self.rules.append((device, rights))


_DEVICE_RIGHTS = (
    landlock.READ_FILE | landlock.WRITE_FILE | landlock.READ_DIR | landlock.TRUNCATE
) | landlock.IOCTL_DEV


def _depth(path: str) -> int:
    return sum(1 for part in path.split("/") if part)


def _inherited_access(files: FsSandbox, path: str) -> Access | None:
    """The access ``path`` would get from its ancestors' entries alone."""
    parent = posixpath.dirname(path)
    if parent == path:
        return None
    return files.access(parent)


def _rights_for(access: Access, abi: int, is_dir: bool) -> int:
    everything = landlock.fs_rights_for_abi(abi)
    rights = landlock.READ_RIGHTS if access is Access.READ else everything
    rights &= everything
    if not is_dir:
        rights &= landlock.FILE_RIGHTS
    return rights
