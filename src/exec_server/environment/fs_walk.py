"""Codex 0.171's ``fs/walk``: a bounded, breadth-first listing of a directory tree.

Semantics, as the 0.171 binary answers (and its ``walk_via_directory_reads``):

* The root must exist (else the fs error, e.g. -32004); a root that is not a
  directory, or a symlink when ``followDirectorySymlinks`` is false, walks to
  nothing (``entries: []``, not truncated).
* Directories are listed breadth first, each one's entries in byte order of their
  names. An entry is reported as ``file`` or ``directory`` (followed through a
  symlink only for directory symlinks, and only when following); other kinds and
  file symlinks are skipped. Paths come back in the request's form.
* ``maxDepth`` counts levels below the root's own entries (0: list the root only);
  stopping there is not truncation. ``maxEntries`` counts every entry examined,
  reported or skipped; reaching it stops the walk with ``truncated: true``.
  ``maxDirectories`` counts directories listed, the root included; a directory
  that would exceed it is reported but not listed, and ``truncated`` is set.
  ``pruneHiddenDirectories`` reports dot-directories without descending. A
  directory reached twice (through a followed symlink) is listed once.
* ``maxDirectories`` and ``maxEntries`` must be at least 1, and the limits at most
  64 levels, 10,000 directories and 50,000 entries (-32600 otherwise). The answer
  stays under 4 MiB (64 bytes per item plus its path count): past that the walk
  stops, truncated.
* A directory that cannot be listed, or an entry that cannot be inspected, is an
  item of ``errors`` (``{path, message}``) and the walk goes on.
"""

from __future__ import annotations

import os
import posixpath
import stat
from collections import deque
from collections.abc import Callable

from ..protocol.errors import InvalidRequest
from ..protocol.messages import (
    FsWalkEntry,
    FsWalkError,
    FsWalkOptions,
    FsWalkParams,
    FsWalkResult,
)
from ..protocol.path_uri import parse_wire_path
from .fs_handler import FileSystemHandler
from .rust_compat import os_error_text
from .sandbox import FileSandbox, parse_sandbox

MAX_WALK_DEPTH = 64
MAX_WALK_DIRECTORIES = 10_000
MAX_WALK_ENTRIES = 50_000
#: Cap on the answer: each item costs its path (and message) plus a fixed overhead.
MAX_WALK_RESPONSE_BYTES = 4 * 1024 * 1024
WALK_ITEM_OVERHEAD_BYTES = 64


def check_walk_options(options: FsWalkOptions) -> None:
    if options.max_directories == 0 or options.max_entries == 0:
        raise InvalidRequest("filesystem walk limits must be greater than zero")
    if (
        options.max_depth > MAX_WALK_DEPTH
        or options.max_directories > MAX_WALK_DIRECTORIES
        or options.max_entries > MAX_WALK_ENTRIES
    ):
        raise InvalidRequest(
            "filesystem walk limits exceed maximums: "
            f"depth={MAX_WALK_DEPTH}, directories={MAX_WALK_DIRECTORIES}, "
            f"entries={MAX_WALK_ENTRIES}"
        )


class _Budget:
    """The answer's size budget; once spent, the walk ends truncated."""

    def __init__(self) -> None:
        self.used = 0

    def take(self, content_bytes: int) -> bool:
        cost = content_bytes + WALK_ITEM_OVERHEAD_BYTES
        if self.used + cost > MAX_WALK_RESPONSE_BYTES:
            return False
        self.used += cost
        return True


def _error_text(err: OSError) -> str:
    return os_error_text(err.errno) if err.errno is not None else str(err)


def walk_tree(
    root: str,
    options: FsWalkOptions,
    sandbox: FileSandbox,
    render: Callable[[str], str],
) -> FsWalkResult:
    """Walk ``root`` (blocking; run it in a worker thread). ``render`` turns a native
    path into the request's form. The root's own errors raise :class:`OSError`."""
    check_walk_options(options)
    sandbox.check_visible(root)
    root_info = os.stat(root)
    root_is_link = stat.S_ISLNK(os.lstat(root).st_mode)
    walk = _Walk(options, sandbox, render)
    if stat.S_ISDIR(root_info.st_mode) and (not root_is_link or options.follow_directory_symlinks):
        walk.run(root)
    return walk.result


