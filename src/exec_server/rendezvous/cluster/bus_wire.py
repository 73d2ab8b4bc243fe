"""What the frame bus puts on NATS, sans-IO: subjects, the frame header, split frames,
credit messages.

Subjects (``<prefix>`` from :class:`~exec_server.rendezvous.cluster.nats_connection.
NatsClusterConfig`; ``<to>``/``<from>`` are node ids):

* ``<prefix>.frames.<to>.<from>``: relay frame bytes as the payload, untouched, with
  one header ``Exs: <environment id> <kind> <incarnation> <generation> <seq>`` (plus
  `` <part>/<parts>`` when a frame above the server's ``max_payload`` is split, see
  :func:`split_frame` and :class:`Reassembler`). Kind ``h`` is harness-to-environment,
  ``e`` environment-to-harness, ``c`` a control message of the router (JSON text,
  harness-to-environment), ``s`` a sync (empty payload; ``seq`` is the last one sent).
* ``<prefix>.credit.<to>.<from>``: flow control back to a sender, a short text payload:
  ``grant <env> <incarnation> <generation> <consumed bytes>`` or ``reset <env>
  <incarnation> <generation>`` (``incarnation`` is the sender's being answered); and
  ``probe <token>``, which a node sends itself to learn that its subscriptions are live.

The sender's node id is the subject's last token (see
:mod:`~exec_server.rendezvous.cluster.frame_bus` on authenticating it). Everything here
is a pure function of strings and bytes: no NATS, no clock.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from dataclasses import dataclass

from .records import is_valid_node_id
from .routing import Direction

__all__ = [
    "CONTROL",
    "DIRECTION_OF",
    "HEADER",
    "KIND_OF",
    "SYNC",
    "ChannelReset",
    "FrameHeader",
    "Grant",
    "PartLost",
    "Reassembler",
    "credit_subject",
    "frame_header",
    "frames_subject",
    "grant_text",
    "parse_credit",
    "parse_frame_header",
    "probe_text",
    "reset_text",
    "sender_of",
    "split_frame",
]

HEADER = "Exs"
KIND_OF = {Direction.HARNESS_TO_ENVIRONMENT: "h", Direction.ENVIRONMENT_TO_HARNESS: "e"}
DIRECTION_OF = {kind: direction for direction, kind in KIND_OF.items()}
SYNC = "s"
CONTROL = "c"
_KINDS = frozenset((*DIRECTION_OF, SYNC, CONTROL))


_valid_sender = functools.lru_cache(maxsize=256)(is_valid_node_id)
""":func:`is_valid_node_id` for each frame's sender, remembered (a cluster has few)."""


def frames_subject(prefix: str, to: str, sender: str) -> str:
    return f"{prefix}.frames.{to}.{sender}"


def credit_subject(prefix: str, to: str, sender: str) -> str:
    return f"{prefix}.credit.{to}.{sender}"


def sender_of(subject: str) -> str:
    """The sending node id: the subject's last token."""
    return subject.rsplit(".", 1)[-1]


# --- frames ---------------------------------------------------------------------------------


@dataclass(slots=True)
class FrameHeader:
    environment_id: str
    kind: str
    incarnation: str
    generation: int
    seq: int
    part: tuple[int, int] | None = None
    """``(index, count)`` of a split frame's part, from 1."""


def frame_header(
    environment_id: str, kind: str, incarnation: str, generation: int, seq: int
) -> str:
    return f"{environment_id} {kind} {incarnation} {generation} {seq}"


def parse_frame_header(sender_id: str, own_id: str, text: str | None) -> FrameHeader | None:
    """The header of a message on ``<prefix>.frames.<own_id>.<sender_id>``; None if it
    is malformed (or claims to come from this node)."""
    if not text:
        return None
    fields = text.split(" ")
    count = len(fields)
    if (count != 5 and count != 6) or sender_id == own_id or not _valid_sender(sender_id):
        return None
    kind = fields[1]
    if kind not in _KINDS:
        return None
    try:
        generation, seq = int(fields[3]), int(fields[4])
        part = None if count == 5 else _part(fields[5])
    except ValueError:
        return None
    return FrameHeader(fields[0], kind, fields[2], generation, seq, part)


def _part(text: str) -> tuple[int, int]:
    index, _, count = text.partition("/")
    return int(index), int(count)


def split_frame(data: bytes, header: str, max_chunk: int) -> Iterator[tuple[bytes, str]]:
    """``(payload, header)`` of each message for a frame: one, or parts of at most
    ``max_chunk`` bytes, in order."""
    if len(data) <= max_chunk:
        yield data, header
        return
    count = -(-len(data) // max_chunk)
    view = memoryview(data)
    for index in range(count):
        chunk = bytes(view[index * max_chunk : (index + 1) * max_chunk])
        yield chunk, f"{header} {index + 1}/{count}"


class PartLost:
    """A part of a split frame went missing: the frame is gone (the channel's sequence
    check reports the loss on the next whole frame)."""


PART_LOST = PartLost()


@dataclass(slots=True)
class _Assembly:
    key: tuple[str, str, str, int, int]
    parts: int
    chunks: list[bytes]


class Reassembler:
    """Joins split frames; the parts of one frame arrive contiguously per sender."""

    def __init__(self) -> None:
        self._assembly: dict[str, _Assembly] = {}

    def add(self, sender_id: str, header: FrameHeader, chunk: bytes) -> bytes | PartLost | None:
        """The whole frame once its last part is in; None while parts are missing."""
        assert header.part is not None
        index, count = header.part
        key = (
            header.environment_id,
            header.kind,
            header.incarnation,
            header.generation,
            header.seq,
        )
        assembly = self._assembly.get(sender_id)
        if index == 1:
            assembly = self._assembly[sender_id] = _Assembly(key, count, [])
        elif assembly is None or assembly.key != key or len(assembly.chunks) != index - 1:
            self._assembly.pop(sender_id, None)
            return PART_LOST
        assembly.chunks.append(chunk)
        if index < assembly.parts:
            return None
        del self._assembly[sender_id]
        return b"".join(assembly.chunks)

    def forget(self, sender_id: str) -> None:
        self._assembly.pop(sender_id, None)


# --- credit ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Grant:
    """The receiver consumed ``consumed`` bytes of generation ``generation`` in all."""

    environment_id: str
    incarnation: str
    generation: int
    consumed: int


@dataclass(frozen=True, slots=True)
class ChannelReset:
    """The receiver saw a gap in ``generation``: start a new generation."""

    environment_id: str
    incarnation: str
    generation: int


def grant_text(environment_id: str, incarnation: str, generation: int, consumed: int) -> str:
    return f"grant {environment_id} {incarnation} {generation} {consumed}"


def reset_text(environment_id: str, incarnation: str, generation: int) -> str:
    return f"reset {environment_id} {incarnation} {generation}"


def probe_text(token: str) -> bytes:
    return f"probe {token}".encode()


def parse_credit(data: bytes) -> Grant | ChannelReset | None:
    """A grant or a reset; None if malformed."""
    try:
        fields = data.decode().split(" ")
        kind, environment_id, incarnation = fields[0], fields[1], fields[2]
        numbers = [int(value) for value in fields[3:]]
    except (UnicodeDecodeError, ValueError, IndexError):
        return None
    if kind == "grant" and len(numbers) == 2:
        return Grant(environment_id, incarnation, numbers[0], numbers[1])
    if kind == "reset" and len(numbers) == 1:
        return ChannelReset(environment_id, incarnation, numbers[0])
    return None
