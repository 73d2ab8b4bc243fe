"""The sandbox policy: Codex's portable sandbox intent, parsed and resolved once.

This module owns two things:

* **Request paths.** :func:`parse_absolute_path` turns a wire path into the native
  path an fs method operates on: absolute paths as Codex 0.133 takes them, and
  ``file://`` URIs as 0.171 sends them, both lexically normalised the way Codex's
  ``AbsolutePathBuf`` is (``a/link/../x`` becomes ``a/x`` *before* anything touches
  the disk); :mod:`exec_server.protocol.path_uri` does the parsing.
* **The ``sandbox`` parameter** (Codex's ``FileSystemSandboxContext``, sent with the
  fs methods and, since 0.171, with ``process/start``). It is parsed by
  :func:`parse_sandbox` and resolved by :func:`resolve_policy` into one
  :class:`SandboxPolicy`: its file part (an :class:`FsSandbox`, or ``None`` when
  files are not restricted: unrestricted, disabled and external profiles, and
  restricted ones that grant full-disk write, as Codex runs those unsandboxed) and
  whether the network is restricted. ``sandbox: null`` is :data:`UNRESTRICTED`.
  The fs handler asks the file part before touching a path;
  :mod:`.confinement` turns the same object into kernel confinement for a child.

Codex 0.133 enforces a restricted profile by running the fs operation in a
bubblewrap mount namespace, so a denial surfaces as whatever the kernel says in
there. We check paths instead and raise :class:`SandboxDenied` with the errno
Codex was observed to produce, so the wire error is identical:

* a path outside every readable root does not exist in the namespace: reads,
  metadata and listings fail with ENOENT (-32004 "No such file or directory");
* a write to a readable but not writable place fails with EROFS (-32603
  "Read-only file system"); a write whose parent is not visible at all fails with
  ENOENT;
* inside a ``none`` entry, 0.133 answers ENOENT (the entry is an empty directory
  there) and 0.171 EACCES (-32600 "Permission denied"), both probed; the era is
  told by the context's shape (0.171 sends ``file://`` URIs and workspace roots).

Entry semantics follow ``codex_protocol::permissions``: the most specific entry
(most path components) that contains a path decides its access; equally specific
entries resolve ``none`` over ``write`` over ``read``. Every writable root gets
read-only ``.git``, ``.agents`` and ``.codex`` carve-outs (0.171 adds ``.aws``), and
the ``gitdir:`` target of a ``.git`` pointer file. Codex protects these whether or not
they exist (0.171 even creates empty placeholder directories for the missing ones
while a sandboxed command runs, probed).

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
import functools
import os
import posixpath
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ...protocol.errors import InternalError, InvalidParams, InvalidRequest
from ...protocol.path_uri import (
    RELATIVE_PATH_MESSAGE,
    normalize_path,
    parse_wire_path,
)
from .disk_view import DiskView

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

#: Names made read-only at the top of every writable root (Codex 0.133) ...
PROTECTED_SUBDIRECTORIES = (".git", ".agents", ".codex")
#: ... and in 0.171, which also protects ``.aws`` (probed: a sandboxed ``mkdir .aws``
#: in a writable root fails, and an fs write into it answers EROFS).
PROTECTED_SUBDIRECTORIES_0171 = (*PROTECTED_SUBDIRECTORIES, ".aws")

#: Codex's serde error for any permission profile that fails to parse.
MALFORMED_PROFILE_MESSAGE = "data did not match any variant of untagged enum PermissionProfileDe"
#: 0.133's -32600 for a cwd-relative entry in a context without ``cwd``.
DYNAMIC_PERMISSIONS_NEED_CWD_MESSAGE = (
    "file system sandbox context with dynamic permissions requires cwd"
)


class UnsupportedPolicy(InternalError):
    """A well-formed policy this executor cannot enforce faithfully (-32603).

    Raised while resolving or confining: the request is refused (fail closed) with
    the message, which names what cannot be enforced and why.
    """


@dataclass(frozen=True, slots=True)
class EntrySpec:
    """One parsed, unresolved ``file_system.entries`` item.

    Exactly one of ``path`` (an absolute normalised path), ``special`` (a special
    kind such as ``"root"``) and ``glob`` (a ``glob_pattern``) is set; ``subpath``
    only goes with ``project_roots``. ``skip_if_missing`` is 0.171's
    ``missing_path_behavior: "skip"``.
    """

    access: Access
    path: str | None = None
    special: str | None = None
    subpath: str | None = None
    glob: str | None = None
    skip_if_missing: bool = False


@dataclass(frozen=True, slots=True)
class SandboxSpec:
    """A parsed sandbox context: the file-system policy, the network policy and the
    context's paths.

    ``restricts_files`` is false for profiles that leave files alone (``external``,
    a managed ``unrestricted`` file system); ``entries`` is then empty. ``modern``
    marks a 0.171-shaped context (``file://`` URIs, workspace roots), whose denial
    errors and protected names are 0.171's.
    """

    entries: tuple[EntrySpec, ...]
    cwd: str | None = None
    restricts_files: bool = True
    restricts_network: bool = False
    workspace_roots: tuple[str, ...] = ()
    modern: bool = False


class _Malformed(Exception):
    """Internal: the profile does not match any shape Codex accepts."""


@dataclass(frozen=True, slots=True)
class _Profile:
    entries: tuple[EntrySpec, ...]
    restricts_files: bool
    restricts_network: bool


def parse_sandbox(raw: Mapping[str, Any] | None) -> SandboxSpec | None:
    """Parse the ``sandbox`` parameter of an fs method or of ``process/start``.

    Returns ``None`` for ``sandbox: null`` and for a ``disabled`` profile: nothing is
    restricted. ``external`` profiles and managed ``unrestricted`` file systems give
    a spec that restricts files not at all (``restricts_files`` false) but may
    restrict the network. Malformed input raises :class:`InvalidParams` with the
    serde message Codex answers. ``windowsSandboxLevel`` (required by Codex) is
    accepted but not required, and unknown special kinds are ignored as later Codex
    does.
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
    workspace_roots = _parse_workspace_roots(raw)
    try:
        profile = _parse_permission_profile(raw["permissions"])
    except _Malformed:
        raise InvalidParams(MALFORMED_PROFILE_MESSAGE) from None
    if profile is None:
        return None
    modern = (
        "workspaceRoots" in raw
        or "policyContext" in raw
        or (isinstance(cwd_raw, str) and cwd_raw[:5].lower() == "file:")
    )
    return SandboxSpec(
        entries=profile.entries,
        cwd=cwd,
        restricts_files=profile.restricts_files,
        restricts_network=profile.restricts_network,
        workspace_roots=workspace_roots,
        modern=modern,
    )


def _parse_workspace_roots(raw: Mapping[str, Any]) -> tuple[str, ...]:
    # 0.171 sends the roots at the top (process/start) and in `policyContext` (fs).
    roots = raw.get("workspaceRoots")
    context = raw.get("policyContext")
    if roots is None and isinstance(context, Mapping):
        roots = context.get("workspaceRoots")
    if roots is None:
        return ()
    if not isinstance(roots, list) or not all(isinstance(root, str) for root in roots):
        raise InvalidParams("invalid type: expected a sequence of file URIs for `workspaceRoots`")
    return tuple(parse_absolute_path(root) for root in roots)


def _parse_permission_profile(raw: object) -> _Profile | None:
    """The profile's restrictions, or ``None`` for a ``disabled`` one."""
    if not isinstance(raw, Mapping):
        raise _Malformed
    kind = raw.get("type")
    if kind is None:
        return _parse_legacy_profile(raw)
    if kind == "disabled":
        return None
    if kind == "external":
        return _Profile((), restricts_files=False, restricts_network=_parse_network(raw))
    if kind != "managed":
        raise _Malformed
    network_restricted = _parse_network(raw)
    file_system = raw.get("file_system")
    if not isinstance(file_system, Mapping):
        raise _Malformed
    fs_kind = file_system.get("type")
    if fs_kind == "unrestricted":
        return _Profile((), restricts_files=False, restricts_network=network_restricted)
    if fs_kind != "restricted":
        raise _Malformed
    entries = _parse_entries(file_system.get("entries"))
    return _Profile(entries, restricts_files=True, restricts_network=network_restricted)


def _parse_legacy_profile(raw: Mapping[Any, Any]) -> _Profile:
    # The pre-tagged shape: {"network"?: {"enabled"?}, "file_system"?: {"entries"}},
    # with unknown fields rejected. A missing file_system means "nothing allowed";
    # the network is restricted unless `enabled` says otherwise.
    if set(raw) - {"network", "file_system"}:
        raise _Malformed
    network = raw.get("network")
    if network is not None and not isinstance(network, Mapping):
        raise _Malformed
    restricts_network = not (network is not None and network.get("enabled") is True)
    file_system = raw.get("file_system")
    if file_system is None:
        return _Profile((), restricts_files=True, restricts_network=restricts_network)
    if not isinstance(file_system, Mapping):
        raise _Malformed
    entries = _parse_entries(file_system.get("entries"))
    return _Profile(entries, restricts_files=True, restricts_network=restricts_network)


def _parse_network(raw: Mapping[Any, Any]) -> bool:
    """Whether the profile's ``network`` is ``restricted`` (else ``enabled``)."""
    network: object = raw.get("network")
    if network not in ("restricted", "enabled"):
        raise _Malformed
    return network == "restricted"


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
    skip = _parse_missing_path_behavior(raw.get("missing_path_behavior"))
    path_type = path.get("type")
    if path_type == "path":
        return EntrySpec(
            access=access, path=_parse_entry_path(path.get("path")), skip_if_missing=skip
        )
    if path_type == "glob_pattern":
        pattern = path.get("pattern")
        if not isinstance(pattern, str):
            raise _Malformed
        return EntrySpec(access=access, glob=pattern, skip_if_missing=skip)
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
        return EntrySpec(access=access, special=kind, subpath=subpath, skip_if_missing=skip)
    return EntrySpec(access=access, special=kind, skip_if_missing=skip)


def _parse_missing_path_behavior(raw: object) -> bool:
    # 0.171 knows one value; anything else is its serde error (probed).
    if raw is None:
        return False
    if raw != "skip":
        shown = raw if isinstance(raw, str) else str(raw)
        raise InvalidParams(f"unknown variant `{shown}`, expected `skip`")
    return True


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
    """An entry bound to a canonical absolute path.

    ``skip_if_missing`` comes from the entry (0.171's ``missing_path_behavior``);
    ``protected`` marks the implicit read-only names under a writable root, which
    stay protected even when they do not exist.
    """

    path: str
    access: Access
    skip_if_missing: bool = False
    protected: bool = False

    @property
    def specificity(self) -> int:
        return _component_count(self.path)


@dataclass(frozen=True, slots=True)
class SandboxPolicy:
    """The one policy object: what a sandboxed request may touch.

    ``files`` is ``None`` when files are not restricted; ``restricts_network`` is
    Codex's ``network: "restricted"``. :data:`UNRESTRICTED` is ``sandbox: null``
    (and a ``disabled`` profile): it allows everything and confines nothing.
    """

    files: FsSandbox | None
    restricts_network: bool

    @property
    def confines(self) -> bool:
        """Whether a child process must be confined at all."""
        return self.files is not None or self.restricts_network


UNRESTRICTED = SandboxPolicy(files=None, restricts_network=False)


def resolve_policy(
    spec: SandboxSpec | None,
    *,
    environ: Mapping[str, str] | None = None,
    view: DiskView | None = None,
) -> SandboxPolicy:
    """Bind ``spec`` to real paths: the :class:`SandboxPolicy` it asks for.

    Touches the disk (``realpath`` of every root, the ``.git`` pointer file), through
    ``view`` when given (which then records what the policy depends on), so call it
    from a worker thread. ``environ`` supplies ``TMPDIR`` for the ``tmpdir`` special
    path (default: this process's environment). A ``glob_pattern`` entry raises
    :class:`UnsupportedPolicy`: we do not expand globs, and ignoring one would grant
    what it denies.
    """
    if spec is None:
        return UNRESTRICTED
    files = _resolve_files(spec, environ, DiskView() if view is None else view)
    return SandboxPolicy(files=files, restricts_network=spec.restricts_network)


def resolve_sandbox(
    spec: SandboxSpec | None, *, environ: Mapping[str, str] | None = None
) -> FsSandbox | None:
    """The file part of :func:`resolve_policy`; ``None`` means "no checks needed"."""
    return resolve_policy(spec, environ=environ).files


def _resolve_files(
    spec: SandboxSpec, environ: Mapping[str, str] | None, view: DiskView
) -> FsSandbox | None:
    if not spec.restricts_files or _has_full_disk_write_access(spec.entries):
        return None
    for spec_entry in spec.entries:
        if spec_entry.glob is not None:
            raise UnsupportedPolicy(
                f"sandbox entry glob_pattern {spec_entry.glob!r} ({spec_entry.access.name.lower()})"
                " is not supported by this executor; refusing to run without it"
            )
    env = os.environ if environ is None else environ
    project_roots = spec.workspace_roots or ((spec.cwd,) if spec.cwd is not None else ())
    for spec_entry in spec.entries:
        missing = (
            spec.cwd is None
            if spec_entry.special == "current_working_directory"
            else not project_roots
        )
        if spec_entry.special in _CWD_KINDS and missing:
            raise InvalidRequest(DYNAMIC_PERMISSIONS_NEED_CWD_MESSAGE)
    resolved: list[ResolvedEntry] = []
    for spec_entry in spec.entries:
        # Codex only ever grants read through `minimal`.
        access = Access.READ if spec_entry.special == "minimal" else spec_entry.access
        for path in _entry_locations(spec_entry, spec.cwd, project_roots, env, view):
            resolved.append(ResolvedEntry(view.realpath(path), access, spec_entry.skip_if_missing))
    base = FsSandbox(resolved, modern=spec.modern)
    names = PROTECTED_SUBDIRECTORIES_0171 if spec.modern else PROTECTED_SUBDIRECTORIES
    carve_outs: list[ResolvedEntry] = []
    for entry in resolved:
        if entry.access is Access.WRITE and base.can_write(entry.path):
            carve_outs.extend(_protected_paths(entry.path, names, view))
    return FsSandbox([*resolved, *carve_outs], modern=spec.modern)


def _entry_locations(
    entry: EntrySpec,
    cwd: str | None,
    project_roots: Sequence[str],
    environ: Mapping[str, str],
    view: DiskView,
) -> list[str]:
    if entry.path is not None:
        return [entry.path]
    kind = entry.special
    if kind == "root":
        return ["/"]
    if kind == "minimal":
        return list(PLATFORM_DEFAULT_READ_ROOTS) if entry.access.can_read else []
    if kind == "slash_tmp":
        return ["/tmp"] if view.isdir("/tmp") else []
    if kind == "tmpdir":
        tmpdir = environ.get("TMPDIR", "")
        return [normalize_path(tmpdir)] if tmpdir.startswith("/") else []
    if kind == "current_working_directory":
        assert cwd is not None  # checked by _resolve_files
        return [cwd]
    # `project_roots`: 0.171's workspace roots, else the cwd (0.133).
    subpath = entry.subpath
    if subpath is None:
        return list(project_roots)
    return [normalize_path(posixpath.join(root, subpath)) for root in project_roots]


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


def _protected_paths(root: str, names: Sequence[str], view: DiskView) -> list[ResolvedEntry]:
    protected: list[ResolvedEntry] = []
    for name in names:
        literal = posixpath.join(root, name)
        protected.append(ResolvedEntry(literal, Access.READ, protected=True))
        # A symlinked `.git`: the literal path guards removing the link itself, the
        # resolved one writing through it. (`root` is canonical, so a path that is
        # not a symlink is its own realpath.)
        if view.islink(literal):
            target = view.realpath(literal)
            if target != literal:
                protected.append(ResolvedEntry(target, Access.READ, protected=True))
    gitdir = _gitdir_from_pointer_file(posixpath.join(root, ".git"), view)
    if gitdir is not None:
        protected.append(ResolvedEntry(view.realpath(gitdir), Access.READ, protected=True))
    return protected


def _gitdir_from_pointer_file(dot_git: str, view: DiskView) -> str | None:
    """The ``gitdir:`` target of a worktree/submodule ``.git`` file, if any."""
    if not view.isfile(dot_git):
        return None
    contents = view.read_text(dot_git)
    if contents is None:
        return None
    _, sep, target = contents.strip().partition(":")
    target = target.strip()
    if not sep or not target:
        return None
    return normalize_path(posixpath.join(posixpath.dirname(dot_git), target))


# --- enforcement ---------------------------------------------------------------------


class SandboxDenied(OSError):
    """A path operation the sandbox policy does not allow.

    ``errno`` is what Codex's mount-namespace sandbox would have produced (ENOENT,
    EROFS, or in 0.171 EACCES inside a ``none`` entry), so the fs error mapping
    answers the same wire error; the message says what was refused, for logs.
    """

    def __init__(self, code: int, message: str) -> None:
        super().__init__(code, message)


def _component_count(path: str) -> int:
    return 1 + sum(1 for part in path.split("/") if part)


def is_within(path: str, root: str) -> bool:
    """Whether ``path`` is ``root`` or lies below it."""
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
    already-resolved paths. ``modern`` selects 0.171's answers where they differ
    from 0.133's (``none`` entries).
    """

    def __init__(self, entries: Iterable[ResolvedEntry], *, modern: bool = False) -> None:
        self.entries: tuple[ResolvedEntry, ...] = tuple(entries)
        self.modern = modern
        # (entry, its path + "/", (specificity, access)) for `governing`.
        self._ranked = tuple(
            (entry, entry.path + "/", (entry.specificity, int(entry.access)))
            for entry in self.entries
        )

    def governing(self, resolved: str) -> ResolvedEntry | None:
        """The entry that decides access to ``resolved`` (``None``: no entry covers it).

        The most specific entry wins; equally specific ones resolve ``none`` over
        ``write`` over ``read``.
        """
        best: ResolvedEntry | None = None
        best_key = (-1, -1)
        for entry, prefix, key in self._ranked:
            if key > best_key and (
                resolved == entry.path or resolved.startswith(prefix) or prefix == "//"
            ):
                best, best_key = entry, key
        return best

    @functools.cached_property
    def _readable_roots(self) -> tuple[str, ...]:
        return tuple(e.path for e in self.entries if self.can_read(e.path))

    def access(self, resolved: str) -> Access | None:
        """The governing entry's access, or ``None`` when no entry contains the path."""
        best = self.governing(resolved)
        return None if best is None else best.access

    def _denied_inside_none(self, resolved: str) -> ResolvedEntry | None:
        """0.171 only: the ``none`` entry whose contents ``resolved`` is, if any.

        There a ``none`` entry is an inaccessible mount point: it can be stat'ed
        and listed in its parent, but what is inside answers EACCES (probed).
        """
        if not self.modern:
            return None
        entry = self.governing(resolved)
        return entry if entry is not None and entry.access is Access.NONE else None

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
        hidden = self._denied_inside_none(resolved)
        if hidden is not None and hidden.path == resolved:
            return True
        return any(is_within(root, resolved) and root != resolved for root in self._readable_roots)

    def check_read(self, path: str, *, follow_final: bool = True) -> str:
        """Require read access; return the resolved location."""
        resolved = resolve_location(path, follow_final=follow_final)
        if not self.can_read(resolved):
            code = errno.EACCES if self._denied_inside_none(resolved) else errno.ENOENT
            raise SandboxDenied(code, f"reading {path} is not permitted by the sandbox")
        return resolved

    def check_visible(self, path: str) -> str:
        """Require that ``path`` can be stat'ed; return its location."""
        resolved = resolve_location(path)
        if not self.is_visible(resolved):
            code = errno.EACCES if self._denied_inside_none(resolved) else errno.ENOENT
            raise SandboxDenied(code, f"accessing {path} is not permitted by the sandbox")
        return resolved

    def check_list(self, path: str) -> str:
        """Require that the directory ``path`` can be listed; return its location."""
        resolved = resolve_location(path)
        if self._denied_inside_none(resolved) is not None:
            raise SandboxDenied(errno.EACCES, f"listing {path} is not permitted by the sandbox")
        return self.check_visible(path)

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
                inside = entry.path != resolved and is_within(entry.path, resolved)
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
