"""Test support: the ``stream_id`` of an encoded relay frame, without validating it.

The test forwarders route whatever bytes they get (garbage included, to see what the
endpoints make of it), so they cannot use ``decode_route``, which refuses invalid frames.
"""

from __future__ import annotations


def peek_stream_id(data: bytes) -> str | None:
    """``stream_id`` (field 2) of an encoded frame, or ``None``: walks the protobuf fields
    up to field 2 without decoding or validating the rest."""
    pos, end = 0, len(data)
    try:
        while pos < end:
            tag, pos = _varint(data, pos)
            field_no, wire = tag >> 3, tag & 7
            if wire == 0:
                _, pos = _varint(data, pos)
            elif wire == 2:
                length, pos = _varint(data, pos)
                if field_no == 2:
                    return data[pos : pos + length].decode()
                pos += length
            elif wire in (1, 5):
                pos += 8 if wire == 1 else 4
            else:
                return None
    except (IndexError, UnicodeDecodeError):
        return None
    return None


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7
        if shift > 63:
            raise IndexError("varint too long")
