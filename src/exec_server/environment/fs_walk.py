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
from .sandbox import FsSandbox, parse_sandbox

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
    sandbox: FsSandbox | None,
    render: Callable[[str], str],
) -> FsWalkResult:
    """Walk ``root`` (blocking; run it in a worker thread). ``render`` turns a native
    path into the request's form. The root's own errors raise :class:`OSError`."""
    check_walk_options(options)
    if sandbox is not None:
        sandbox.check_visible(root)
    root_info = os.stat(root)
    root_is_link = stat.S_ISLNK(os.lstat(root).st_mode)
    result = FsWalkResult(entries=[], errors=[], truncated=False)
    if not stat.S_ISDIR(root_info.st_mode) or (
        root_is_link and not options.follow_directory_symlinks
    ):
        return result
    follow = options.follow_directory_symlinks
    visited = {os.path.realpath(root) if follow else root}
    queue: deque[tuple[str, int]] = deque([(root, 0)])
    directories = 1
    examined = 0
    budget = _Budget()

    def add_error(path: str, message: str) -> bool:
        shown = render(path)
        if not budget.take(len(shown) + len(message)):
            result.truncated = True
            return False
        result.errors.append(FsWalkError(path=shown, message=message))
        return True

    while queue:
        directory, depth = queue.popleft()
        try:
            names = _list(directory, sandbox)
        except OSError as err:
            if not add_error(directory, _error_text(err)):
                return result
            continue
        for name in names:
            if examined == options.max_entries:
                result.truncated = True
                return result
            examined += 1
            path = posixpath.join(directory, name)
            try:
                link_info = os.lstat(path)
                info = os.stat(path) if stat.S_ISLNK(link_info.st_mode) else link_info
            except OSError as err:
                if not add_error(path, _error_text(err)):
                    return result
                continue
            is_dir = stat.S_ISDIR(info.st_mode)
            if stat.S_ISLNK(link_info.st_mode) and not (follow and is_dir):
                continue
            if not is_dir and not stat.S_ISREG(info.st_mode):
                continue
            shown = render(path)
            if not budget.take(len(shown)):
                result.truncated = True
                return result
            result.entries.append(FsWalkEntry(path=shown, kind="directory" if is_dir else "file"))
            if not is_dir or depth >= options.max_depth:
                continue
            if options.prune_hidden_directories and name.startswith("."):
                continue
            identity = os.path.realpath(path) if follow else path
            if identity in visited:
                continue
            visited.add(identity)
            if directories == options.max_directories:
                result.truncated = True
            else:
                directories += 1
                queue.append((path, depth + 1))
    return result


def _list(directory: str, sandbox: FsSandbox | None) -> list[str]:
    """Entry names of ``directory`` that ``fs/readDirectory`` would report, in byte
    order: entries that cannot be stat'ed (broken symlinks) and, under a sandbox,
    invisible ones are left out, as there."""
    location = directory if sandbox is None else sandbox.check_list(directory)
    names: list[str] = []
    with os.scandir(directory) as listing:
        for entry in listing:
            try:
                entry.stat()
            except OSError:
                continue
            if sandbox is not None and not (
                sandbox.is_visible(posixpath.join(location, entry.name))
                and sandbox.is_visible(os.path.realpath(entry.path))
            ):
                continue
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
