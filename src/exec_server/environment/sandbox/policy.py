"""The sandbox policy: a parsed ``sandbox`` bound to real paths, once.

:func:`resolve_policy` resolves a :class:`~.spec.SandboxSpec` into one
:class:`SandboxPolicy`: its file part (an :class:`~.fs_sandbox.FsSandbox`, or
``None`` when files are not restricted: unrestricted, disabled and external
profiles, and restricted ones that grant full-disk write, as Codex runs those
unsandboxed) and whether the network is restricted. ``sandbox: null`` is
:data:`UNRESTRICTED`. The fs handler asks the file part before touching a path
(:func:`resolve_sandbox`, always-allow :data:`~.fs_sandbox.ALLOW_ALL` when nothing
is restricted); :mod:`.plan` turns the same policy into kernel confinement.

Every writable root gets read-only ``.git``, ``.agents`` and ``.codex`` carve-outs
(0.171 adds ``.aws``), and the ``gitdir:`` target of a ``.git`` pointer file. Codex
protects these whether or not they exist (0.171 even creates empty placeholder
directories for the missing ones while a sandboxed command runs, probed).

Roots are canonicalised (``realpath`` of the existing prefix, dangling final links
followed), so a root named through a symlinked alias still matches the paths the
fs handler resolves the same way. Every disk read goes through a
:class:`~.disk_view.DiskView`, so a resolved policy can be reused while the disk
under it is unchanged.
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ...protocol.errors import InvalidRequest
from ...protocol.path_uri import normalize_path
from .disk_view import DiskView
from .fs_sandbox import ALLOW_ALL, FileSandbox, FsSandbox, ResolvedEntry
from .spec import (
    CWD_KINDS,
    DYNAMIC_PERMISSIONS_NEED_CWD_MESSAGE,
    PLATFORM_DEFAULT_READ_ROOTS,
    PROTECTED_SUBDIRECTORIES,
    PROTECTED_SUBDIRECTORIES_0171,
    Access,
    EntrySpec,
    SandboxSpec,
    UnsupportedPolicy,
)


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
) -> FileSandbox:
    """The file part of :func:`resolve_policy`, :data:`~.fs_sandbox.ALLOW_ALL` when
    files are not restricted."""
    files = resolve_policy(spec, environ=environ).files
    return ALLOW_ALL if files is None else files


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
        if spec_entry.special in CWD_KINDS and missing:
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
