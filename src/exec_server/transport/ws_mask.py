"""Unmasking a websocket frame's payload in place (RFC 6455 5.3), with ordinary stores.

picows unmasks inbound frames with non-temporal stores: the payload is written past the
caches, and whoever reads it next (the kernel copying it out to another socket) reads
it back from memory. Here the XOR runs in aiohttp's compiled helper (aiohttp is a
dependency, pinned in ``uv.lock``), eight bytes at a time, and leaves the payload in the
cache. The helper is aiohttp's private API: ``tests/rendezvous/test_ws_reader.py`` pins its
behaviour, and a pure-Python XOR takes over if it ever goes away.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import cast

__all__ = ["mask_in_place", "unchecked_mask"]


def _mask_in_place_python(key: bytes, data: bytearray) -> None:
    size = len(data)
    if not size:
        return
    repeated = (key * (size // 4 + 1))[:size]
    data[:] = (int.from_bytes(data, "little") ^ int.from_bytes(repeated, "little")).to_bytes(
        size, "little"
    )


def _compiled_mask() -> Callable[[bytes, bytearray], None]:
    try:
        from aiohttp._websocket.mask import _websocket_mask_cython  # type: ignore[import-not-found]
    except ImportError:  # pragma: no cover - aiohttp without its compiled helpers
        return _mask_in_place_python
    return cast(Callable[[bytes, bytearray], None], _websocket_mask_cython)


unchecked_mask = _mask = _compiled_mask()
"""What :func:`mask_in_place` runs, for callers whose key is 4 bytes by construction
(a hot path saves the check)."""


def mask_in_place(key: bytes, data: bytearray) -> None:
    """XOR all of ``data`` with the 4-byte masking ``key`` repeated (masking and
    unmasking are the same operation)."""
    if len(key) != 4:
        raise ValueError("a websocket masking key is 4 bytes")
    _mask(key, data)
