"""Registered environments: id, display name, first registration and last sighting.

Two interchangeable stores behind :class:`RegistrationStore`:

* :class:`MemoryRegistrationStore`: a dict, used without a data dir;
* :class:`SqliteRegistrationStore`: ``<data dir>/registry.sqlite3`` (stdlib ``sqlite3``,
  WAL). Every statement runs on one dedicated worker thread, so the event loop never
  waits on the disk and the connection is only ever touched by the thread that made it.

Losing this state is harmless by design: environments re-register after every socket
loss, so a rendezvous restart without a data dir only forgets display names until they
do. Routing state (sockets, streams) is never stored: it lives in the router.

Noise registrations (executor registration id and public key JSON, see
:mod:`~exec_server.rendezvous.noise_registry`) are kept too: a Codex 0.171 executor
reconnects its socket *without* re-registering, so a restarted rendezvous must still know
its key to hand it to harnesses.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol, TypeVar

__all__ = [
    "DATABASE_FILE_NAME",
    "MemoryRegistrationStore",
    "Registration",
    "RegistrationStore",
    "SqliteRegistrationStore",
]

DATABASE_FILE_NAME = "registry.sqlite3"
SCHEMA_VERSION = 2

_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class Registration:
    environment_id: str
    name: str | None
    created: float
    """Unix seconds of the first registration."""
    last_seen: float
    """Unix seconds of the last registration, connect or disconnect."""


class RegistrationStore(Protocol):
    async def upsert(self, environment_id: str, name: str | None, now: float) -> Registration:
        """Record a registration or sighting; ``name=None`` keeps the stored name."""
        ...

    async def get(self, environment_id: str) -> Registration | None: ...

    async def list_all(self) -> list[Registration]:
        """Every registration, ordered by id."""
        ...

    async def put_noise(self, environment_id: str, registration_id: str, key_json: str) -> None:
        """Record an environment's Noise registration (replacing any previous one)."""
        ...

    async def get_noise(self, environment_id: str) -> tuple[str, str] | None:
        """``(registration id, executor public key JSON)``, or None."""
        ...

    async def delete_noise(self, environment_id: str) -> None: ...

    async def close(self) -> None: ...


class MemoryRegistrationStore:
    """Registrations in a dict (no data dir)."""

    def __init__(self) -> None:
        self._rows: dict[str, Registration] = {}
        self._noise: dict[str, tuple[str, str]] = {}

    async def upsert(self, environment_id: str, name: str | None, now: float) -> Registration:
        old = self._rows.get(environment_id)
        row = (
            Registration(environment_id, name, now, now)
            if old is None
            else replace(old, name=name if name is not None else old.name, last_seen=now)
        )
        self._rows[environment_id] = row
        return row

    async def get(self, environment_id: str) -> Registration | None:
        return self._rows.get(environment_id)

    async def list_all(self) -> list[Registration]:
        return [self._rows[key] for key in sorted(self._rows)]

    async def put_noise(self, environment_id: str, registration_id: str, key_json: str) -> None:
        self._noise[environment_id] = (registration_id, key_json)

    async def get_noise(self, environment_id: str) -> tuple[str, str] | None:
        return self._noise.get(environment_id)

    async def delete_noise(self, environment_id: str) -> None:
        self._noise.pop(environment_id, None)

    async def close(self) -> None:
        pass


class SqliteRegistrationStore:
    """Registrations in SQLite, off the event loop. Create with :meth:`open`."""

    def __init__(self, executor: ThreadPoolExecutor, connection: sqlite3.Connection) -> None:
        self._executor = executor
        self._db = connection

    @classmethod
    async def open(cls, data_dir: Path) -> SqliteRegistrationStore:
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rendezvous-sqlite")
        path = data_dir / DATABASE_FILE_NAME
        try:
            connection = await asyncio.get_running_loop().run_in_executor(executor, _connect, path)
        except BaseException:
            executor.shutdown(wait=False)
            raise
        return cls(executor, connection)

    async def _run(self, call: Callable[[sqlite3.Connection], _T]) -> _T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, call, self._db)

    async def upsert(self, environment_id: str, name: str | None, now: float) -> Registration:
        def call(db: sqlite3.Connection) -> Registration:
            with db:
                row = db.execute(
                    "INSERT INTO registrations (environment_id, name, created, last_seen) "
                    "VALUES (?, ?, ?, ?) ON CONFLICT (environment_id) DO UPDATE SET "
                    "name = COALESCE(excluded.name, registrations.name), "
                    "last_seen = excluded.last_seen "
                    "RETURNING environment_id, name, created, last_seen",
                    (environment_id, name, now, now),
                ).fetchone()
            return Registration(*row)

        return await self._run(call)

    async def get(self, environment_id: str) -> Registration | None:
        def call(db: sqlite3.Connection) -> Registration | None:
            row = db.execute(
                "SELECT environment_id, name, created, last_seen FROM registrations "
                "WHERE environment_id = ?",
                (environment_id,),
            ).fetchone()
            return Registration(*row) if row else None

        return await self._run(call)

    async def list_all(self) -> list[Registration]:
        def call(db: sqlite3.Connection) -> list[Registration]:
            rows = db.execute(
                "SELECT environment_id, name, created, last_seen FROM registrations "
                "ORDER BY environment_id"
            ).fetchall()
            return [Registration(*row) for row in rows]

        return await self._run(call)

    async def put_noise(self, environment_id: str, registration_id: str, key_json: str) -> None:
        def call(db: sqlite3.Connection) -> None:
            with db:
                db.execute(
                    "INSERT OR REPLACE INTO noise_registrations "
                    "(environment_id, registration_id, executor_public_key) VALUES (?, ?, ?)",
                    (environment_id, registration_id, key_json),
                )

        await self._run(call)

    async def get_noise(self, environment_id: str) -> tuple[str, str] | None:
        def call(db: sqlite3.Connection) -> tuple[str, str] | None:
            row = db.execute(
                "SELECT registration_id, executor_public_key FROM noise_registrations "
                "WHERE environment_id = ?",
                (environment_id,),
            ).fetchone()
            return (row[0], row[1]) if row else None

        return await self._run(call)

    async def delete_noise(self, environment_id: str) -> None:
        def call(db: sqlite3.Connection) -> None:
            with db:
                db.execute(
                    "DELETE FROM noise_registrations WHERE environment_id = ?", (environment_id,)
                )

        await self._run(call)

    async def close(self) -> None:
        await self._run(lambda db: db.close())
        self._executor.shutdown(wait=True)


def _connect(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path, isolation_level="DEFERRED")
    db.execute("PRAGMA journal_mode = WAL")
    db.execute("PRAGMA synchronous = NORMAL")
    with db:
        db.execute(
            "CREATE TABLE IF NOT EXISTS registrations ("
            " environment_id TEXT PRIMARY KEY,"
            " name TEXT,"
            " created REAL NOT NULL,"
            " last_seen REAL NOT NULL)"
        )
        db.execute(
            "CREATE TABLE IF NOT EXISTS noise_registrations ("
            " environment_id TEXT PRIMARY KEY,"
            " registration_id TEXT NOT NULL,"
            " executor_public_key TEXT NOT NULL)"
        )
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    return db
