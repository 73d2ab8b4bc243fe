"""Filesystem sandbox policy for the ``fs/*`` methods, and request path resolution.

This module owns two things:

* **Request paths.** :func:`parse_absolute_path` turns a wire path into the native
  path an fs method operates on: absolute paths as Codex 0.133 takes them, and
  ``file://`` URIs as 0.171 sends them, both lexically normalised the way Codex's
  ``AbsolutePathBuf`` is (``a/link/../x`` becomes ``a/x`` *before* anything touches
  the disk); :mod:`exec_server.protocol.path_uri` does the parsing.
* **The ``sandbox`` parameter** (Codex's ``FileSystemSandboxContext``). It is parsed
  by :func:`parse_sandbox` and resolved into an :class:`FsSandbox` by
  :func:`resolve_sandbox`. Unrestricted, disabled and external profiles, and
  restricted ones that grant full-disk write, resolve to ``None`` (no checks), as
  Codex runs those unsandboxed.

Codex 0.133 enforces a restricted profile by running the fs operation in a
bubblewrap mount namespace, so a denial surfaces as whatever the kernel says in
there. We check paths instead and raise :class:`SandboxDenied` with the errno
0.133 was observed to produce, so the wire error is identical:

* a path outside every readable root does not exist in the namespace: reads,
  metadata and listings fail with ENOENT (-32004 "No such file or directory");
* a write to a readable but not writable place fails with EROFS (-32603
  "Read-only file system"); a write whose parent is not visible at all fails with
  ENOENT.

Entry semantics follow ``codex_protocol::permissions``: the most specific entry
(most path components) that contains a path decides its access; equally specific
entries resolve ``none`` over ``write`` over ``read``. Every writable root gets
read-only ``.git``, ``.agents`` and ``.codex`` carve-outs (and the ``gitdir:`` target
of a ``.git`` pointer file). 0.133 protects these whether or not they exist.

Paths are compared after resolving symlinks (``realpath`` of the existing prefix,
dangling final links followed), and roots are canonicalised the same way, so a
symlink cannot lead out of a root and a root named through a symlinked alias still
matches. The check and the operation are separate system calls: a concurrent
rename or symlink swap between them is not defended against (the bubblewrap
namespace is; we do not use one, see spec item 34).
"""

from __future__ import annotations

import enum
import errno
import os
import posixpath
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..protocol.errors import InvalidParams, InvalidRequest
from ..protocol.path_uri import (
    RELATIVE_PATH_MESSAGE,
    normalize_path,
    parse_wire_path,
)

# --- request paths -----------------------------------------------------------------


def parse_absolute_path(raw: str) -> str:
    """Return the lexically normalised native path named by ``raw``.

    Accepts absolute paths (Codex 0.133) and ``file:`` URIs (0.171); errors carry
    the texts of the era the path speaks. See :mod:`exec_server.protocol.path_uri`.
    """
    return parse_wire_path(raw).native


# --- policy model --------------------------------------------------------------------


class Access(enum.IntEnum):
    """An entry's access level. The order is Codex's tie-break precedence."""

    READ = 0
    WRITE = 1
    NONE = 2

    @property
    def can_read(self) -> bool:
        return self is not Access.NONE

    @property
    def can_write(self) -> bool:
        return self is Access.WRITE


# 0.133 also takes "deny" for "none" (observed).
_ACCESS_BY_NAME = {
    "read": Access.READ,
    "write": Access.WRITE,
    "none": Access.NONE,
    "deny": Access.NONE,
}

#: Special path kinds whose location depends on the context's ``cwd``.
_CWD_KINDS = frozenset({"current_working_directory", "project_roots"})
_KNOWN_KINDS = frozenset({"root", "minimal", "tmpdir", "slash_tmp"}) | _CWD_KINDS

#: Read-only roots granted by the ``minimal`` special path. Codex leaves the list to
#: the platform sandbox; these are the usual Linux system directories.
PLATFORM_DEFAULT_READ_ROOTS = (
    "/bin",
    "/sbin",
    "/usr",
    "/lib",
    "/lib32",
    "/lib64",
    "/libx32",
    "/etc",
    "/opt",
    "/dev",
)

