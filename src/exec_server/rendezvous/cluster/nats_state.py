"""The shared rendezvous state in NATS JetStream KV: :class:`NatsClusterState`.

Records live in the buckets of :mod:`~exec_server.rendezvous.cluster.kv_buckets`: the
hot ones (``nodes``, ``holders``, ``streams``) here, the cold ones (registrations, Noise
keys, used authorizations, secrets) in :mod:`~exec_server.rendezvous.cluster.nats_registry`.

Holder and owner records carry no TTL: they are valid while their node incarnation holds
its lease (:mod:`~exec_server.rendezvous.cluster.liveness`), so one heartbeat a second
per node renews everything it holds, and a dead node's records stay readable (who held
what) until someone takes them over with a compare-and-set.

Every node watches ``nodes``, ``holders`` and ``streams`` into local caches
(:class:`~exec_server.rendezvous.cluster.watch_cache.WatchCache`); its own writes update
its cache at once. After a NATS reconnect the watches restart from a full snapshot (and
the buckets are re-created if NATS lost its store), then the node re-asserts the
records it still holds that the snapshot lacks. The cold buckets are read on demand.

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
import time
from collections.abc import Callable
from typing import TypeVar

from nats.aio.client import Client as NatsClient
from nats.errors import Error as NatsError
from nats.js import JetStreamContext
from nats.js.errors import KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from ..registration_store import Registration
from .kv_buckets import Buckets, end_watch, follow_bucket, reassert_records
from .liveness import LeaseAcquired, LeaseLost, LeaseTable, LivenessEvent, NodeDown, NodeUp
from .nats_connection import NatsClusterConfig, connect_nats
from .nats_registry import SharedRegistry
from .records import (
    EnvironmentHolder,
    NodeInfo,
    NodeRef,
    StreamOwner,
    Versioned,
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
)
from .tasks import CLOSE_TIMEOUT_S, cancel_and_wait, finish_within
from .watch_cache import WatchCache

__all__ = ["NatsClusterState", "NodeIdInUse"]

log = logging.getLogger(__name__)

_T = TypeVar("_T")

_MAX_CAS_ATTEMPTS = 16
_RESYNC_BACKOFF_S = 0.5
_WATCHED = ("nodes", "holders", "streams")


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
        self._buckets = Buckets(self._js, config)
        self._registry = SharedRegistry(self._buckets, config)
        self._holders: WatchCache[EnvironmentHolder] = WatchCache(self._holder_changed)
        self._streams: WatchCache[StreamOwner] = WatchCache(self._stream_changed)
        self._mine_holders: dict[str, Versioned[EnvironmentHolder]] = {}
        """Holder records this node wrote and has not released: re-asserted after a
        resync that lacks them."""
        self._mine_streams: dict[str, Versioned[StreamOwner]] = {}
        self._snapshots_done: set[str] = set()
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
        await self._buckets.ensure()
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
            end_watch(watcher)
        await cancel_and_wait(self._tasks)
        self._tasks.clear()
        if leave and self._buckets.bound("nodes") and self._nc.is_connected:
            with contextlib.suppress(NatsError, TimeoutError, OSError):
                async with asyncio.timeout(self.config.request_timeout_s):
                    await self._buckets.delete_if("nodes", self.config.node_id, None)
        await finish_within(self._nc.close(), CLOSE_TIMEOUT_S, "closing the state connection")

    async def _wait_for_node_id(self) -> None:
        """Refuse to run beside a live process with the same node id."""
        first = await self._buckets.get("nodes", self.config.node_id, NodeInfo)
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
            latest = await self._buckets.get("nodes", self.config.node_id, NodeInfo)
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

    # --- registry (cold paths) -------------------------------------------------------------

    async def secret(self, name: str, size: int = 32) -> bytes:
        return await self._registry.secret(name, size)

    async def upsert_registration(
        self, environment_id: str, name: str | None, now: float
    ) -> Registration:
        return await self._registry.upsert_registration(environment_id, name, now)

    async def get_registration(self, environment_id: str) -> Registration | None:
        return await self._registry.get_registration(environment_id)

    async def list_registrations(self) -> list[Registration]:
        return await self._registry.list_registrations()

    async def put_noise_registration(
        self, environment_id: str, registration_id: str, key_json: str
    ) -> None:
        await self._registry.put_noise_registration(environment_id, registration_id, key_json)

    async def get_noise_registration(self, environment_id: str) -> tuple[str, str] | None:
        return await self._registry.get_noise_registration(environment_id)

    async def delete_noise_registration(self, environment_id: str) -> None:
        await self._registry.delete_noise_registration(environment_id)

    async def consume_authorization(self, nonce: str, stream_id: str) -> bool:
        return await self._registry.consume_authorization(nonce, stream_id)

    # --- environment holders ----------------------------------------------------------------

    def environment_holder(self, environment_id: str) -> Versioned[EnvironmentHolder] | None:
        return self._holders.get(environment_id)

    async def fetch_environment_holder(
        self, environment_id: str
    ) -> Versioned[EnvironmentHolder] | None:
        current = await self._buckets.get("holders", environment_id, EnvironmentHolder)
        if current is not None:
            self._holders.apply(environment_id, current.value, current.revision)
        return current

    async def claim_environment(
        self, environment_id: str, socket_id: str, now: float
    ) -> EnvironmentClaim:
        """Newest socket wins; of concurrent claims exactly one wins (compare-and-set
        against the authoritative record read just before)."""
        node = self.node
        holder = EnvironmentHolder(node.node_id, node.incarnation, socket_id, now)
        for _ in range(_MAX_CAS_ATTEMPTS):
            current = await self._buckets.get("holders", environment_id, EnvironmentHolder)
            try:
                revision = await self._buckets.write("holders", environment_id, holder, current)
            except KeyWrongLastSequenceError:
                latest = await self._buckets.get("holders", environment_id, EnvironmentHolder)
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
        deleted = await self._buckets.delete_if("holders", environment_id, revision)
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
        current = await self._buckets.get("streams", key, StreamOwner)
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
        key = stream_key(environment_id, stream_id)
        try:
            if expected is None:
                revision = await self._buckets["streams"].create(key, encode_record(owner))
            else:
                revision = await self._buckets["streams"].update(
                    key, encode_record(owner), last=expected
                )
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
        deleted = await self._buckets.delete_if("streams", key, expected_revision)
        if deleted is None:
            return False
        mine = self._mine_streams.get(key)
        if mine is not None and mine.revision == expected_revision:
            del self._mine_streams[key]
        self._streams.apply(key, None, deleted)
        return True

    # --- watches ------------------------------------------------------------------------

    async def _sync_forever(self) -> None:
        while not self._closed:
            self._resync.clear()
            self._snapshots_done.clear()
            try:
                if self._synced.is_set():
                    await self._buckets.ensure()
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
            end_watch(watcher)
        raise _Resync

    async def _watch(self, name: str, kind: type[_T], cache: WatchCache[_T] | None) -> None:
        await follow_bucket(
            self._buckets,
            name,
            kind,
            self._watchers,
            lambda: self._closed or self._resync.is_set(),
            lambda snapshot: self._install_snapshot(name, snapshot, cache),
            lambda key, decoded, revision: self._apply(key, decoded, revision, cache),
        )

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
            # Finished re-assertions leave the list (it would grow with every resync);
            # one that failed is logged, the next resync tries again.
            for task in [t for t in self._tasks if t.done()]:
                self._tasks.remove(task)
                if not task.cancelled() and task.exception() is not None:
                    log.warning("re-asserting our records failed: %r", task.exception())
            self._tasks.append(asyncio.ensure_future(self._reassert()))

    async def _reassert(self) -> None:
        """After a resync: recreate our own records that the snapshot lacks (NATS lost
        its store); forget those someone else took meanwhile."""
        incarnation = self.node.incarnation
        await reassert_records(
            self._buckets, "holders", incarnation, self._mine_holders, self._holders
        )
        await reassert_records(
            self._buckets, "streams", incarnation, self._mine_streams, self._streams
        )

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
                await self._buckets["nodes"].put(self.config.node_id, encode_record(info))
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
