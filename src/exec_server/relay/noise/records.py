"""What travels inside the Noise transport records of one relay stream (Codex 0.171).

Messages: the record plaintext is a byte stream of JSON-RPC messages, each
``BE32(len) || compact JSON`` with ``0 < len <=`` :data:`MAX_MESSAGE_BYTES` (64 MiB).
The stream is cut into records of at most :data:`RECORD_PLAINTEXT_BYTES` (60 KiB), each
encrypted separately and carried by one relay ``data`` frame. One record may end several
messages and one message may span many records (:class:`MessageDecoder`).

Order: Noise nonces are implicit, so records must be decrypted in the order they were
sent. :class:`OrderedRecords` puts ``data`` frames back in ``seq`` order (from 0): a
duplicate (already released or already pending) is dropped, the first copy wins; a frame
more than :data:`MAX_REORDER_DISTANCE` ahead, or pending bytes over
:data:`MAX_PENDING_BYTES`, is a protocol error. ``seq`` never wraps.

Both raise :class:`~exec_server.relay.noise.errors.NoiseProtocolError` with Codex's
wording; the stream is reset on it.
"""

from __future__ import annotations

from collections.abc import Iterable

from exec_server.relay.noise.errors import NoiseProtocolError

__all__ = [
    "LENGTH_PREFIX_BYTES",
    "MAX_MESSAGE_BYTES",
    "MAX_PENDING_BYTES",
    "MAX_REORDER_DISTANCE",
    "MAX_SEQ",
    "RECORD_PLAINTEXT_BYTES",
    "MessageDecoder",
    "OrderedRecords",
    "frame_message",
    "split_records",
]

LENGTH_PREFIX_BYTES = 4
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
"""Longest JSON-RPC message (Codex ``MAX_NOISE_JSONRPC_MESSAGE_LEN``)."""
RECORD_PLAINTEXT_BYTES = 60 * 1024
"""Plaintext bytes per record (Codex ``NOISE_RECORD_PLAINTEXT_LEN``): 61456 on the wire."""
MAX_REORDER_DISTANCE = 64
"""Furthest a record may arrive ahead of the next expected seq."""
MAX_PENDING_BYTES = 1024 * 1024
"""Ciphertext bytes buffered ahead of a gap."""
MAX_SEQ = 0xFFFF_FFFF
"""Last usable relay ``seq`` (``uint32``); a stream that needs more is finished."""


def frame_message(message: bytes) -> bytes:
    """``BE32(len) || message``; ``message`` is one compact JSON-RPC message."""
    size = len(message)
    if size == 0:
        raise NoiseProtocolError("Noise relay JSON-RPC message must not be empty")
    if size > MAX_MESSAGE_BYTES:
        raise NoiseProtocolError("Noise relay JSON-RPC message exceeds maximum length")
    return size.to_bytes(LENGTH_PREFIX_BYTES, "big") + message


def split_records(
    messages: Iterable[bytes], record_bytes: int = RECORD_PLAINTEXT_BYTES
) -> list[bytes]:
    """Frame ``messages`` into one byte stream and cut it into record plaintexts.

    One message gives Codex's shape (records of one message only); several small
    messages share records, which Codex's decoder accepts."""
    if not 0 < record_bytes <= RECORD_PLAINTEXT_BYTES:
        raise ValueError(f"record_bytes must be in 1..{RECORD_PLAINTEXT_BYTES}")
    framed = [frame_message(message) for message in messages]
    stream = framed[0] if len(framed) == 1 else b"".join(framed)
    if len(stream) <= record_bytes:
        return [stream] if stream else []
    view = memoryview(stream)
    return [bytes(view[i : i + record_bytes]) for i in range(0, len(stream), record_bytes)]


class MessageDecoder:
    """Reassembles messages from decrypted record plaintexts, in order."""

    __slots__ = ("_buffer", "_max_message_bytes", "_need")

    def __init__(self, max_message_bytes: int = MAX_MESSAGE_BYTES) -> None:
        self._buffer = bytearray()
        self._need = 0  # bytes the message at the head needs in total; 0 = unknown
        self._max_message_bytes = max_message_bytes

    @property
    def buffered_bytes(self) -> int:
        return len(self._buffer)

    def push(self, record: bytes) -> list[bytes]:
        """Append one record's plaintext; return every message it completes."""
        if len(record) > RECORD_PLAINTEXT_BYTES:
            raise NoiseProtocolError("Noise relay plaintext record exceeds maximum length")
        buffer = self._buffer
        buffer += record
        if self._need and len(buffer) < self._need:
            return []
        messages: list[bytes] = []
        pos = 0
        size = len(buffer)
        while size - pos >= LENGTH_PREFIX_BYTES:
            length = int.from_bytes(buffer[pos : pos + LENGTH_PREFIX_BYTES], "big")
            if length == 0 or length > self._max_message_bytes:
                raise NoiseProtocolError("Noise relay JSON-RPC message has invalid length")
            end = pos + LENGTH_PREFIX_BYTES + length
            if end > size:
                break
            messages.append(bytes(buffer[pos + LENGTH_PREFIX_BYTES : end]))
            pos = end
        if pos:
            del buffer[:pos]
        self._need = (
            LENGTH_PREFIX_BYTES + int.from_bytes(buffer[:LENGTH_PREFIX_BYTES], "big")
            if len(buffer) >= LENGTH_PREFIX_BYTES
            else 0
        )
        return messages


class OrderedRecords:
    """Releases ciphertext records in ``seq`` order, from seq 0."""

    __slots__ = ("_max_distance", "_max_pending_bytes", "_pending", "_pending_bytes", "next_seq")

    def __init__(
        self,
        *,
        max_distance: int = MAX_REORDER_DISTANCE,
        max_pending_bytes: int = MAX_PENDING_BYTES,
    ) -> None:
        self.next_seq = 0
        self._pending: dict[int, bytes] = {}
        self._pending_bytes = 0
        self._max_distance = max_distance
        self._max_pending_bytes = max_pending_bytes

    @property
    def pending_bytes(self) -> int:
        return self._pending_bytes

    def push(self, seq: int, record: bytes) -> list[bytes]:
        """Accept one record; return the run of records now contiguous (maybe none)."""
        expected = self.next_seq
        if seq < expected or seq in self._pending:
            return []
        if seq > expected:
            if seq - expected > self._max_distance:
                raise NoiseProtocolError("Noise relay ciphertext exceeds reorder window")
            total = self._pending_bytes + len(record)
            if total > self._max_pending_bytes:
                raise NoiseProtocolError("Noise relay pending ciphertext buffer is full")
            self._pending[seq] = record
            self._pending_bytes = total
            return []
        ready = [record]
        expected += 1
        pending = self._pending
        while pending:
            nxt = pending.pop(expected, None)
            if nxt is None:
                break
            self._pending_bytes -= len(nxt)
            ready.append(nxt)
            expected += 1
        if expected > MAX_SEQ:
            raise NoiseProtocolError("Noise relay sequence number exhausted")
        self.next_seq = expected
        return ready
