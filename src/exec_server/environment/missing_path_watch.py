"""Codex 0.171's ``fs/watchMissing`` and its ``fs/missingChanged`` notification.

A harness that looked for ``.git``, ``.agents/skills``, ``AGENTS.md``... and found
them missing asks to be told when that changes, instead of polling. Semantics, as
the 0.171 binary behaves (``tests/interop/test_codex0171.py`` checks them side by
side):

* One watch per connection. A ``watchId`` greater than every earlier one replaces
  the current watch; an older or equal id is stale and answers ``watching: false``
  without touching the current one.
* ``watching: false`` also when there is nothing to wait for: ``missing`` is empty,
  one of its paths exists already, or ``present`` (a path the caller saw) is gone.
  The caller should look again at once.
* Otherwise ``watching: true``, and exactly one ``fs/missingChanged {watchId}``
  follows the first change that matters: a missing path, or any directory on the
  way to it, appears (``mkdir a`` wakes a watch for ``a/b/c``), or ``present`` is
  modified, replaced or removed. Changes elsewhere, also inside a present
  directory, do not count. The watch then ends.

Each missing path is watched in its nearest existing ancestor directory for the
creation of its next component; ``present`` in its parent directory for events
naming it. This uses inotify (through ``asyncinotify``), so an idle watch costs
no CPU; paths are checked once more after the watches are in place, so an
appearance in between is not missed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import posixpath
from collections.abc import Awaitable, Callable

from ..protocol.messages import (
    FS_MISSING_CHANGED,
    FsMissingChangedNotification,
    FsWatchMissingParams,
    FsWatchMissingResult,
    Message,
)
from ..protocol.path_uri import parse_wire_path

log = logging.getLogger(__name__)

NotificationSender = Callable[[str, Message], Awaitable[None]]

try:  # Linux only; elsewhere the feature is off (the capability flag says so).
    from asyncinotify import Event, Inotify, Mask, Watch
except (ImportError, OSError):  # pragma: no cover - non-Linux
    Inotify = None  # type: ignore[assignment,misc]

#: Most paths one watch may name (0.171's harness sends a handful).
MAX_WATCHED_PATHS = 1024

_MISSING_EVENTS = "CREATE MOVED_TO"
_PRESENT_EVENTS = "CREATE MOVED_TO MODIFY ATTRIB CLOSE_WRITE DELETE MOVED_FROM"
_SELF_EVENTS = "DELETE_SELF MOVE_SELF ATTRIB"


def inotify_available() -> bool:
    return Inotify is not None


def _mask(names: str) -> Mask:
    mask = Mask(0)
    for name in names.split():
        mask |= Mask[name]
    return mask


def _nearest_existing_directory(path: str) -> tuple[str, str]:
    """``(directory, name)``: the deepest existing directory above ``path`` and the
    component below it that is still missing (or is not a directory)."""
    child = path
    parent = posixpath.dirname(child)
    while parent != child:
        if os.path.isdir(parent):
            return parent, posixpath.basename(child)
        child, parent = parent, posixpath.dirname(parent)
    return "/", posixpath.basename(path)


class MissingPathWatch:
    """The ``fs/watchMissing`` state of one connection."""

    def __init__(self, notify: NotificationSender) -> None:
        self._notify = notify
        self._latest_id: int | None = None
        self._task: asyncio.Task[None] | None = None

    async def watch(self, p: FsWatchMissingParams) -> FsWatchMissingResult:
        missing = [parse_wire_path(raw).native for raw in p.missing[:MAX_WATCHED_PATHS]]
        present = None if p.present is None else parse_wire_path(p.present).native
        if self._latest_id is not None and p.watch_id <= self._latest_id:
            return FsWatchMissingResult(watching=False)
        await self.close()
        self._latest_id = p.watch_id
        if not missing or Inotify is None:
            return FsWatchMissingResult(watching=False)
        if _changed(missing, present):
            return FsWatchMissingResult(watching=False)
        inotify = Inotify()
        try:
            names_by_dir: dict[str, set[str] | None] = {}
            masks: dict[str, Mask] = {}
            for path in missing:
                directory, name = _nearest_existing_directory(path)
                _want(names_by_dir, masks, directory, name, _mask(_MISSING_EVENTS))
            if present is not None:
                parent, name = posixpath.split(present)
                if name:
                    _want(names_by_dir, masks, parent, name, _mask(_PRESENT_EVENTS))
                else:  # the root itself
                    names_by_dir[present] = None
                    masks[present] = masks.get(present, Mask(0)) | _mask(_SELF_EVENTS)
            watches: dict[Watch, set[str] | None] = {}
            for directory, mask in masks.items():
                with contextlib.suppress(OSError):  # vanished meanwhile: re-checked below
                    watches[inotify.add_watch(directory, mask)] = names_by_dir[directory]
        except BaseException:
            inotify.close()
            raise
        already = _changed(missing, present)
        self._task = asyncio.get_running_loop().create_task(
            self._wait(p.watch_id, inotify, watches, fire_now=already),
            name=f"fs/watchMissing {p.watch_id}",
        )
        return FsWatchMissingResult(watching=True)

    async def close(self) -> None:
        """End the current watch (replaced, or the connection ended)."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _wait(
        self,
        watch_id: int,
        inotify: Inotify,
        watches: dict[Watch, set[str] | None],
        *,
        fire_now: bool,
    ) -> None:
        try:
            if not fire_now:
                async for event in inotify:
                    if _matters(event, watches):
                        break
        finally:
            inotify.close()
        try:
            await self._notify(FS_MISSING_CHANGED, FsMissingChangedNotification(watch_id=watch_id))
        except Exception:
            log.exception("fs/missingChanged for watch %s could not be sent", watch_id)


def _want(
    names_by_dir: dict[str, set[str] | None],
    masks: dict[str, Mask],
    directory: str,
    name: str,
    mask: Mask,
) -> None:
    names = names_by_dir.setdefault(directory, set())
    if names is not None:
        names.add(name)
    masks[directory] = masks.get(directory, Mask(0)) | mask


def _changed(missing: list[str], present: str | None) -> bool:
    if any(os.path.lexists(path) for path in missing):
        return True
    return present is not None and not os.path.lexists(present)


def _matters(event: Event, watches: dict[Watch, set[str] | None]) -> bool:
    if event.mask & Mask.Q_OVERFLOW:
        return True  # events were lost: assume the worst
    watch = event.watch
    if watch is None or watch not in watches:
        return False
    names = watches[watch]
    if names is None:
        return True  # a self-watch: any event counts
    return event.name is not None and str(event.name) in names