#: Names made read-only at the top of every writable root.
PROTECTED_SUBDIRECTORIES = (".git", ".agents", ".codex")

#: Codex's serde error for any permission profile that fails to parse.
MALFORMED_PROFILE_MESSAGE = "data did not match any variant of untagged enum PermissionProfileDe"
#: 0.133's -32600 for a cwd-relative entry in a context without ``cwd``.
DYNAMIC_PERMISSIONS_NEED_CWD_MESSAGE = (
    "file system sandbox context with dynamic permissions requires cwd"
)


@dataclass(frozen=True, slots=True)
class EntrySpec:
    """One parsed, unresolved ``file_system.entries`` item.

    Exactly one of ``path`` (an absolute normalised path) and ``special`` (a special
    kind such as ``"root"``) is set; ``subpath`` only goes with ``project_roots``.
    """

    access: Access
    path: str | None = None
    special: str | None = None
    subpath: str | None = None


@dataclass(frozen=True, slots=True)
class SandboxSpec:
    """A parsed restricted file-system policy plus the context's ``cwd``."""

    entries: tuple[EntrySpec, ...]
    cwd: str | None = None


class _Malformed(Exception):
    """Internal: the profile does not match any shape Codex accepts."""


def parse_sandbox(raw: Mapping[str, Any] | None) -> SandboxSpec | None:
    """Parse the ``sandbox`` parameter of an fs method.

    Returns ``None`` when the operation runs unrestricted: no sandbox, or a profile
    of type ``disabled``/``external``, or a managed ``unrestricted`` file system.
    Malformed input raises :class:`InvalidParams` with the serde message 0.133
    answers. ``windowsSandboxLevel`` (required by 0.133) is accepted but not
    required, and unknown special kinds are ignored as later Codex does.
    """
    if raw is None:
        return None
    if "permissions" not in raw:
        raise InvalidParams("missing field `permissions`")
    cwd_raw = raw.get("cwd")
    cwd: str | None = None
    if cwd_raw is not None:
        if not isinstance(cwd_raw, str):
            raise InvalidParams(RELATIVE_PATH_MESSAGE)
        cwd = parse_absolute_path(cwd_raw)
    try:
        entries = _parse_permission_profile(raw["permissions"])
    except _Malformed:
        raise InvalidParams(MALFORMED_PROFILE_MESSAGE) from None
    if entries is None:
        return None
    return SandboxSpec(entries=entries, cwd=cwd)


def _parse_permission_profile(raw: object) -> tuple[EntrySpec, ...] | None:
    """Entries of a restricted profile, or ``None`` for an unrestricted one."""
    if not isinstance(raw, Mapping):
        raise _Malformed
    kind = raw.get("type")
    if kind is None:
        return _parse_legacy_profile(raw)
    if kind == "disabled":
        return None
    if kind == "external":
        _parse_network(raw.get("network"))
        return None
    if kind != "managed":
        raise _Malformed
    _parse_network(raw.get("network"))
    file_system = raw.get("file_system")
    if not isinstance(file_system, Mapping):
        raise _Malformed
    fs_kind = file_system.get("type")
    if fs_kind == "unrestricted":
        return None
    if fs_kind != "restricted":
        raise _Malformed
    return _parse_entries(file_system.get("entries"))


def _parse_legacy_profile(raw: Mapping[Any, Any]) -> tuple[EntrySpec, ...]:
    # The pre-tagged shape: {"network"?: {"enabled"?}, "file_system"?: {"entries"}},
    # with unknown fields rejected. A missing file_system means "nothing allowed".
    if set(raw) - {"network", "file_system"}:
        raise _Malformed
    network = raw.get("network")
    if network is not None and not isinstance(network, Mapping):
        raise _Malformed
    file_system = raw.get("file_system")
    if file_system is None:
        return ()
    if not isinstance(file_system, Mapping):
        raise _Malformed
    return _parse_entries(file_system.get("entries"))