class _Truncated(Exception):
    """The walk hit a limit: the answer so far is final, marked truncated."""


class _Walk:
    """One breadth-first walk: what it found, what it may still take."""

    def __init__(
        self, options: FsWalkOptions, sandbox: FileSandbox, render: Callable[[str], str]
    ) -> None:
        self.options = options
        self.sandbox = sandbox
        self.render = render
        self.follow = options.follow_directory_symlinks
        self.result = FsWalkResult(entries=[], errors=[], truncated=False)
        self.budget = _Budget()
        self.directories = 1
        self.examined = 0
        self.visited: set[str] = set()
        self.queue: deque[tuple[str, int]] = deque()

    def run(self, root: str) -> None:
        self.visited.add(os.path.realpath(root) if self.follow else root)
        self.queue.append((root, 0))
        try:
            while self.queue:
                self._visit(*self.queue.popleft())
        except _Truncated:
            self.result.truncated = True

    def _visit(self, directory: str, depth: int) -> None:
        try:
            names = _list(directory, self.sandbox)
        except OSError as err:
            self._error(directory, err)
            return
        for name in names:
            if self.examined == self.options.max_entries:
                raise _Truncated
            self.examined += 1
            self._entry(directory, name, depth)

    def _entry(self, directory: str, name: str, depth: int) -> None:
        path = posixpath.join(directory, name)
        try:
            link_info = os.lstat(path)
            info = os.stat(path) if stat.S_ISLNK(link_info.st_mode) else link_info
        except OSError as err:
            self._error(path, err)
            return
        is_dir = stat.S_ISDIR(info.st_mode)
        if stat.S_ISLNK(link_info.st_mode) and not (self.follow and is_dir):
            return
        if not is_dir and not stat.S_ISREG(info.st_mode):
            return
        shown = self.render(path)
        if not self.budget.take(len(shown)):
            raise _Truncated
        self.result.entries.append(FsWalkEntry(path=shown, kind="directory" if is_dir else "file"))
        if is_dir and depth < self.options.max_depth:
            self._descend(path, name, depth)

    def _descend(self, path: str, name: str, depth: int) -> None:
        if self.options.prune_hidden_directories and name.startswith("."):
            return
        identity = os.path.realpath(path) if self.follow else path
        if identity in self.visited:
            return
        self.visited.add(identity)
        if self.directories == self.options.max_directories:
            self.result.truncated = True  # the rest of this level is still listed
            return
        self.directories += 1
        self.queue.append((path, depth + 1))

    def _error(self, path: str, err: OSError) -> None:
        shown = self.render(path)
        message = _error_text(err)
        if not self.budget.take(len(shown) + len(message)):
            raise _Truncated
        self.result.errors.append(FsWalkError(path=shown, message=message))


def _list(directory: str, sandbox: FileSandbox) -> list[str]:
    """Entry names of ``directory`` that ``fs/readDirectory`` would report, in byte
    order: entries that cannot be stat'ed (broken symlinks) and, under a sandbox,
    invisible ones are left out, as there."""
    shows = sandbox.check_list(directory)
    names: list[str] = []
    with os.scandir(directory) as listing:
        for entry in listing:
            try:
                entry.stat()
            except OSError:
                continue
            if shows(entry.name, entry.path):
                names.append(entry.name)
    names.sort(key=os.fsencode)
    return names


async def walk(fs: FileSystemHandler, p: FsWalkParams) -> FsWalkResult:
    """``fs/walk`` on the shared filesystem handler (its sandbox and worker threads)."""
    wire = parse_wire_path(p.path)
    spec = parse_sandbox(p.sandbox)
    check_walk_options(p.options)
    return await fs.run_blocking(
        lambda: walk_tree(wire.native, p.options, fs.resolve_sandbox(spec), wire.render)
    )
