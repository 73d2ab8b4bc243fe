"""The shared state of the rendezvous, behind one interface: :class:`ClusterState`.

Two implementations:

* :class:`LocalClusterState` (this module): the embedded single-node default. Records
  live in dicts, registrations in the existing
  :class:`~exec_server.rendezvous.registration_store.RegistrationStore` (SQLite with a
  data dir, memory without), secrets in the data dir like today. The only node is
  always live. No I/O beyond what the registration store already does.
* :class:`~exec_server.rendezvous.cluster.nats_state.NatsClusterState`: JetStream KV
  buckets shared by every node, with watch caches and heartbeats.

What the router and the registry API need from it:

* **Identity and health**: :attr:`~ClusterState.node` (this node's current incarnation,
  which changes after a lease loss), :meth:`~ClusterState.readiness` (what ``/readyz``
  reports: not ready means refuse new sockets), :meth:`~ClusterState.is_live` and
  :meth:`~ClusterState.live_nodes`.
* **Secrets**: :meth:`~ClusterState.secret` returns the same bytes on every node (the
  first caller creates them, atomically), so any node verifies any signed URL.
* **Registrations**: upsert / get / list, as the registration store does today, and
  each environment's Noise registration (registration id and executor key).
* **Harness key authorizations**: :meth:`~ClusterState.consume_authorization` makes
  one single use across the cluster (the first ``/validate`` on any node wins).
* **Environment holders** (which node holds an environment's socket):
  :meth:`~ClusterState.claim_environment` (the newest socket wins; a compare-and-set, so
  of two nodes claiming at once exactly one wins and the other must close its socket),
  :meth:`~ClusterState.release_environment` (only if still ours), the cached read
  :meth:`~ClusterState.environment_holder` and the authoritative
  :meth:`~ClusterState.fetch_environment_holder`.
* **Stream owners**: cached read :meth:`~ClusterState.stream_owner`, authoritative read
  :meth:`~ClusterState.fetch_stream_owner`, and compare-and-set writes
  :meth:`~ClusterState.create_stream` / :meth:`~ClusterState.replace_stream` /
  :meth:`~ClusterState.delete_stream` (:class:`Conflict` when the revision moved on);
  :func:`~exec_server.rendezvous.cluster.routing.decide_stream_claim` says which to call.
* **Changes**: :meth:`~ClusterState.add_listener` receives :data:`StateEvent` s, whoever
  made the change (this node included): an environment or stream that moved to another
  node, a node that died (its environments and streams enter their grace periods), this
  node's own lease lost or regained.

Cached reads are synchronous (the router reads them per frame); writes are coroutines.
Revisions are opaque increasing integers; a record read from the cache may be behind a
write another node just made (see ``Lookup`` in
:mod:`~exec_server.rendezvous.cluster.routing`).
"""

from __future__ import annotations

import logging
import os
import secrets as secrets_module
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from ..credentials import ensure_private_dir, load_or_create_secret
from ..errors import CredentialError
from ..registration_store import MemoryRegistrationStore, Registration, RegistrationStore
from .liveness import LeaseAcquired, LeaseLost, NodeDown, NodeUp
from .records import (
    EnvironmentHolder,
    NodeInfo,
    NodeRef,
    StreamOwner,
    Versioned,
    new_incarnation,
)

__all__ = [
    "URL_SIGNING_SECRET",
    "ClusterState",
    "Conflict",
    "EnvironmentClaim",
    "EnvironmentHolderChanged",
    "LocalClusterState",
    "Readiness",
    "StateEvent",
    "StateListener",
    "StreamOwnerChanged",
]

log = logging.getLogger(__name__)

URL_SIGNING_SECRET = "url-signing"
"""Name of the HMAC secret signing relay URLs (the data dir file ``url-signing-secret``
on a single node)."""

SECRET_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-")

MAX_CONSUMED_AUTHORIZATIONS = 100_000
"""Used authorizations remembered by the single-node state (oldest forgotten first; the
authorizer's own expiry check covers them by then)."""