def _parse_network(raw: object) -> None:
    if raw not in ("restricted", "enabled"):
        raise _Malformed


def _parse_entries(raw: object) -> tuple[EntrySpec, ...]:
    # `entries` is required (0.133 rejects a restricted file system without it).
    if not isinstance(raw, list):
        raise _Malformed
    entries = (_parse_entry(item) for item in raw)
    return tuple(entry for entry in entries if entry is not None)


def _parse_entry(raw: object) -> EntrySpec | None:
    if not isinstance(raw, Mapping):
        raise _Malformed
    access_name = raw.get("access")
    access = _ACCESS_BY_NAME.get(access_name) if isinstance(access_name, str) else None
    path = raw.get("path")
    if access is None or not isinstance(path, Mapping):
        raise _Malformed
    path_type = path.get("type")
    if path_type == "path":
        return EntrySpec(access=access, path=_parse_entry_path(path.get("path")))
    if path_type != "special":
        raise _Malformed
    value = path.get("value")
    if not isinstance(value, Mapping) or not isinstance(value.get("kind"), str):
        raise _Malformed
    kind: str = value["kind"]
    if kind not in _KNOWN_KINDS:
        # Later Codex keeps unknown kinds so older runtimes can ignore them.
        return None
    subpath = value.get("subpath")
    if kind == "project_roots" and subpath is not None:
        if not isinstance(subpath, str):
            raise _Malformed
        return EntrySpec(access=access, special=kind, subpath=subpath)
    return EntrySpec(access=access, special=kind)


def _parse_entry_path(raw: object) -> str:
    if not isinstance(raw, str):
        raise _Malformed
    try:
        return parse_absolute_path(raw)
    except (InvalidParams, InvalidRequest):
        raise _Malformed from None


# --- resolution ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ResolvedEntry:
    """An entry bound to a canonical absolute path."""

    path: str
    access: Access

    @property
    def specificity(self) -> int:
        return _component_count(self.path)


def resolve_sandbox(
    spec: SandboxSpec | None, *, environ: Mapping[str, str] | None = None
) -> FsSandbox | None:
    """Bind ``spec`` to real paths; ``None`` means "no checks needed".

    Touches the disk (``realpath`` of every root, the ``.git`` pointer file), so call
    it from a worker thread. ``environ`` supplies ``TMPDIR`` for the ``tmpdir``
    special path (default: this process's environment).
    """
    if spec is None or _has_full_disk_write_access(spec.entries):
        return None
    env = os.environ if environ is None else environ
    needs_cwd = any(entry.special in _CWD_KINDS for entry in spec.entries)
    if needs_cwd and spec.cwd is None:
        raise InvalidRequest(DYNAMIC_PERMISSIONS_NEED_CWD_MESSAGE)
    resolved: list[ResolvedEntry] = []
    for spec_entry in spec.entries:
        # Codex only ever grants read through `minimal`.
        access = Access.READ if spec_entry.special == "minimal" else spec_entry.access
        for path in _entry_locations(spec_entry, spec.cwd, env):
            resolved.append(ResolvedEntry(os.path.realpath(path), access))
    base = FsSandbox(resolved)
    carve_outs: list[ResolvedEntry] = []
    for entry in resolved:
        if entry.access is Access.WRITE and base.can_write(entry.path):
            carve_outs.extend(_protected_paths(entry.path))
    return FsSandbox([*resolved, *carve_outs])


def _entry_locations(entry: EntrySpec, cwd: str | None, environ: Mapping[str, str]) -> list[str]:
    if entry.path is not None:
        return [entry.path]
    kind = entry.special
    if kind == "root":
        return ["/"]
    if kind == "minimal":
        return list(PLATFORM_DEFAULT_READ_ROOTS) if entry.access.can_read else []
    if kind == "slash_tmp":
        return ["/tmp"] if os.path.isdir("/tmp") else []
    if kind == "tmpdir":
        tmpdir = environ.get("TMPDIR", "")
        return [normalize_path(tmpdir)] if tmpdir.startswith("/") else []
    assert cwd is not None  # checked by resolve_sandbox for the cwd kinds
    if kind == "project_roots" and entry.subpath is not None:
        return [normalize_path(posixpath.join(cwd, entry.subpath))]
    return [cwd]


