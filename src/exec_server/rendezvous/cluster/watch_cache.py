"""Sans-IO mirror of one KV bucket, fed by a watch and by this node's own writes.

:meth:`WatchCache.apply` takes one update (a value, or ``None`` for a delete) at its
revision and ignores anything not newer than what the cache holds for that key, so a
watch delivering an old revision after this node already applied its own newer write
(or delete: deletes leave a tombstone revision) changes nothing. :meth:`replace_all`
installs a fresh snapshot wholesale (after a reconnect; revisions may even restart if
NATS lost its store) and reports every difference. Each real change calls ``on_change``
with ``(key, old, new)``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from .records import Versioned

__all__ = ["WatchCache"]

_T = TypeVar("_T")

MAX_TOMBSTONES = 4096
"""Tombstones kept before the oldest are pruned (each only guards against one late,
older update of its key)."""


class WatchCache(Generic[_T]):
    def __init__(self, on_change: Callable[[str, _T | None, _T | None], None]) -> None:
        self._entries: dict[str, Versioned[_T]] = {}
        self._tombstones: dict[str, int] = {}
        self._on_change = on_change

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: str) -> Versioned[_T] | None:
        return self._entries.get(key)

    def items(self) -> Iterator[tuple[str, Versioned[_T]]]:
        return iter(list(self._entries.items()))

    def with_prefix(self, prefix: str) -> dict[str, Versioned[_T]]:
        return {key: v for key, v in self._entries.items() if key.startswith(prefix)}

    def apply(self, key: str, value: _T | None, revision: int) -> bool:
        """Apply one update; True if it changed the cache."""
        current = self._entries.get(key)
        seen = current.revision if current is not None else self._tombstones.get(key, 0)
        if revision <= seen:
            return False
        old = current.value if current is not None else None
        if value is None:
            if current is None:
                self._tombstone(key, revision)
                return False
            del self._entries[key]
            self._tombstone(key, revision)
        else:
            self._entries[key] = Versioned(value, revision)
            self._tombstones.pop(key, None)
        if old != value:
            self._on_change(key, old, value)
        return True

    def _tombstone(self, key: str, revision: int) -> None:
        self._tombstones[key] = revision
        if len(self._tombstones) > MAX_TOMBSTONES:
            for stale in list(self._tombstones)[: MAX_TOMBSTONES // 2]:
                del self._tombstones[stale]

    def replace_all(self, snapshot: dict[str, Versioned[_T]]) -> None:
        """Install a full snapshot; report what it changed."""
        old_entries = self._entries
        self._entries = dict(snapshot)
        self._tombstones.clear()
        for key, old in old_entries.items():
            new = snapshot.get(key)
            if new is None:
                self._on_change(key, old.value, None)
            elif new.value != old.value:
                self._on_change(key, old.value, new.value)
        for key, new in snapshot.items():
            if key not in old_entries:
                self._on_change(key, None, new.value)