class Conflict(Exception):
    """A compare-and-set lost: the record is no longer at the expected revision."""

    def __init__(self, key: str, current: Versioned[Any] | None = None) -> None:
        super().__init__(f"{key} changed concurrently")
        self.key = key
        self.current = current


@dataclass(frozen=True, slots=True)
class Readiness:
    ready: bool
    reason: str
    """``"ready"`` or why not (``"nats_disconnected"``, ``"lease_lost"``, ...)."""


@dataclass(frozen=True, slots=True)
class EnvironmentClaim:
    """Outcome of :meth:`ClusterState.claim_environment`."""

    won: bool
    record: Versioned[EnvironmentHolder]
    """Ours when ``won``; otherwise the newer claim that beat us."""
    replaced: EnvironmentHolder | None
    """The holder our claim displaced (its node must close that socket)."""


@dataclass(frozen=True, slots=True)
class EnvironmentHolderChanged:
    environment_id: str
    old: EnvironmentHolder | None
    new: EnvironmentHolder | None


@dataclass(frozen=True, slots=True)
class StreamOwnerChanged:
    environment_id: str
    stream_id: str
    old: StreamOwner | None
    new: StreamOwner | None


StateEvent = (
    EnvironmentHolderChanged | StreamOwnerChanged | NodeUp | NodeDown | LeaseLost | LeaseAcquired
)
StateListener = Callable[[StateEvent], None]


class ClusterState(Protocol):
    """Shared rendezvous state (module docstring)."""

    @property
    def node(self) -> NodeRef: ...

    def readiness(self) -> Readiness: ...

    def is_live(self, node: NodeRef) -> bool: ...

    def live_nodes(self) -> list[NodeInfo]:
        """Every live node, this one included while it holds its lease."""
        ...

    async def secret(self, name: str, size: int = 32) -> bytes:
        """The named secret, created with ``size`` random bytes by the first caller."""
        ...

    async def upsert_registration(
        self, environment_id: str, name: str | None, now: float
    ) -> Registration: ...

    async def get_registration(self, environment_id: str) -> Registration | None: ...

    async def list_registrations(self) -> list[Registration]: ...

    async def put_noise_registration(
        self, environment_id: str, registration_id: str, key_json: str
    ) -> None:
        """Record an environment's Noise registration (replacing any previous one)."""
        ...

    async def get_noise_registration(self, environment_id: str) -> tuple[str, str] | None:
        """``(registration id, executor public key JSON)``, or None."""
        ...

    async def delete_noise_registration(self, environment_id: str) -> None: ...

    async def consume_authorization(self, nonce: str, stream_id: str) -> bool:
        """Mark a harness key authorization used; False if any node already did (the
        authorization is single use across the cluster). Records are kept at least as
        long as an authorization lives."""
        ...

    def environment_holder(self, environment_id: str) -> Versioned[EnvironmentHolder] | None: ...

    async def fetch_environment_holder(
        self, environment_id: str
    ) -> Versioned[EnvironmentHolder] | None:
        """The authoritative holder record (refreshes the cache)."""
        ...

    async def claim_environment(
        self, environment_id: str, socket_id: str, now: float
    ) -> EnvironmentClaim: ...

    async def release_environment(self, environment_id: str, revision: int) -> bool:
        """Delete the holder record if it is still at ``revision`` (our claim)."""
        ...

    def stream_owner(
        self, environment_id: str, stream_id: str
    ) -> Versioned[StreamOwner] | None: ...

    def streams_of(self, environment_id: str) -> dict[str, Versioned[StreamOwner]]:
        """Cached owner records of one environment's streams, by stream id."""
        ...

    async def fetch_stream_owner(
        self, environment_id: str, stream_id: str
    ) -> Versioned[StreamOwner] | None: ...

    async def create_stream(
        self, environment_id: str, stream_id: str, owner: StreamOwner
    ) -> Versioned[StreamOwner]: ...

    async def replace_stream(
        self, environment_id: str, stream_id: str, owner: StreamOwner, expected_revision: int
    ) -> Versioned[StreamOwner]: ...

    async def delete_stream(
        self, environment_id: str, stream_id: str, expected_revision: int
    ) -> bool:
        """Delete the owner record if still at ``expected_revision``; False otherwise."""
        ...

    def add_listener(self, listener: StateListener) -> Callable[[], None]:
        """Call ``listener`` on every change; returns a function that removes it."""
        ...

    async def close(self) -> None: ...


