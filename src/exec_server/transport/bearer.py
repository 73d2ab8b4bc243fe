"""``Authorization: Bearer`` checking, shared by the environment's and the
rendezvous's HTTP servers."""

from __future__ import annotations

import hmac


def bearer_matches(header: str | None, token: str) -> bool:
    """Whether an ``Authorization`` header is ``Bearer <token>`` (constant-time compare)."""
    if header is None:
        return False
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(value.strip().encode(), token.encode())