def _has_full_disk_write_access(entries: Sequence[EntrySpec]) -> bool:
    """Codex's rule: ``root`` is writable and nothing narrows it.

    Such a policy is not sandboxed at all by Codex, so we skip checks too.
    """
    if not any(e.special == "root" and e.access is Access.WRITE for e in entries):
        return False
    for entry in entries:
        if entry.access is Access.WRITE or entry.special == "minimal":
            continue
        if entry.special == "root" and entry.access is Access.READ:
            continue
        # Only a `read` entry can be shadowed by a `write` one for the same target;
        # `none` wins ties.
        shadowed = entry.access is Access.READ and any(
            other.access is Access.WRITE and _same_target(other, entry) for other in entries
        )
        if not shadowed:
            return False
    return True


def _same_target(left: EntrySpec, right: EntrySpec) -> bool:
    """Whether two entries name the same location without resolving a cwd."""

    def key(entry: EntrySpec) -> tuple[str, str | None]:
        if entry.path == "/" or entry.special == "root":
            return ("root", None)
        if entry.path == "/tmp" or entry.special == "slash_tmp":
            return ("slash_tmp", None)
        if entry.path is not None:
            return ("path", entry.path)
        if entry.special == "project_roots" and entry.subpath is None:
            return ("current_working_directory", None)
        return (entry.special or "", entry.subpath)

    return key(left) == key(right)


def _protected_paths(root: str) -> list[ResolvedEntry]:
    protected: list[ResolvedEntry] = []
    for name in PROTECTED_SUBDIRECTORIES:
        literal = posixpath.join(root, name)
        # The literal path guards removing a symlinked `.git` itself; the resolved
        # one guards writing through it.
        for path in {literal, os.path.realpath(literal)}:
            protected.append(ResolvedEntry(path, Access.READ))
    gitdir = _gitdir_from_pointer_file(posixpath.join(root, ".git"))
    if gitdir is not None:
        protected.append(ResolvedEntry(os.path.realpath(gitdir), Access.READ))
    return protected


def _gitdir_from_pointer_file(dot_git: str) -> str | None:
    """The ``gitdir:`` target of a worktree/submodule ``.git`` file, if any."""
    if not os.path.isfile(dot_git):
        return None
    try:
        with open(dot_git, encoding="utf-8", errors="surrogateescape") as f:
            contents = f.read(64 * 1024).strip()
    except OSError:
        return None
    _, sep, target = contents.partition(":")
    target = target.strip()
    if not sep or not target:
        return None
    return normalize_path(posixpath.join(posixpath.dirname(dot_git), target))


# --- enforcement ---------------------------------------------------------------------


class SandboxDenied(OSError):
    """A path operation the sandbox policy does not allow.

    ``errno`` is what Codex 0.133's mount-namespace sandbox would have produced
    (ENOENT or EROFS), so the fs error mapping answers the same wire error; the
    message says what was refused, for logs.
    """

    def __init__(self, code: int, message: str) -> None:
        super().__init__(code, message)


def _component_count(path: str) -> int:
    return 1 + sum(1 for part in path.split("/") if part)


def _is_within(path: str, root: str) -> bool:
    return root == "/" or path == root or path.startswith(root + "/")


def resolve_location(path: str, *, follow_final: bool = True) -> str:
    """Where ``path`` really points: symlinks in the existing prefix resolved.

    With ``follow_final=False`` a final symlink is not followed (the location of the
    directory entry itself, as ``lstat``, ``unlink`` and ``symlink`` see it).
    """
    if follow_final:
        return os.path.realpath(path)
    parent, name = posixpath.split(path)
    if not name:
        return "/"
    return posixpath.join(os.path.realpath(parent), name)


