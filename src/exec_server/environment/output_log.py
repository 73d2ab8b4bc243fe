"""The output a process keeps for ``process/read``: bounded, oldest evicted first.

Chunks arrive in ``seq`` order. The log holds at most ``limit_bytes`` of payload
(Codex keeps 1 MiB) and, so that a child trickling single bytes cannot turn that
into a million objects, at most ``limit_bytes //`` :data:`MIN_ACCOUNTED_CHUNK_BYTES`
chunks; the newest chunk always stays, so a reader can see where retention starts.
Reads are whole chunks after a ``seq``, the first one always included, and say
where retention starts when output a reader has not seen was evicted
(``firstRetainedSeq``, our extension).

Memory: evicted chunks are dropped from a list with a moving head in batches, so
eviction is amortised O(1) and what the log holds stays within 1.25x the limit
plus one chunk, whatever the chunk size.
"""

from __future__ import annotations

import operator
from bisect import bisect_right
from collections.abc import Iterator
from dataclasses import dataclass

from ..protocol.messages import ProcessOutputChunk

#: Chunks are counted as at least this many bytes against the chunk-count bound.
MIN_ACCOUNTED_CHUNK_BYTES = 64
#: Evicted chunks are compacted away once more than this many sit below the head
#: (and they outnumber the live ones) ...
_COMPACT_MIN_CHUNKS = 1024
#: ... or once they hold this fraction of the limit (divisor).
_COMPACT_FRACTION = 4

_seq_of = operator.attrgetter("seq")


@dataclass(frozen=True, slots=True)
class OutputSlice:
    """What a read returns: whole chunks after a seq."""

    chunks: list[ProcessOutputChunk]
    #: ``max_bytes`` cut the read short (more chunks were available).
    limited: bool
    #: Set when output after the read's seq was evicted: where retention starts.
    first_retained_seq: int | None


class OutputLog:
    """Retained output chunks of one process, in ``seq`` order."""

    def __init__(self, limit_bytes: int) -> None:
        self._limit = limit_bytes
        self._max_chunks = max(1, limit_bytes // MIN_ACCOUNTED_CHUNK_BYTES)
        # A list with a moving head, so reads can bisect by seq.
        self._chunks: list[ProcessOutputChunk] = []
        self._head = 0
        self._bytes = 0
        self._dead_bytes = 0  # evicted chunks still referenced below the head
        #: The seq of the newest evicted chunk (0: nothing evicted yet).
        self.evicted_through_seq = 0

    def append(self, chunk: ProcessOutputChunk) -> None:
        """Keep ``chunk`` (its seq must be above every kept one), evicting as needed."""
        self._chunks.append(chunk)
        self._bytes += len(chunk.chunk)
        self._evict()

    def _evict(self) -> None:
        chunks = self._chunks
        head = self._head
        while (self._bytes > self._limit or len(chunks) - head > self._max_chunks) and len(
            chunks
        ) - head > 1:
            evicted = chunks[head]
            head += 1
            self._bytes -= len(evicted.chunk)
            self._dead_bytes += len(evicted.chunk)
            self.evicted_through_seq = evicted.seq
        # Compact once the evicted chunks hold a quarter of the limit, or outnumber
        # the live ones (so compaction stays amortised O(1) for tiny chunks).
        if self._dead_bytes > self._limit // _COMPACT_FRACTION or (
            head > _COMPACT_MIN_CHUNKS and head * 2 > len(chunks)
        ):
            del chunks[:head]
            head = 0
            self._dead_bytes = 0
        self._head = head

    def read(self, after_seq: int, max_bytes: int | None = None) -> OutputSlice:
        """The chunks after ``after_seq``, whole, at most ``max_bytes`` of them (the
        first one always)."""
        chunks = self._chunks
        start = bisect_right(chunks, after_seq, lo=self._head, key=_seq_of)
        taken: list[ProcessOutputChunk] = []
        total = 0
        limited = False
        for index in range(start, len(chunks)):
            chunk = chunks[index]
            size = len(chunk.chunk)
            if max_bytes is not None and taken and total + size > max_bytes:
                limited = True
                break
            taken.append(chunk)
            total += size
            if max_bytes is not None and total >= max_bytes:
                limited = True
                break
        evicted = after_seq < self.evicted_through_seq and bool(taken)
        return OutputSlice(taken, limited, taken[0].seq if evicted else None)

    def payloads(self) -> Iterator[bytes]:
        """The retained payloads, oldest first."""
        return (chunk.chunk for chunk in self._chunks[self._head :])

    @property
    def held_bytes(self) -> int:
        """Payload bytes the log still references (retained and not yet compacted)."""
        return sum(len(chunk.chunk) for chunk in self._chunks)

    @property
    def retained_bytes(self) -> int:
        return self._bytes

    @property
    def chunk_count(self) -> int:
        return len(self._chunks) - self._head
