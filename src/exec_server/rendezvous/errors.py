"""The rendezvous layer's exception hierarchy.

Everything :mod:`exec_server.rendezvous` raises derives from :class:`RendezvousError`.
Inbound websocket traffic raises only :class:`SocketProtocolError`, which the server
turns into closing that one socket; frames that are valid but cannot be routed are
dropped and counted (see :class:`~exec_server.rendezvous.router.DropReason`). The other
exceptions reach callers only from calls they make (verifying a URL, reading
credentials, starting the server) and from the HTTP handlers, which map them to
``{"error": {"code", "message"}}``.
"""

from __future__ import annotations

from enum import StrEnum


class RendezvousError(Exception):
    """Base class of every error raised by :mod:`exec_server.rendezvous`."""


class UrlRejectReason(StrEnum):
    """Why a signed rendezvous URL was refused; stable strings, usable as metric labels."""

    MISSING_SIGNATURE = "missing_signature"
    """One of ``role``, ``exp``, ``nonce`` or ``sig`` is absent from the query."""
    MALFORMED = "malformed"
    """A parameter is present but not well formed (repeated, not an integer, bad base64)."""
    INVALID_SIGNATURE = "invalid_signature"
    """The HMAC does not match: forged, tampered with, or signed with another secret."""
    EXPIRED = "expired"
    """The signature is valid but ``exp`` is in the past."""

    @property
    def http_status(self) -> int:
        """401 for what re-registering fixes (missing, malformed, expired); 403 for forgeries."""
        return 403 if self is UrlRejectReason.INVALID_SIGNATURE else 401


class UrlRejected(RendezvousError):
    """A websocket URL failed verification; the upgrade is refused with ``http_status``."""

    def __init__(self, reason: UrlRejectReason, detail: str) -> None:
        super().__init__(f"rendezvous URL rejected ({reason.value}): {detail}")
        self.reason = reason
        self.detail = detail


class CredentialError(RendezvousError):
    """The bearer token or the URL-signing secret cannot be read or created."""


class SocketProtocolError(RendezvousError):
    """A relay socket broke the protocol (an invalid frame); the server closes it with
    ``close_code`` and ``message`` (short, no payload bytes) and counts ``reason``."""

    def __init__(self, close_code: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.close_code = close_code
        self.reason = reason
        self.message = message