class FsSandbox:
    """A restricted policy bound to canonical paths; answers and enforces access.

    The ``check_*`` methods take lexically normalised request paths, resolve them
    and raise :class:`SandboxDenied`. The ``can_*``/``is_visible`` queries take
    already-resolved paths.
    """

    def __init__(self, entries: Iterable[ResolvedEntry]) -> None:
        self.entries: tuple[ResolvedEntry, ...] = tuple(entries)
        self._readable_roots = tuple(e.path for e in self.entries if self.can_read(e.path))

    def access(self, resolved: str) -> Access | None:
        """The governing entry's access, or ``None`` when no entry contains the path."""
        best: ResolvedEntry | None = None
        for entry in self.entries:
            if not _is_within(resolved, entry.path):
                continue
            if best is None or (entry.specificity, entry.access) > (
                best.specificity,
                best.access,
            ):
                best = entry
        return None if best is None else best.access

    def can_read(self, resolved: str) -> bool:
        access = self.access(resolved)
        return access is not None and access.can_read

    def can_write(self, resolved: str) -> bool:
        access = self.access(resolved)
        return access is not None and access.can_write

    def is_visible(self, resolved: str) -> bool:
        """Readable, or a directory on the way to a readable root.

        Bubblewrap creates the ancestors of every mounted root, so 0.133 can stat
        and list them (listing shows only the way to the roots).
        """
        if self.can_read(resolved):
            return True
        return any(_is_within(root, resolved) and root != resolved for root in self._readable_roots)

    def check_read(self, path: str, *, follow_final: bool = True) -> str:
        """Require read access; return the resolved location."""
        resolved = resolve_location(path, follow_final=follow_final)
        if not self.can_read(resolved):
            raise SandboxDenied(errno.ENOENT, f"reading {path} is not permitted by the sandbox")
        return resolved

    def check_visible(self, path: str) -> str:
        """Require that ``path`` can be stat'ed or listed; return its location."""
        resolved = resolve_location(path)
        if not self.is_visible(resolved):
            raise SandboxDenied(errno.ENOENT, f"accessing {path} is not permitted by the sandbox")
        return resolved

    def check_write(self, path: str, *, follow_final: bool = True) -> str:
        """Require write access; return the resolved location.

        Creating an entry also changes its parent directory, so a path that does
        not exist yet needs a writable parent: a missing writable root cannot be
        conjured up inside a read-only directory.
        """
        resolved = resolve_location(path, follow_final=follow_final)
        writable = self.can_write(resolved)
        if writable and not os.path.lexists(resolved):
            writable = self.can_write(posixpath.dirname(resolved))
        if not writable:
            raise self._write_denied(path, resolved)
        return resolved

    def check_remove(self, path: str, *, recursive: bool) -> str:
        """Require that ``path`` (the entry itself, not a symlink's target) may go.

        Unlinking changes the parent directory, so the parent must be writable too:
        a writable root itself cannot be removed. A recursive removal must not
        reach into a read-only or hidden carve-out below the path.
        """
        resolved = resolve_location(path, follow_final=False)
        parent = posixpath.dirname(resolved)
        if not self.can_write(resolved) or not self.can_write(parent):
            raise self._write_denied(path, resolved)
        if recursive and os.path.isdir(resolved) and not os.path.islink(resolved):
            for entry in self.entries:
                inside = entry.path != resolved and _is_within(entry.path, resolved)
                if inside and not self.can_write(entry.path):
                    raise SandboxDenied(
                        errno.EROFS,
                        f"removing {path} is not permitted by the sandbox: "
                        f"{entry.path} is protected",
                    )
        return resolved

    def _write_denied(self, path: str, resolved: str) -> SandboxDenied:
        parent = posixpath.dirname(resolved)
        # In 0.133's namespace a parent that is not mounted at all does not exist.
        visible = self.is_visible(parent) or self.access(parent) is not None
        code = errno.EROFS if visible else errno.ENOENT
        return SandboxDenied(code, f"writing {path} is not permitted by the sandbox")
