"""What the sandbox creates on disk: placeholders for missing protected paths, and
the inaccessible file mounted over hidden files.

A placeholder is an empty directory standing in for a protected name that does not
exist yet (``.git`` under a writable root) while a confined child runs, so that
name cannot be created behind the policy's back; 0.171 does the same (probed).
"""

from __future__ import annotations

import contextlib
import functools
import os
import tempfile
import threading
from collections.abc import Iterable
from dataclasses import dataclass

from .fs_sandbox import is_within


class _PlaceholderRegistry:
    """Empty directories created for missing protected paths, shared by children.

    A placeholder stays while a confined child uses it, and is reused by the next
    one (a workspace's commands mostly need the same ones). It is removed by
    :meth:`collect` once it is idle and every process of the mount namespaces that
    mounted over it is gone: a lingering background process keeps its protection.
    :meth:`collect` scans ``/proc``, so the process manager runs it shortly after
    a confined child closes rather than on the spawn path. Thread-safe.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._users: dict[str, int] = {}
        #: placeholder -> mount-namespace inodes that may still use it.
        self._namespaces: dict[str, set[int]] = {}

    def acquire(self, paths: Iterable[str]) -> tuple[str, ...]:
        """Create (or share) the placeholders; returns those now held."""
        held: list[str] = []
        with self._lock:
            try:
                for path in paths:
                    if path not in self._users:
                        try:
                            os.mkdir(path, 0o555)
                        except FileExistsError:
                            # Made meanwhile by someone else: it is theirs, and real.
                            continue
                        self._users[path] = 0
                        self._namespaces[path] = set()
                    self._users[path] += 1
                    held.append(path)
            except OSError:
                self._release(held, namespace=None)
                raise
        return tuple(held)

    def release(self, paths: Iterable[str], namespace: int | None) -> None:
        with self._lock:
            self._release(list(paths), namespace)

    @property
    def idle(self) -> bool:
        """Whether some placeholder waits for :meth:`collect`."""
        with self._lock:
            return any(users == 0 for users in self._users.values())

    def collect(self) -> None:
        """Remove the idle placeholders no live mount namespace can still use."""
        with self._lock:
            idle = [path for path, users in self._users.items() if users == 0]
            if not idle:
                return
            alive = _live_mount_namespaces()
            for path in idle:
                if self._namespaces[path] & alive:
                    continue
                with contextlib.suppress(OSError):
                    os.rmdir(path)
                del self._users[path]
                del self._namespaces[path]

    def owns(self, path: str) -> bool:
        """Whether ``path`` is one of our placeholders (held or awaiting removal).

        Plans treat it as missing, so a child that needs it holds it too."""
        with self._lock:
            return path in self._users

    def held_under(self, root: str) -> list[str]:
        """Placeholders (idle or not) at or below ``root`` (for tests and logs)."""
        with self._lock:
            return [path for path in self._users if is_within(path, root)]

    def _release(self, paths: list[str], namespace: int | None) -> None:
        for path in paths:
            if path not in self._users:
                continue
            self._users[path] -= 1
            if namespace is not None:
                self._namespaces[path].add(namespace)


def _live_mount_namespaces() -> set[int]:
    alive: set[int] = set()
    with contextlib.suppress(OSError):
        for name in os.listdir("/proc"):
            if name.isdigit():
                with contextlib.suppress(OSError):
                    alive.add(os.stat(f"/proc/{name}/ns/mnt").st_ino)
    return alive


PLACEHOLDERS = _PlaceholderRegistry()


@dataclass
class ConfinementLease:
    """What a confined child holds until it is gone: its placeholders."""

    placeholders: tuple[str, ...] = ()
    mount_namespace: int | None = None
    _released: bool = False

    def release(self) -> None:
        """Give the placeholders back (idempotent)."""
        if self._released:
            return
        self._released = True
        if self.placeholders:
            PLACEHOLDERS.release(self.placeholders, self.mount_namespace)


@functools.lru_cache(maxsize=1)
def inaccessible_file() -> str:
    """An empty mode-000 file to mount over hidden files (made once per process)."""
    directory = tempfile.mkdtemp(prefix="exec-server-sandbox-")
    path = os.path.join(directory, "hidden")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0)
    os.close(fd)
    os.chmod(path, 0)
    return path
