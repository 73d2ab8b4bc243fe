"""The shared rendezvous state in NATS JetStream KV: :class:`NatsClusterState`.

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

Holder and owner records carry no TTL: they are valid while their node incarnation holds
its lease (:mod:`~exec_server.rendezvous.cluster.liveness`), so one heartbeat a second
per node renews everything it holds, and a dead node's records stay readable (who held
what) until someone takes them over with a compare-and-set.

Every node watches ``nodes``, ``holders`` and ``streams`` into local caches
(:class:`~exec_server.rendezvous.cluster.watch_cache.WatchCache`); its own writes update
its cache at once. After a NATS reconnect the watches restart from a full snapshot (and
the buckets are re-created if NATS lost its store), then the node re-asserts the
records it still holds that the snapshot lacks. ``registrations``, ``noise`` and ``secrets`` are
read on demand (cold paths); ``authorizations`` is written with a create (the first
``/validate`` of a nonce on any node wins) and ages out after ``authorization_ttl_s``.

Readiness is ``nats_disconnected`` while the state connection is down, ``lease_lost``
while the node holds no lease, ``syncing`` until the first snapshot, ``closed`` after
:meth:`NatsClusterState.close`; otherwise ready. A node id already heartbeating under
another incarnation makes :meth:`NatsClusterState.open` wait one lease for it to fall
silent, and fail with :class:`NodeIdInUse` if it does not.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import secrets as secrets_module
import time
from collections.abc import Callable
from typing import Any, TypeVar

import msgspec
from nats.aio.client import Client as NatsClient
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

from ..registration_store import Registration
from ..url_signing import MIN_SECRET_BYTES
from .liveness import LeaseAcquired, LeaseLost, LeaseTable, LivenessEvent, NodeDown, NodeUp
from .nats_connection import NatsClusterConfig, connect_nats
from .records import (
    EnvironmentHolder,
    NodeInfo,
    NodeRef,
    NoiseRecord,
    RegistrationRecord,
    StreamOwner,
    Versioned,
    decode_record,
    encode_record,
    split_stream_key,
    stream_key,
)
from .state import (
    Conflict,
    EnvironmentClaim,
    EnvironmentHolderChanged,
    Listeners,
    Readiness,
    StateListener,
    StreamOwnerChanged,
    check_secret_name,
)
from .tasks import CLOSE_TIMEOUT_S, cancel_and_wait, finish_within
from .watch_cache import WatchCache

__all__ = ["NatsClusterState", "NodeIdInUse"]

log = logging.getLogger(__name__)

_T = TypeVar("_T")

_KV_OPERATION = "KV-Operation"
_EXPECTED_LAST_SUBJECT_SEQUENCE = "Nats-Expected-Last-Subject-Sequence"
_WRONG_LAST_SEQUENCE_CODES = (10071, 10164)
_MAX_CAS_ATTEMPTS = 16
_RESYNC_BACKOFF_S = 0.5
_WATCHED = ("nodes", "holders", "streams")
_NONCE_KEY = re.compile(r"^[A-Za-z0-9_-]{1,128}$")


class NodeIdInUse(RuntimeError):
    """Another live process heartbeats under this node id."""


class _Resync(Exception):
    """Restart the watches (raised inside the sync task group)."""


class NatsClusterState:
    """:class:`~exec_server.rendezvous.cluster.state.ClusterState` on JetStream KV.

    Create with :meth:`open`; close with :meth:`close` (deletes this node's heartbeat so
    the others see it leave at once).
    """

    def __init__(self, config: NatsClusterConfig, nc: NatsClient) -> None:
        self.config = config
        self._nc = nc
        self._js: JetStreamContext = nc.jetstream(timeout=config.request_timeout_s)
        self._loop = asyncio.get_running_loop()
        self._leases = LeaseTable(config.node_id, lease_s=config.lease_s)
        self._started = time.time()
        self._listeners = Listeners()
        self._kv: dict[str, KeyValue] = {}
        self._holders: WatchCache[EnvironmentHolder] = WatchCache(self._holder_changed)
        self._streams: WatchCache[StreamOwner] = WatchCache(self._stream_changed)
        self._mine_holders: dict[str, Versioned[EnvironmentHolder]] = {}
        """Holder records this node wrote and has not released: re-asserted after a
        resync that lacks them."""
        self._mine_streams: dict[str, Versioned[StreamOwner]] = {}
        self._snapshots_done: set[str] = set()
        self._secrets: dict[str, bytes] = {}
        self._synced = asyncio.Event()
        self._resync = asyncio.Event()
        self._closed = False
        self._tasks: list[asyncio.Task[object]] = []
        self._watchers: set[KeyValue.KeyWatcher] = set()

    # --- lifecycle ---------------------------------------------------------------------

    @classmethod
    async def open(cls, config: NatsClusterConfig) -> NatsClusterState:
        """Connect, create the buckets, take the first snapshot and the first lease."""
        holder: list[NatsClusterState] = []

        async def reconnected() -> None:
            if holder:
                holder[0]._resync.set()

        nc = await connect_nats(config, "state", reconnected=reconnected)
        state = cls(config, nc)
        holder.append(state)
        try:
            await state._start()
        except BaseException:
            await state.close()
            raise
        return state

    async def _start(self) -> None:
        await self._ensure_buckets()
        await self._wait_for_node_id()
        self._tasks.append(asyncio.ensure_future(self._sync_forever()))
        async with asyncio.timeout(self.config.request_timeout_s * 2):
            await self._synced.wait()
        await self._heartbeat_once()
        if not self._leases.holds_lease:
            raise NatsError("could not take a lease: the heartbeat was not acknowledged in time")
        self._tasks.append(asyncio.ensure_future(self._heartbeat_forever()))

    async def close(self, *, leave: bool = True) -> None:
        """Stop heartbeats and watches and disconnect. ``leave`` deletes this node's
        heartbeat so the others see it go at once; without it they notice when its lease
        runs out (what a crash looks like)."""
        if self._closed:
            return
        self._closed = True
        self._resync.set()
        for watcher in list(self._watchers):
            _end_watch(watcher)
        await cancel_and_wait(self._tasks)
        self._tasks.clear()
        nodes = self._kv.get("nodes")
        if leave and nodes is not None and self._nc.is_connected:
            with contextlib.suppress(NatsError, TimeoutError, OSError):
                async with asyncio.timeout(self.config.request_timeout_s):
                    await self._delete_if("nodes", self.config.node_id, None)
        await finish_within(self._nc.close(), CLOSE_TIMEOUT_S, "closing the state connection")

    async def _ensure_buckets(self) -> None:
        """Bind the buckets, creating the missing ones. An existing bucket is used as it
        is (the first node's settings win), so nodes with different settings still join."""
        config = self.config
        ttls: dict[str, float | None] = {
            "nodes": config.lease_s,
            "holders": None,
            "streams": None,
            "registrations": None,
            "noise": None,
            "authorizations": config.authorization_ttl_s,
            "secrets": None,
        }
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

    async def _wait_for_node_id(self) -> None:
        """Refuse to run beside a live process with the same node id."""
        nodes = self._kv["nodes"]
        first = await self._get(nodes, self.config.node_id, NodeInfo)
        if first is None:
            return
        log.info(
            "node id %s was heartbeating recently; waiting %.1fs to see whether it is alive",
            self.config.node_id,
            self.config.lease_s,
        )
        deadline = self._loop.time() + self.config.lease_s
        while self._loop.time() < deadline:
            await asyncio.sleep(self.config.heartbeat_interval_s / 2)
            latest = await self._get(nodes, self.config.node_id, NodeInfo)
            if latest is not None and latest.revision != first.revision:
                raise NodeIdInUse(
                    f"node id {self.config.node_id} is in use by a live rendezvous "
                    f"(incarnation {latest.value.incarnation}); pick another --node-id"
                )

    # --- ClusterState: identity and health ------------------------------------------------

    @property
    def node(self) -> NodeRef:
        return self._leases.node

    def readiness(self) -> Readiness:
        if self._closed:
            return Readiness(False, "closed")
        if not self._nc.is_connected:
            return Readiness(False, "nats_disconnected")
        if not self._synced.is_set():
            return Readiness(False, "syncing")
        if not self._leases.holds_lease:
            return Readiness(False, "lease_lost")
        return Readiness(True, "ready")

    def is_live(self, node: NodeRef) -> bool:
        return self._leases.is_live(node)

    def live_nodes(self) -> list[NodeInfo]:
        nodes = self._leases.live_nodes()
        if self._leases.holds_lease:
            own = self._leases.node
            nodes.append(
                NodeInfo(own.node_id, own.incarnation, self._started, self.config.public_url)
            )
            nodes.sort(key=lambda info: info.node_id)
        return nodes

    def add_listener(self, listener: StateListener) -> Callable[[], None]:
        return self._listeners.add(listener)

    # --- secrets ---------------------------------------------------------------------------

    async def secret(self, name: str, size: int = 32) -> bytes:
        check_secret_name(name)
        cached = self._secrets.get(name)
        if cached is not None:
            return cached
        if size < MIN_SECRET_BYTES:
            raise ValueError(f"secrets are at least {MIN_SECRET_BYTES} bytes")
        kv = self._kv["secrets"]
        # Whoever creates it first wins; everyone then reads the same value.
        with contextlib.suppress(KeyWrongLastSequenceError):
            await kv.create(name, secrets_module.token_hex(size).encode())
        entry = await kv.get(name)
        try:
            value = bytes.fromhex((entry.value or b"").decode())
        except ValueError:
            value = b""
        if len(value) < MIN_SECRET_BYTES:
            raise ValueError(
                f"secret {name!r} in {self.config.bucket('secrets')} is not a hex secret "
                f"of at least {MIN_SECRET_BYTES} bytes"
            )
        return self._secrets.setdefault(name, value)

    # --- registrations -------------------------------------------------------------------

    async def upsert_registration(
        self, environment_id: str, name: str | None, now: float
    ) -> Registration:
        kv = self._kv["registrations"]
        for _ in range(_MAX_CAS_ATTEMPTS):
            current = await self._get(kv, environment_id, RegistrationRecord)
            if current is None:
                record = RegistrationRecord(name, now, now)
            else:
                old = current.value
                record = RegistrationRecord(
                    name if name is not None else old.name, old.created, now
                )
            try:
                if current is None:
                    await kv.create(environment_id, encode_record(record))
                else:
                    await kv.update(environment_id, encode_record(record), last=current.revision)
            except KeyWrongLastSequenceError:
                continue
            return Registration(environment_id, record.name, record.created, record.last_seen)
        raise Conflict(f"registration {environment_id}")

    async def get_registration(self, environment_id: str) -> Registration | None:
        current = await self._get(self._kv["registrations"], environment_id, RegistrationRecord)
        if current is None:
            return None
        record = current.value
        return Registration(environment_id, record.name, record.created, record.last_seen)

    async def list_registrations(self) -> list[Registration]:
        rows = await self._snapshot(self._kv["registrations"], RegistrationRecord)
        return [
            Registration(key, value.value.name, value.value.created, value.value.last_seen)
            for key, value in sorted(rows.items())
        ]

    async def put_noise_registration(
        self, environment_id: str, registration_id: str, key_json: str
    ) -> None:
        record = NoiseRecord(registration_id, key_json)
        await self._kv["noise"].put(environment_id, encode_record(record))

    async def get_noise_registration(self, environment_id: str) -> tuple[str, str] | None:
        current = await self._get(self._kv["noise"], environment_id, NoiseRecord)
        if current is None:
            return None
        return current.value.registration_id, current.value.executor_public_key

    async def delete_noise_registration(self, environment_id: str) -> None:
        await self._delete_if("noise", environment_id, None)

    async def consume_authorization(self, nonce: str, stream_id: str) -> bool:
        if not _NONCE_KEY.match(nonce):
            return False
        try:
            await self._kv["authorizations"].create(nonce, stream_id.encode())
        except KeyWrongLastSequenceError:
            return False
        return True

    # --- environment holders ----------------------------------------------------------------

    def environment_holder(self, environment_id: str) -> Versioned[EnvironmentHolder] | None:
        return self._holders.get(environment_id)

    async def fetch_environment_holder(
        self, environment_id: str
    ) -> Versioned[EnvironmentHolder] | None:
        current = await self._get(self._kv["holders"], environment_id, EnvironmentHolder)
        if current is not None:
            self._holders.apply(environment_id, current.value, current.revision)
        return current

    async def claim_environment(
        self, environment_id: str, socket_id: str, now: float
    ) -> EnvironmentClaim:
        """Newest socket wins; of concurrent claims exactly one wins (compare-and-set
        against the authoritative record read just before)."""
        kv = self._kv["holders"]
        node = self.node
        holder = EnvironmentHolder(node.node_id, node.incarnation, socket_id, now)
        for _ in range(_MAX_CAS_ATTEMPTS):
            current = await self._get(kv, environment_id, EnvironmentHolder)
            try:
                revision = await self._write(kv, environment_id, holder, current)
            except KeyWrongLastSequenceError:
                latest = await self._get(kv, environment_id, EnvironmentHolder)
                if latest is None:
                    continue  # released meanwhile: try again
                self._holders.apply(environment_id, latest.value, latest.revision)
                return EnvironmentClaim(False, latest, None)
            self._mine_holders[environment_id] = Versioned(holder, revision)
            self._holders.apply(environment_id, holder, revision)
            replaced = current.value if current is not None else None
            return EnvironmentClaim(True, Versioned(holder, revision), replaced)
        raise Conflict(f"holder of {environment_id}")

    async def release_environment(self, environment_id: str, revision: int) -> bool:
        mine = self._mine_holders.get(environment_id)
        if mine is not None and mine.revision == revision:
            del self._mine_holders[environment_id]
        deleted = await self._delete_if("holders", environment_id, revision)
        if deleted is None:
            return False
        self._holders.apply(environment_id, None, deleted)
        return True

    # --- stream owners ------------------------------------------------------------------------

    def stream_owner(self, environment_id: str, stream_id: str) -> Versioned[StreamOwner] | None:
        return self._streams.get(stream_key(environment_id, stream_id))

    def streams_of(self, environment_id: str) -> dict[str, Versioned[StreamOwner]]:
        found: dict[str, Versioned[StreamOwner]] = {}
        for key, value in self._streams.with_prefix(environment_id + ".").items():
            split = split_stream_key(key)
            if split is not None:
                found[split[1]] = value
        return found

    async def fetch_stream_owner(
        self, environment_id: str, stream_id: str
    ) -> Versioned[StreamOwner] | None:
        key = stream_key(environment_id, stream_id)
        current = await self._get(self._kv["streams"], key, StreamOwner)
        if current is not None:
            self._streams.apply(key, current.value, current.revision)
        return current

    async def create_stream(
        self, environment_id: str, stream_id: str, owner: StreamOwner
    ) -> Versioned[StreamOwner]:
        return await self._put_stream(environment_id, stream_id, owner, None)

    async def replace_stream(
        self, environment_id: str, stream_id: str, owner: StreamOwner, expected_revision: int
    ) -> Versioned[StreamOwner]:
        return await self._put_stream(environment_id, stream_id, owner, expected_revision)

    async def _put_stream(
        self, environment_id: str, stream_id: str, owner: StreamOwner, expected: int | None
    ) -> Versioned[StreamOwner]:
        kv = self._kv["streams"]
        key = stream_key(environment_id, stream_id)
        try:
            if expected is None:
                revision = await kv.create(key, encode_record(owner))
            else:
                revision = await kv.update(key, encode_record(owner), last=expected)
        except KeyWrongLastSequenceError:
            current = await self.fetch_stream_owner(environment_id, stream_id)
            raise Conflict(key, current) from None
        if owner.node == self.node:
            self._mine_streams[key] = Versioned(owner, revision)
        else:
            self._mine_streams.pop(key, None)
        self._streams.apply(key, owner, revision)
        return Versioned(owner, revision)

    async def delete_stream(
        self, environment_id: str, stream_id: str, expected_revision: int
    ) -> bool:
        key = stream_key(environment_id, stream_id)
        deleted = await self._delete_if("streams", key, expected_revision)
        if deleted is None:
            return False
        mine = self._mine_streams.get(key)
        if mine is not None and mine.revision == expected_revision:
            del self._mine_streams[key]
        self._streams.apply(key, None, deleted)
        return True

    # --- KV helpers -------------------------------------------------------------------------

    async def _get(self, kv: KeyValue, key: str, kind: type[_T]) -> Versioned[_T] | None:
        try:
            entry = await kv.get(key)
        except KeyNotFoundError:
            return None
        if entry.value is None or entry.revision is None:
            return None
        try:
            return Versioned(decode_record(entry.value, kind), entry.revision)
        except (msgspec.DecodeError, msgspec.ValidationError):
            log.warning("ignoring an undecodable %s record at %r", kind.__name__, key)
            return None

    async def _write(
        self, kv: KeyValue, key: str, value: msgspec.Struct, current: Versioned[Any] | None
    ) -> int:
        if current is None:
            return int(await kv.create(key, encode_record(value)))
        return int(await kv.update(key, encode_record(value), last=current.revision))

    async def _delete_if(self, kind: str, key: str, revision: int | None) -> int | None:
        """Put a delete marker (only over ``revision`` when given); its revision, or None
        when the key moved on."""
        headers = {_KV_OPERATION: "DEL"}
        if revision is not None:
            headers[_EXPECTED_LAST_SUBJECT_SEQUENCE] = str(revision)
        try:
            subject = f"$KV.{self.config.bucket(kind)}.{key}"
            ack = await self._js.publish(subject, b"", headers=headers)
        except APIError as exc:
            if exc.err_code in _WRONG_LAST_SEQUENCE_CODES:
                return None
            raise
        return int(ack.seq)

    async def _snapshot(self, kv: KeyValue, kind: type[_T]) -> dict[str, Versioned[_T]]:
        """Every live key of a bucket, through one ordered consumer."""
        watcher = await kv.watchall()
        try:
            rows: dict[str, Versioned[_T]] = {}
            async with asyncio.timeout(self.config.request_timeout_s * 2):
                async for entry in watcher:
                    if self._initial_entry(entry, kind, rows) or (
                        entry is None and not rows and await _watch_is_empty(watcher)
                    ):
                        return rows
            raise NatsError(f"the watch of {kv._name} stopped")
        finally:
            with contextlib.suppress(Exception):
                await watcher.stop()  # type: ignore[no-untyped-call]

    def _initial_entry(
        self, entry: KeyValue.Entry | None, kind: type[_T], rows: dict[str, Versioned[_T]]
    ) -> bool:
        """Add one entry of a watch's initial batch to ``rows``; True at the batch's last.

        The initial batch ends with the entry whose ``delta`` (pending count) is 0. nats-py's
        own end marker (``None``) can come *before* entries already on their way (it asks
        the consumer's pending count after subscribing), so it only ends an empty batch.
        """
        if entry is None:
            return False
        decoded = self._decode_entry(entry, kind)
        if decoded is None:
            rows.pop(entry.key, None)
        else:
            rows[entry.key] = decoded
        return not entry.delta

    def _decode_entry(self, entry: KeyValue.Entry, kind: type[_T]) -> Versioned[_T] | None:
        if entry.operation in ("DEL", "PURGE") or entry.value is None or entry.revision is None:
            return None
        try:
            return Versioned(decode_record(entry.value, kind), entry.revision)
        except (msgspec.DecodeError, msgspec.ValidationError):
            log.warning("ignoring an undecodable %s record at %r", kind.__name__, entry.key)
            return None

    # --- watches ------------------------------------------------------------------------

    async def _sync_forever(self) -> None:
        while not self._closed:
            self._resync.clear()
            self._snapshots_done.clear()
            try:
                if self._synced.is_set():
                    await self._ensure_buckets()
                async with asyncio.TaskGroup() as group:
                    group.create_task(self._watch("nodes", NodeInfo, None))
                    group.create_task(self._watch("holders", EnvironmentHolder, self._holders))
                    group.create_task(self._watch("streams", StreamOwner, self._streams))
                    group.create_task(self._wait_for_resync())
            except* _Resync:
                if not self._closed:
                    log.info("resynchronising the cluster state after a NATS reconnect")
            except* (NatsError, OSError, TimeoutError) as group_error:
                log.warning("cluster state watch failed: %r; restarting", group_error.exceptions)
                await asyncio.sleep(_RESYNC_BACKOFF_S)

    async def _wait_for_resync(self) -> None:
        await self._resync.wait()
        # The watches may have swallowed the task group's cancellation (nats-py requests
        # inside them use asyncio.wait_for): end their iteration directly.
        for watcher in list(self._watchers):
            _end_watch(watcher)
        raise _Resync

    async def _watch(self, name: str, kind: type[_T], cache: WatchCache[_T] | None) -> None:
        watcher = await self._kv[name].watchall()
        self._watchers.add(watcher)
        if self._closed or self._resync.is_set():
            # Told to stop while the watch was being created: ``watchall()`` may have
            # swallowed this task's cancellation (nats-py's ``asyncio.wait_for``), and the
            # task group cancels a child only once, so end the watch here or it would
            # wait for updates forever (and ``close()`` with it).
            _end_watch(watcher)
        try:
            snapshot: dict[str, Versioned[_T]] = {}
            initial = True
            async for entry in watcher:
                if initial:
                    if self._initial_entry(entry, kind, snapshot) or (
                        entry is None and not snapshot and await _watch_is_empty(watcher)
                    ):
                        initial = False
                        self._install_snapshot(name, snapshot, cache)
                elif entry is not None:
                    decoded = self._decode_entry(entry, kind)
                    self._apply(entry.key, decoded, entry.revision or 0, cache)
            if not (self._closed or self._resync.is_set()):
                raise NatsError(f"the watch of {self.config.bucket(name)} stopped")
        finally:
            self._watchers.discard(watcher)
            with contextlib.suppress(Exception):
                await watcher.stop()  # type: ignore[no-untyped-call]

    def _install_snapshot(
        self, name: str, snapshot: dict[str, Versioned[_T]], cache: WatchCache[_T] | None
    ) -> None:
        if cache is not None:
            cache.replace_all(snapshot)
        else:
            for key, record in snapshot.items():
                self._apply(key, record, record.revision, None)
        self._snapshot_done(name)

    def _apply(
        self, key: str, decoded: Versioned[_T] | None, revision: int, cache: WatchCache[_T] | None
    ) -> None:
        if cache is not None:
            cache.apply(key, decoded.value if decoded is not None else None, revision)
        elif decoded is None:  # the nodes bucket feeds the lease table
            self._emit_all(self._leases.forget(key))
        else:
            info = decoded.value
            assert isinstance(info, NodeInfo)
            self._emit_all(self._leases.observe(info, self._loop.time()))

    def _snapshot_done(self, name: str) -> None:
        self._snapshots_done.add(name)
        if len(self._snapshots_done) < len(_WATCHED):
            return
        first = not self._synced.is_set()
        self._synced.set()
        if not first:
            self._tasks.append(asyncio.ensure_future(self._reassert()))

    async def _reassert(self) -> None:
        """After a resync: recreate our own records that the snapshot lacks (NATS lost
        its store); forget those someone else took meanwhile."""
        await self._reassert_bucket("holders", self._mine_holders, self._holders)
        await self._reassert_bucket("streams", self._mine_streams, self._streams)

    async def _reassert_bucket(
        self, name: str, mine: dict[str, Versioned[_T]], cache: WatchCache[_T]
    ) -> None:
        node = self.node
        for key, record in list(mine.items()):
            current = cache.get(key)
            value = record.value
            if current is not None or getattr(value, "incarnation", None) != node.incarnation:
                if current is None or current.value != value:
                    mine.pop(key, None)
                continue
            assert isinstance(value, msgspec.Struct)
            try:
                revision = await self._kv[name].create(key, encode_record(value))
            except (KeyWrongLastSequenceError, NatsError, TimeoutError) as exc:
                log.info("could not re-assert %s record %r: %r", name, key, exc)
                mine.pop(key, None)
                continue
            mine[key] = Versioned(value, revision)
            cache.apply(key, value, revision)

    # --- heartbeats ------------------------------------------------------------------------

    async def _heartbeat_forever(self) -> None:
        interval = self.config.heartbeat_interval_s
        # Loops test ``_closed`` too: nats-py's requests use ``asyncio.wait_for``, which on
        # Python 3.11 can swallow a cancellation that races with the reply.
        while not self._closed:
            started = self._loop.time()
            await self._heartbeat_once()
            await asyncio.sleep(max(0.0, interval - (self._loop.time() - started)))

    async def _heartbeat_once(self) -> None:
        sent_at = self._loop.time()
        info = self._leases.current_heartbeat(self._started, self.config.public_url)
        events: list[LivenessEvent] = []
        try:
            async with asyncio.timeout(self.config.heartbeat_interval_s):
                await self._kv["nodes"].put(self.config.node_id, encode_record(info))
            events += self._leases.heartbeat_acked(sent_at, self._loop.time())
        except (NatsError, TimeoutError, OSError) as exc:
            log.debug("heartbeat failed: %r", exc)
        events += self._leases.expire(self._loop.time())
        self._emit_all(events)

    # --- events -------------------------------------------------------------------------------

    def _emit_all(self, events: list[LivenessEvent]) -> None:
        for event in events:
            if isinstance(event, LeaseLost):
                log.warning("node %s lost its lease: not ready until NATS answers", event.node)
                self._mine_holders.clear()
                self._mine_streams.clear()
            elif isinstance(event, LeaseAcquired):
                log.info("node %s holds its lease", event.node)
            elif isinstance(event, NodeDown):
                log.info("node %s is gone%s", event.node, " (restarted)" if event.replaced else "")
            elif isinstance(event, NodeUp):
                log.info("node %s joined", event.info.ref)
            self._listeners.emit(event)

    def _holder_changed(
        self, key: str, old: EnvironmentHolder | None, new: EnvironmentHolder | None
    ) -> None:
        self._listeners.emit(EnvironmentHolderChanged(key, old, new))

    def _stream_changed(self, key: str, old: StreamOwner | None, new: StreamOwner | None) -> None:
        split = split_stream_key(key)
        if split is None:
            log.warning("ignoring a malformed stream key %r", key)
            return
        self._listeners.emit(StreamOwnerChanged(split[0], split[1], old, new))


async def _watch_is_empty(watcher: KeyValue.KeyWatcher) -> bool:
    """Whether a just-started watch has nothing to deliver (its consumer delivered
    nothing and has nothing pending)."""
    subscription = watcher._sub
    if subscription is None:
        return False
    info = await subscription.consumer_info()
    return not info.num_pending and not info.delivered.consumer_seq


def _end_watch(watcher: KeyValue.KeyWatcher) -> None:
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
