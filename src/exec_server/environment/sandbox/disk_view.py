"""What the disk looked like when a sandbox plan was made, so the plan can be reused.

Resolving a policy (``realpath`` of every root, the ``.git`` pointer files) and
planning its confinement (which paths exist, which are directories) read the disk
dozens of times, and that reading is most of what a sandboxed spawn costs in Python.
A :class:`DiskView` answers those reads and remembers each answer; a plan made
through it stays valid exactly as long as :meth:`DiskView.still_holds` (one
``lstat`` per path the plan looked at). So a cached plan is never acted on once
the disk under it changed: a ``.git`` created, a root swapped for a symlink, a
pointer file rewritten.

The facts kept per path: what kind of entry it is (missing, directory, file,
symlink and its target, other) and which inode; for files whose contents were read,
also their size and change times. A directory replaced by another at the same path
is a change too: a prepared Landlock ruleset holds the inodes it was built from.

``hidden`` names paths to treat as missing (the sandbox's own placeholder
directories, which stand in for missing paths while a confined child runs).
"""

from __future__ import annotations

import os
import posixpath
import stat
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

#: How much of a file :meth:`DiskView.read_text` reads.
MAX_READ_BYTES = 64 * 1024
#: Symlinks followed in one path before giving up (Linux's MAXSYMLINKS).
MAX_SYMLINKS = 40


@dataclass(frozen=True, slots=True)
class _Node:
    """One path as ``lstat`` saw it: its ``kind``, a symlink's ``target``, and which
    inode it is (a prepared Landlock ruleset holds inodes, not paths)."""

    kind: str  # "missing", "dir", "file", "link" or "other"
    target: str | None = None
    inode: tuple[int, int] | None = None


_MISSING = _Node("missing")
_KINDS = {stat.S_IFDIR: "dir", stat.S_IFREG: "file"}


def _lstat_node(path: str) -> _Node:
    try:
        info = os.lstat(path)
    except (OSError, ValueError):
        return _MISSING
    mode = stat.S_IFMT(info.st_mode)
    if mode == stat.S_IFLNK:
        try:
            return _Node("link", os.readlink(path))
        except OSError:
            return _MISSING  # gone between the two calls
    return _Node(_KINDS.get(mode, "other"), inode=(info.st_dev, info.st_ino))


def _file_stamp(path: str) -> tuple[int, ...] | None:
    try:
        info = os.stat(path)
    except (OSError, ValueError):
        return None
    return (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)


def _never_hidden(_path: str) -> bool:
    return False


class DiskView:
    """Answers a plan's disk reads and remembers them (not thread-safe)."""

    def __init__(self, hidden: Callable[[str], bool] = _never_hidden) -> None:
        self._hidden = hidden
        self._nodes: dict[str, _Node] = {}
        self._real: dict[str, str] = {}
        self._files: dict[str, tuple[tuple[int, ...] | None, str | None]] = {}

    # --- reads ---------------------------------------------------------------------

    def _node(self, path: str) -> _Node:
        node = self._nodes.get(path)
        if node is None:
            node = _MISSING if self._hidden(path) else _lstat_node(path)
            self._nodes[path] = node
        return node

    def lexists(self, path: str) -> bool:
        """``os.path.lexists``."""
        return self._node(path).kind != "missing"

    def islink(self, path: str) -> bool:
        """``os.path.islink``."""
        return self._node(path).kind == "link"

    def isdir(self, path: str) -> bool:
        """``os.path.isdir`` (follows symlinks)."""
        return self._followed(path) == "dir"

    def isfile(self, path: str) -> bool:
        """``os.path.isfile`` (follows symlinks)."""
        return self._followed(path) == "file"

    def exists(self, path: str) -> bool:
        """``os.path.exists`` (follows symlinks; a dangling or looping link is not)."""
        return self._followed(path) != "missing"

    def _followed(self, path: str) -> str:
        """The kind ``os.stat(path)`` would see, resolving as the kernel does: every
        symlink followed (at most :data:`MAX_SYMLINKS`), and a component after a
        non-directory fails."""
        pending = deque(part for part in path.split("/") if part)
        current = "/"
        budget = MAX_SYMLINKS
        kind = "dir"
        while pending:
            name = pending.popleft()
            if name == ".":
                continue
            if name == "..":
                current = posixpath.dirname(current)
                continue
            candidate = posixpath.join(current, name)
            node = self._node(candidate)
            if node.kind == "link":
                budget -= 1
                if budget < 0:
                    return "missing"  # ELOOP
                assert node.target is not None
                if node.target.startswith("/"):
                    current = "/"
                pending.extendleft(reversed([p for p in node.target.split("/") if p]))
                continue
            if node.kind == "missing" or (pending and node.kind != "dir"):
                return "missing"  # ENOENT, or ENOTDIR
            current, kind = candidate, node.kind
        return kind

    def realpath(self, path: str) -> str:
        """``os.path.realpath`` (not strict) of an absolute path."""
        real = self._real.get(path)
        if real is None:
            joined, _ = self._join("/", path, {})
            real = self._real[path] = posixpath.normpath(joined)
        return real

    def read_text(self, path: str) -> str | None:
        """The first :data:`MAX_READ_BYTES` of a file (``None`` if unreadable)."""
        cached = self._files.get(path)
        if cached is not None:
            return cached[1]
        stamp = _file_stamp(path)
        text: str | None = None
        if stamp is not None:
            try:
                with open(path, encoding="utf-8", errors="surrogateescape") as f:
                    text = f.read(MAX_READ_BYTES)
            except OSError:
                text = None
        self._files[path] = (stamp, text)
        return text

    def _join(self, path: str, rest: str, seen: dict[str, str | None]) -> tuple[str, bool]:
        # posixpath.realpath's walk, with lstat and readlink answered by the view.
        if rest.startswith("/"):
            rest = rest[1:]
            path = "/"
        while rest:
            name, _, rest = rest.partition("/")
            if not name or name == ".":
                continue
            if name == "..":
                path, tail = posixpath.split(path)
                if tail == "..":
                    path = posixpath.join(path, "..", "..")
                continue
            newpath = posixpath.join(path, name)
            node = self._node(newpath)
            if node.kind != "link":
                path = newpath
                continue
            if newpath in seen:
                resolved = seen[newpath]
                if resolved is not None:
                    path = resolved
                    continue
                return posixpath.join(newpath, rest), False  # a symlink loop
            seen[newpath] = None
            assert node.target is not None
            path, ok = self._join(path, node.target, seen)
            if not ok:
                return posixpath.join(path, rest), False
            seen[newpath] = path
        return path, True

    # --- validity --------------------------------------------------------------------

    def still_holds(self) -> bool:
        """Whether every answer given so far would be the same now."""
        hidden = self._hidden
        for path, node in self._nodes.items():
            now = _MISSING if hidden(path) else _lstat_node(path)
            if now != node:
                return False
        return all(_file_stamp(path) == stamp for path, (stamp, _) in self._files.items())