def check_secret_name(name: str) -> None:
    if not name or len(name) > 64 or not set(name) <= SECRET_NAME_CHARS:
        raise ValueError(f"invalid secret name {name!r}: use 1-64 of [a-z0-9-]")


class Listeners:
    """Listener registry shared by both implementations (errors are logged, not raised)."""

    def __init__(self) -> None:
        self._listeners: list[StateListener] = []

    def add(self, listener: StateListener) -> Callable[[], None]:
        self._listeners.append(listener)

        def remove() -> None:
            if listener in self._listeners:
                self._listeners.remove(listener)

        return remove

    def emit(self, event: StateEvent) -> None:
        for listener in list(self._listeners):
            try:
                listener(event)
            except Exception:
                log.exception("cluster state listener failed on %r", event)


class LocalClusterState:
    """The single-node :class:`ClusterState`: in-process records, one node always live.

    ``registrations`` defaults to a memory store; ``data_dir`` holds the secrets (the
    URL-signing secret is the file the single-node rendezvous uses today), or they are
    random per process without one.
    """

    def __init__(
        self,
        registrations: RegistrationStore | None = None,
        *,
        data_dir: Path | None = None,
        node_id: str = "local",
        public_url: str | None = None,
        started: float = 0.0,
    ) -> None:
        self._registrations = registrations or MemoryRegistrationStore()
        self._data_dir = data_dir
        self._node = NodeRef(node_id, new_incarnation())
        self._info = NodeInfo(node_id, self._node.incarnation, started, public_url)
        self._secrets: dict[str, bytes] = {}
        self._holders: dict[str, Versioned[EnvironmentHolder]] = {}
        self._streams: dict[str, dict[str, Versioned[StreamOwner]]] = {}
        self._revision = 0
        self._consumed: dict[str, str] = {}
        self._listeners = Listeners()
        self._closed = False

    @property
    def node(self) -> NodeRef:
        return self._node

    def readiness(self) -> Readiness:
        return Readiness(False, "closed") if self._closed else Readiness(True, "ready")

    def is_live(self, node: NodeRef) -> bool:
        return node == self._node and not self._closed

    def live_nodes(self) -> list[NodeInfo]:
        return [] if self._closed else [self._info]

    async def secret(self, name: str, size: int = 32) -> bytes:
        check_secret_name(name)
        cached = self._secrets.get(name)
        if cached is not None:
            return cached
        if name == URL_SIGNING_SECRET:
            value = load_or_create_secret(self._data_dir)
        elif self._data_dir is None:
            value = secrets_module.token_bytes(size)
        else:
            value = _load_or_create_named_secret(self._data_dir / f"{name}-secret", size)
        return self._secrets.setdefault(name, value)

    async def upsert_registration(
        self, environment_id: str, name: str | None, now: float
    ) -> Registration:
        return await self._registrations.upsert(environment_id, name, now)

    async def get_registration(self, environment_id: str) -> Registration | None:
        return await self._registrations.get(environment_id)

    async def list_registrations(self) -> list[Registration]:
        return await self._registrations.list_all()

    async def put_noise_registration(
        self, environment_id: str, registration_id: str, key_json: str
    ) -> None:
        await self._registrations.put_noise(environment_id, registration_id, key_json)

    async def get_noise_registration(self, environment_id: str) -> tuple[str, str] | None:
        return await self._registrations.get_noise(environment_id)

    async def delete_noise_registration(self, environment_id: str) -> None:
        await self._registrations.delete_noise(environment_id)

    async def consume_authorization(self, nonce: str, stream_id: str) -> bool:
        if nonce in self._consumed:
            return False
        if len(self._consumed) >= MAX_CONSUMED_AUTHORIZATIONS:
            self._consumed.pop(next(iter(self._consumed)))
        self._consumed[nonce] = stream_id
        return True

    def _next_revision(self) -> int:
        self._revision += 1
        return self._revision

    def environment_holder(self, environment_id: str) -> Versioned[EnvironmentHolder] | None:
        return self._holders.get(environment_id)

    async def fetch_environment_holder(
        self, environment_id: str
    ) -> Versioned[EnvironmentHolder] | None:
        return self._holders.get(environment_id)

    async def claim_environment(
        self, environment_id: str, socket_id: str, now: float
    ) -> EnvironmentClaim:
        old = self._holders.get(environment_id)
        node = self._node
        record = Versioned(
            EnvironmentHolder(node.node_id, node.incarnation, socket_id, now),
            self._next_revision(),
        )
        self._holders[environment_id] = record
        replaced = old.value if old is not None else None
        self._listeners.emit(EnvironmentHolderChanged(environment_id, replaced, record.value))
        return EnvironmentClaim(True, record, replaced)

    async def release_environment(self, environment_id: str, revision: int) -> bool:
        current = self._holders.get(environment_id)
        if current is None or current.revision != revision:
            return False
        del self._holders[environment_id]
        self._listeners.emit(EnvironmentHolderChanged(environment_id, current.value, None))
        return True

    def stream_owner(self, environment_id: str, stream_id: str) -> Versioned[StreamOwner] | None:
        streams = self._streams.get(environment_id)
        return streams.get(stream_id) if streams is not None else None

    def streams_of(self, environment_id: str) -> dict[str, Versioned[StreamOwner]]:
        return dict(self._streams.get(environment_id, {}))

    async def fetch_stream_owner(
        self, environment_id: str, stream_id: str
    ) -> Versioned[StreamOwner] | None:
        return self.stream_owner(environment_id, stream_id)

    async def create_stream(
        self, environment_id: str, stream_id: str, owner: StreamOwner
    ) -> Versioned[StreamOwner]:
        current = self.stream_owner(environment_id, stream_id)
        if current is not None:
            raise Conflict(f"{environment_id}/{stream_id}", current)
        return self._set_stream(environment_id, stream_id, owner, None)

    async def replace_stream(
        self, environment_id: str, stream_id: str, owner: StreamOwner, expected_revision: int
    ) -> Versioned[StreamOwner]:
        current = self.stream_owner(environment_id, stream_id)
        if current is None or current.revision != expected_revision:
            raise Conflict(f"{environment_id}/{stream_id}", current)
        return self._set_stream(environment_id, stream_id, owner, current.value)

    def _set_stream(
        self, environment_id: str, stream_id: str, owner: StreamOwner, old: StreamOwner | None
    ) -> Versioned[StreamOwner]:
        record = Versioned(owner, self._next_revision())
        self._streams.setdefault(environment_id, {})[stream_id] = record
        self._listeners.emit(StreamOwnerChanged(environment_id, stream_id, old, owner))
        return record

    async def delete_stream(
        self, environment_id: str, stream_id: str, expected_revision: int
    ) -> bool:
        streams = self._streams.get(environment_id)
        current = streams.get(stream_id) if streams is not None else None
        if streams is None or current is None or current.revision != expected_revision:
            return False
        del streams[stream_id]
        if not streams:
            del self._streams[environment_id]
        self._listeners.emit(StreamOwnerChanged(environment_id, stream_id, current.value, None))
        return True

    def add_listener(self, listener: StateListener) -> Callable[[], None]:
        return self._listeners.add(listener)

    async def close(self) -> None:
        self._closed = True
        await self._registrations.close()


def _load_or_create_named_secret(path: Path, size: int) -> bytes:
    """A hex secret file in the data dir (mode 0600), created once."""
    ensure_private_dir(path.parent)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        pass
    except OSError as exc:
        raise CredentialError(f"cannot create {path}: {exc}") from None
    else:
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets_module.token_hex(size) + "\n")
    try:
        return bytes.fromhex(path.read_text().strip())
    except (OSError, ValueError) as exc:
        raise CredentialError(f"{path} does not hold a hex secret: {exc}") from None
