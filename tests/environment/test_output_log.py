"""OutputLog (environment/output_log.py): retention, eviction, reads. No processes."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from exec_server.environment.output_log import MIN_ACCOUNTED_CHUNK_BYTES, OutputLog
from exec_server.protocol.messages import ProcessOutputChunk


def fill(log: OutputLog, sizes: list[int], first_seq: int = 1) -> list[ProcessOutputChunk]:
    chunks = [
        ProcessOutputChunk(seq=first_seq + i, stream="stdout", chunk=bytes([i % 256]) * size)
        for i, size in enumerate(sizes)
    ]
    for chunk in chunks:
        log.append(chunk)
    return chunks


def test_reads_whole_chunks_after_a_seq() -> None:
    log = OutputLog(limit_bytes=1024)
    chunks = fill(log, [10, 20, 30])
    read = log.read(after_seq=0)
    assert read.chunks == chunks and not read.limited and read.first_retained_seq is None
    assert log.read(after_seq=1).chunks == chunks[1:]
    assert log.read(after_seq=3).chunks == []
    assert log.read(after_seq=99).chunks == []


def test_max_bytes_counts_whole_chunks_and_always_returns_the_first() -> None:
    log = OutputLog(limit_bytes=1024)
    chunks = fill(log, [10, 20, 30])
    assert log.read(0, max_bytes=1).chunks == chunks[:1]  # the first one always
    read = log.read(0, max_bytes=29)
    assert read.chunks == chunks[:1] and read.limited  # the second would exceed it
    read = log.read(0, max_bytes=30)
    assert read.chunks == chunks[:2] and read.limited  # reached exactly: stop there
    read = log.read(0, max_bytes=1000)
    assert read.chunks == chunks and not read.limited


def test_oldest_chunks_are_evicted_and_reads_say_where_retention_starts() -> None:
    log = OutputLog(limit_bytes=1000)
    chunks = fill(log, [400, 400, 400])
    assert log.retained_bytes == 800 and log.evicted_through_seq == 1
    read = log.read(after_seq=0)
    assert read.chunks == chunks[1:] and read.first_retained_seq == 2
    # A reader that already saw the evicted chunk lost nothing.
    assert log.read(after_seq=1).first_retained_seq is None
    assert log.read(after_seq=0, max_bytes=1).first_retained_seq == 2


def test_the_newest_chunk_stays_even_above_the_limit() -> None:
    log = OutputLog(limit_bytes=1000)
    chunks = fill(log, [10, 5000])
    assert log.read(0).chunks == chunks[1:]
    assert log.retained_bytes == 5000 and log.chunk_count == 1


def test_tiny_chunks_are_bounded_by_count() -> None:
    limit = 16 * MIN_ACCOUNTED_CHUNK_BYTES
    log = OutputLog(limit_bytes=limit)
    fill(log, [1] * 1000)
    assert log.chunk_count == 16
    assert [c.seq for c in log.read(0).chunks] == list(range(985, 1001))


def test_payloads_are_what_is_retained() -> None:
    log = OutputLog(limit_bytes=640)
    fill(log, [300, 300, 300])
    assert list(log.payloads()) == [bytes([1]) * 300, bytes([2]) * 300]


@settings(max_examples=200, deadline=None)
@given(
    limit=st.integers(min_value=1, max_value=4096),
    sizes=st.lists(st.integers(min_value=0, max_value=2048), min_size=1, max_size=300),
    after=st.integers(min_value=0, max_value=310),
    max_bytes=st.none() | st.integers(min_value=0, max_value=8192),
)
def test_log_matches_a_plain_model(
    limit: int, sizes: list[int], after: int, max_bytes: int | None
) -> None:
    """Against the obvious model: keep the newest chunks while within both bounds."""
    log = OutputLog(limit_bytes=limit)
    chunks = fill(log, sizes)
    max_chunks = max(1, limit // MIN_ACCOUNTED_CHUNK_BYTES)
    kept: list[ProcessOutputChunk] = []
    total = 0
    for chunk in reversed(chunks):
        if kept and (total + len(chunk.chunk) > limit or len(kept) >= max_chunks):
            break
        kept.insert(0, chunk)
        total += len(chunk.chunk)
    assert list(log.payloads()) == [c.chunk for c in kept]
    assert log.retained_bytes == total
    assert log.evicted_through_seq == kept[0].seq - 1
    # Memory: what is still referenced stays within 1.25x the limit plus one chunk.
    assert log.held_bytes <= limit + limit // 4 + max(sizes)
    read = log.read(after, max_bytes)
    expected = [c for c in kept if c.seq > after]
    if max_bytes is not None:
        # Whole chunks; stop before one that would exceed max_bytes, or once it is
        # reached (either way the read counts as cut short).
        taken: list[ProcessOutputChunk] = []
        size = 0
        limited = False
        for chunk in expected:
            if taken and size + len(chunk.chunk) > max_bytes:
                limited = True
                break
            taken.append(chunk)
            size += len(chunk.chunk)
            if size >= max_bytes:
                limited = True
                break
        assert read.limited == limited
        expected = taken
    else:
        assert not read.limited
    assert read.chunks == expected
    lost = after < kept[0].seq - 1 and bool(expected)
    assert read.first_retained_seq == (expected[0].seq if lost else None)
