"""Enforcing a restricted file system on fs calls: :class:`FsSandbox`.

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

Paths are compared after resolving symlinks (``realpath`` of the existing prefix,
dangling final links followed), so a symlink cannot lead out of a root. The check
and the operation are separate system calls: a concurrent rename or symlink swap
between them is not defended against (the bubblewrap namespace is; we do not use
one, see spec item 34).

``sandbox: null`` (and any profile that restricts no file) is :data:`ALLOW_ALL`, an
:class:`Unrestricted` object with the same methods that allows everything and
resolves nothing, so fs code asks one object either way.
"""

from __future__ import annotations

import errno
import functools
import os
import posixpath
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from .spec import Access


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
    """A restricted policy bound to canonical paths; answers and enforces access
    (:class:`Unrestricted` is ``sandbox: null``'s).

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

    def check_list(self, path: str) -> EntryFilter:
        """Require that the directory ``path`` can be listed; return which of its
        entries (``(name, path)``) the listing may show: those visible both as the
        entry itself and as what it points to."""
        resolved = resolve_location(path)
        if self._denied_inside_none(resolved) is not None:
            raise SandboxDenied(errno.EACCES, f"listing {path} is not permitted by the sandbox")
        location = self.check_visible(path)

        def shows(name: str, entry_path: str) -> bool:
            return self.is_visible(posixpath.join(location, name)) and self.is_visible(
                os.path.realpath(entry_path)
            )

        return shows

    def check_create_directory(self, path: str, *, recursive: bool) -> None:
        """Require that ``path`` (and, recursively, its missing ancestors) may be
        created; an existing one must be visible."""
        missing = _missing_chain(path) if recursive else [path]
        for created in missing:
            self.check_write(created)
        if not missing:
            self.check_visible(path)

    def may_copy(self, entry_path: str) -> bool:
        """Whether a directory entry (not followed) is part of a recursive copy: one
        the sandbox hides is left out."""
        return self.can_read(resolve_location(entry_path, follow_final=False))

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

    def check_remove(self, path: str, *, recursive: bool, force: bool) -> bool:
        """Require that ``path`` may be removed; ``False`` when there is nothing to
        remove and ``force`` forgives that.

        A path hidden from the sandbox, or not there at all, is "missing" (ENOENT,
        which ``force`` forgives), not "read-only".
        """
        try:
            self._check_remove(path, recursive=recursive)
        except SandboxDenied as denied:
            if self.is_visible(resolve_location(path, follow_final=False)):
                try:
                    os.lstat(path)
                except FileNotFoundError:
                    pass
                else:
                    raise
            if force:
                return False
            raise SandboxDenied(errno.ENOENT, denied.strerror or path) from None
        return True

    def _check_remove(self, path: str, *, recursive: bool) -> str:
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


#: Which entries of a listed directory may be shown: ``(name, path) -> bool``.
EntryFilter = Callable[[str, str], bool]


def _show_all(_name: str, _path: str) -> bool:
    return True


class Unrestricted:
    """The file part of ``sandbox: null``: everything is allowed, nothing resolved.

    It has :class:`FsSandbox`'s methods, so fs code asks one object either way; the
    ``check_*`` methods return the path as given.
    """

    def check_read(self, path: str, *, follow_final: bool = True) -> str:
        return path

    def check_write(self, path: str, *, follow_final: bool = True) -> str:
        return path

    def check_visible(self, path: str) -> str:
        return path

    def check_list(self, path: str) -> EntryFilter:
        return _show_all

    def check_create_directory(self, path: str, *, recursive: bool) -> None:
        return None

    def check_remove(self, path: str, *, recursive: bool, force: bool) -> bool:
        return True

    def may_copy(self, entry_path: str) -> bool:
        return True


#: The one :class:`Unrestricted` object.
ALLOW_ALL = Unrestricted()

#: What fs code asks before touching a path.
FileSandbox = FsSandbox | Unrestricted


def _missing_chain(path: str) -> list[str]:
    """``path`` and its ancestors that do not exist yet, outermost first."""
    chain: list[str] = []
    current = path
    while current != "/" and not os.path.lexists(current):
        chain.append(current)
        current = posixpath.dirname(current)
    chain.reverse()
    return chain
