"""The JetStream KV buckets of a cluster and how records are read and written in them:
:class:`Buckets`.

Buckets (``<prefix>-<kind>``, see :mod:`~exec_server.rendezvous.cluster.nats_connection`;
history 1, file storage, ``replicas`` from the config):

=================  ==========================  =========================  ===========
bucket             key                         value                      max age
=================  ==========================  =========================  ===========
``nodes``          node id                     ``NodeInfo`` (heartbeat)   ``lease_s``
``holders``        environment id              ``EnvironmentHolder``      none
``streams``        ``<env id>.<b64url(sid)>``  ``StreamOwner``            none
``registrations``  environment id              ``RegistrationRecord``     none
``noise``          environment id              ``NoiseRecord``            none
``authorizations`` authorization nonce         stream id (used once)      config
``secrets``        secret name                 hex bytes                  none
=================  ==========================  =========================  ===========

An existing bucket is used as it is (the first node's settings win), so nodes with
different settings still join.

Records are msgspec structs (:mod:`~exec_server.rendezvous.cluster.records`) read with
their revision (:class:`~exec_server.rendezvous.cluster.records.Versioned`); writes are
compare-and-set (create against absence, update against a revision), and so are
deletes (a delete marker published with the expected last subject sequence, which
nats-py's ``KeyValue.delete`` cannot express). An undecodable record reads as absent
(and is logged). A watch's initial batch ends with the entry whose pending count is 0
(:func:`initial_entry`); nats-py's own end marker can arrive before entries already on
their way, so it only ends an empty batch (:func:`watch_is_empty`).
:func:`follow_bucket` keeps a watch running: that batch as one snapshot, then every
change.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any, TypeVar

import msgspec
from nats.errors import Error as NatsError
from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig, StorageType
from nats.js.errors import (
    APIError,
    BadRequestError,
    BucketNotFoundError,
    KeyNotFoundError,
    KeyWrongLastSequenceError,
)
from nats.js.kv import KeyValue

from .nats_connection import NatsClusterConfig
from .records import Versioned, decode_record, encode_record
from .watch_cache import WatchCache

__all__ = [
    "BUCKETS",
    "Buckets",
    "decode_entry",
    "end_watch",
    "follow_bucket",
    "initial_entry",
    "reassert_records",
    "watch_is_empty",
]

log = logging.getLogger(__name__)

_T = TypeVar("_T")
_Record = TypeVar("_Record", bound=msgspec.Struct)

BUCKETS = (
    "nodes",
    "holders",
    "streams",
    "registrations",
    "noise",
    "authorizations",
    "secrets",
)

_KV_OPERATION = "KV-Operation"
_EXPECTED_LAST_SUBJECT_SEQUENCE = "Nats-Expected-Last-Subject-Sequence"
_WRONG_LAST_SEQUENCE_CODES = (10071, 10164)


class Buckets:
    """The cluster's buckets on one JetStream context (module docstring)."""

    def __init__(self, js: JetStreamContext, config: NatsClusterConfig) -> None:
        self._js = js
        self._config = config
        self._kv: dict[str, KeyValue] = {}

    def __getitem__(self, kind: str) -> KeyValue:
        return self._kv[kind]

    def name(self, kind: str) -> str:
        return self._config.bucket(kind)

    def bound(self, kind: str) -> bool:
        return kind in self._kv

    async def ensure(self) -> None:
        """Bind every bucket, creating the missing ones."""
        config = self._config
        ttls: dict[str, float | None] = dict.fromkeys(BUCKETS)
        ttls["nodes"] = config.lease_s
        ttls["authorizations"] = config.authorization_ttl_s
        for kind, ttl in ttls.items():
            name = config.bucket(kind)
            try:
                self._kv[kind] = await self._js.key_value(name)
                continue
            except BucketNotFoundError:
                pass
            try:
                self._kv[kind] = await self._js.create_key_value(
                    KeyValueConfig(
                        bucket=name,
                        history=1,
                        ttl=ttl,
                        storage=StorageType.FILE,
                        replicas=config.replicas,
                    )
                )
            except BadRequestError:  # created meanwhile by a node with other settings
                self._kv[kind] = await self._js.key_value(name)

    async def get(self, kind: str, key: str, record: type[_T]) -> Versioned[_T] | None:
        """The record at ``key`` with its revision; None if absent or undecodable."""
        try:
            entry = await self._kv[kind].get(key)
        except KeyNotFoundError:
            return None
        if entry.value is None or entry.revision is None:
            return None
        try:
            return Versioned(decode_record(entry.value, record), entry.revision)
        except (msgspec.DecodeError, msgspec.ValidationError):
            log.warning("ignoring an undecodable %s record at %r", record.__name__, key)
            return None

    async def write(
        self, kind: str, key: str, value: msgspec.Struct, current: Versioned[Any] | None
    ) -> int:
        """Create (``current`` None) or update over ``current``'s revision; the new
        revision. Raises ``KeyWrongLastSequenceError`` when the key moved on."""
        kv = self._kv[kind]
        if current is None:
            return int(await kv.create(key, encode_record(value)))
        return int(await kv.update(key, encode_record(value), last=current.revision))

    async def delete_if(self, kind: str, key: str, revision: int | None) -> int | None:
        """Put a delete marker (only over ``revision`` when given); its revision, or None
        when the key moved on."""
        headers = {_KV_OPERATION: "DEL"}
        if revision is not None:
            headers[_EXPECTED_LAST_SUBJECT_SEQUENCE] = str(revision)
        try:
            subject = f"$KV.{self._config.bucket(kind)}.{key}"
            ack = await self._js.publish(subject, b"", headers=headers)
        except APIError as exc:
            if exc.err_code in _WRONG_LAST_SEQUENCE_CODES:
                return None
            raise
        return int(ack.seq)

    async def snapshot(self, kind: str, record: type[_T]) -> dict[str, Versioned[_T]]:
        """Every live key of a bucket, through one ordered consumer."""
        watcher = await self._kv[kind].watchall()
        try:
            rows: dict[str, Versioned[_T]] = {}
            async with asyncio.timeout(self._config.request_timeout_s * 2):
                async for entry in watcher:
                    if initial_entry(entry, record, rows) or (
                        entry is None and not rows and await watch_is_empty(watcher)
                    ):
                        return rows
            raise NatsError(f"the watch of {self._config.bucket(kind)} stopped")
        finally:
            with contextlib.suppress(Exception):
                await watcher.stop()  # type: ignore[no-untyped-call]


