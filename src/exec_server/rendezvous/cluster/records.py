"""The records shared by rendezvous nodes, and how they are keyed and encoded.

Every record names the *node incarnation* that wrote it (:class:`NodeRef`): a node id
chosen by the operator (``--node-id``, stable across restarts) plus a random incarnation
drawn at every start and again whenever the node loses its lease. A record is only as
good as its holder's lease: :class:`EnvironmentHolder` and :class:`StreamOwner` carry no
expiry of their own, they are valid while ``(node_id, incarnation)`` is live (see
:mod:`~exec_server.rendezvous.cluster.liveness`). One heartbeat per node thus renews every
lease that node holds, however many environments and streams it carries.

Values are JSON (msgspec) so an operator can read them with ``nats kv get``. Keys:

* node: the node id;
* environment holder and registration: the environment id (already ``[A-Za-z0-9_-]``);
* stream owner: ``<environment id>.<base64url(stream id)>``: stream ids are arbitrary
  UTF-8 (up to 256 bytes), KV keys are not, and the ``.`` lets a watch select one
  environment's streams (``<environment id>.>``).
"""

from __future__ import annotations

import base64
import binascii
import re
import secrets
from dataclasses import dataclass
from typing import Generic, TypeVar

import msgspec

__all__ = [
    "NODE_ID_PATTERN",
    "EnvironmentHolder",
    "NodeInfo",
    "NodeRef",
    "NoiseRecord",
    "RegistrationRecord",
    "StreamOwner",
    "Versioned",
    "decode_record",
    "encode_record",
    "is_valid_node_id",
    "new_incarnation",
    "split_stream_key",
    "stream_key",
]

NODE_ID_PATTERN = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
"""Node ids become NATS subject tokens and KV keys."""

INCARNATION_BYTES = 9
"""Random bytes of an incarnation (12 base64url characters)."""

_T = TypeVar("_T")


def is_valid_node_id(node_id: str) -> bool:
    return NODE_ID_PATTERN.match(node_id) is not None


def new_incarnation() -> str:
    """A fresh random incarnation token (base64url, subject-token safe)."""
    return base64.urlsafe_b64encode(secrets.token_bytes(INCARNATION_BYTES)).decode()


class NodeRef(msgspec.Struct, frozen=True):
    """One run of one node: what a lease belongs to."""

    node_id: str
    incarnation: str

    def __str__(self) -> str:
        return f"{self.node_id}/{self.incarnation}"


class NodeInfo(msgspec.Struct, frozen=True):
    """A node's heartbeat value."""

    node_id: str
    incarnation: str
    started: float
    """Unix seconds this incarnation began."""
    public_url: str | None = None
    """Where clients reach this node (``/connect`` may hand it out)."""

    @property
    def ref(self) -> NodeRef:
        return NodeRef(self.node_id, self.incarnation)


class EnvironmentHolder(msgspec.Struct, frozen=True):
    """Which node holds an environment's live socket."""

    node_id: str
    incarnation: str
    socket_id: str
    """Unique per socket on its node (opaque to other nodes)."""
    since: float
    """Unix seconds of the claim (informational: never compared across nodes)."""

    @property
    def node(self) -> NodeRef:
        return NodeRef(self.node_id, self.incarnation)


class StreamOwner(msgspec.Struct, frozen=True):
    """Which harness socket (on which node) owns a stream."""

    node_id: str
    incarnation: str
    socket_id: str
    credential: str
    """The principal that may take the stream over: today the harness URL's nonce,
    with Noise the harness key. Compared for equality only."""
    since: float

    @property
    def node(self) -> NodeRef:
        return NodeRef(self.node_id, self.incarnation)


class RegistrationRecord(msgspec.Struct, frozen=True):
    name: str | None
    created: float
    last_seen: float


class NoiseRecord(msgspec.Struct, frozen=True):
    """An environment's Noise registration (Codex 0.171's ``noise_hybrid_ik_v1``)."""

    registration_id: str
    executor_public_key: str
    """The key as ``NoiseChannelPublicKey`` JSON."""


@dataclass(frozen=True, slots=True)
class Versioned(Generic[_T]):
    """A value with the revision it was stored at (the NATS KV sequence, or a counter in
    the embedded store): compare-and-set operations name the revision they replace."""

    value: _T
    revision: int


def encode_record(value: msgspec.Struct) -> bytes:
    return msgspec.json.encode(value)


def decode_record(data: bytes, kind: type[_T]) -> _T:
    """Decode a record; raises ``msgspec.ValidationError``/``DecodeError`` on bad bytes."""
    return msgspec.json.decode(data, type=kind)


def stream_key(environment_id: str, stream_id: str) -> str:
    encoded = base64.urlsafe_b64encode(stream_id.encode()).rstrip(b"=").decode()
    return f"{environment_id}.{encoded}"


def split_stream_key(key: str) -> tuple[str, str] | None:
    """``(environment id, stream id)`` of a :func:`stream_key`, or None if malformed."""
    environment_id, dot, encoded = key.partition(".")
    if not dot or not environment_id or not encoded:
        return None
    try:
        raw = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4))
        return environment_id, raw.decode()
    except (binascii.Error, ValueError):
        return None