async def follow_bucket(
    buckets: Buckets,
    kind: str,
    record: type[_T],
    watchers: set[KeyValue.KeyWatcher],
    stopping: Callable[[], bool],
    on_snapshot: Callable[[dict[str, Versioned[_T]]], None],
    on_change: Callable[[str, Versioned[_T] | None, int], None],
) -> None:
    """Watch a bucket until :func:`end_watch` (the watcher is in ``watchers`` meanwhile):
    its initial batch as one snapshot, then each change (None: deleted). A watch that
    ends while not ``stopping`` raises ``NatsError``."""
    watcher = await buckets[kind].watchall()
    watchers.add(watcher)
    if stopping():
        # Told to stop while the watch was being created: ``watchall()`` may have
        # swallowed this task's cancellation (nats-py's ``asyncio.wait_for``), and a
        # task group cancels a child only once, so end the watch here or it would wait
        # for updates forever (and whoever closes it with it).
        end_watch(watcher)
    try:
        snapshot: dict[str, Versioned[_T]] = {}
        initial = True
        async for entry in watcher:
            if initial:
                if initial_entry(entry, record, snapshot) or (
                    entry is None and not snapshot and await watch_is_empty(watcher)
                ):
                    initial = False
                    on_snapshot(snapshot)
            elif entry is not None:
                on_change(entry.key, decode_entry(entry, record), entry.revision or 0)
        if not stopping():
            raise NatsError(f"the watch of {buckets.name(kind)} stopped")
    finally:
        watchers.discard(watcher)
        with contextlib.suppress(Exception):
            await watcher.stop()  # type: ignore[no-untyped-call]


async def reassert_records(
    buckets: Buckets,
    kind: str,
    incarnation: str,
    mine: dict[str, Versioned[_Record]],
    cache: WatchCache[_Record],
) -> None:
    """After a resync: recreate the records this node incarnation wrote that the
    snapshot (``cache``) lacks, NATS having lost its store; forget those someone else
    took meanwhile (``mine`` is left with what this node still holds)."""
    for key, record in list(mine.items()):
        current = cache.get(key)
        value = record.value
        if current is not None or getattr(value, "incarnation", None) != incarnation:
            if current is None or current.value != value:
                mine.pop(key, None)
            continue
        try:
            revision = await buckets[kind].create(key, encode_record(value))
        except (KeyWrongLastSequenceError, NatsError, TimeoutError) as exc:
            log.info("could not re-assert %s record %r: %r", kind, key, exc)
            mine.pop(key, None)
            continue
        mine[key] = Versioned(value, revision)
        cache.apply(key, value, revision)


def initial_entry(
    entry: KeyValue.Entry | None, record: type[_T], rows: dict[str, Versioned[_T]]
) -> bool:
    """Add one entry of a watch's initial batch to ``rows``; True at the batch's last
    (module docstring)."""
    if entry is None:
        return False
    decoded = decode_entry(entry, record)
    if decoded is None:
        rows.pop(entry.key, None)
    else:
        rows[entry.key] = decoded
    return not entry.delta


def decode_entry(entry: KeyValue.Entry, record: type[_T]) -> Versioned[_T] | None:
    """A watched entry's record; None for a delete, a purge or an undecodable value."""
    if entry.operation in ("DEL", "PURGE") or entry.value is None or entry.revision is None:
        return None
    try:
        return Versioned(decode_record(entry.value, record), entry.revision)
    except (msgspec.DecodeError, msgspec.ValidationError):
        log.warning("ignoring an undecodable %s record at %r", record.__name__, entry.key)
        return None


async def watch_is_empty(watcher: KeyValue.KeyWatcher) -> bool:
    """Whether a just-started watch has nothing to deliver (its consumer delivered
    nothing and has nothing pending)."""
    subscription = watcher._sub
    if subscription is None:
        return False
    info = await subscription.consumer_info()
    return not info.num_pending and not info.delivered.consumer_seq


def end_watch(watcher: KeyValue.KeyWatcher) -> None:
    """Make a watch's iteration end now (what nats-py's ``stop()`` does first, without
    waiting for the server)."""
    updates = watcher._updates
    while True:
        try:
            updates.put_nowait(KeyValue.KeyWatcher.STOP_ITER)
            return
        except asyncio.QueueFull:
            with contextlib.suppress(asyncio.QueueEmpty):
                updates.get_nowait()
