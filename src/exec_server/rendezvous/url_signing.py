"""Signed, expiring rendezvous websocket URLs: the only credential a relay socket carries.

Codex's executor and harness open their relay websocket with no auth header at all
(codex-observed.md §3.1, §5), so the grant lives in the URL::

    ws://HOST:PORT/relay/<environment_id>?role=<role>&exp=<unix s>&nonce=<n>&sig=<s>

* ``role`` is ``environment`` or ``harness``; it must stay in the query because the real
  Codex harness picks the relay protocol when its URL query contains ``role=harness``.
* ``exp`` is the expiry, integer Unix seconds (wall clock, so URLs survive a restart).
* ``nonce`` is 16 random bytes, base64url without padding. It identifies one issued URL:
  the router lets a harness socket re-claim its streams only with the same nonce.
* ``sig`` is base64url(HMAC-SHA256(secret, message)), no padding, where ``message`` is
  the UTF-8 of ``"exec-server-rendezvous-url/v1\\n" + role + "\\n" + environment_id +
  "\\n" + exp + "\\n" + nonce``. Every part is from a newline-free alphabet, so the
  encoding is unambiguous; the version prefix keeps other uses of the secret apart.

Verification recomputes the HMAC and compares with :func:`hmac.compare_digest` (constant
time) *before* looking at the expiry, so an unauthenticated caller learns nothing but
"refused". Extra query parameters are ignored; repeated ones are malformed. Time is an
argument (``now``, Unix seconds), never read here.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import math
import re
import secrets
from dataclasses import dataclass
from enum import StrEnum
from urllib.parse import parse_qs, quote, unquote, urlencode, urlsplit

from .errors import UrlRejected, UrlRejectReason

__all__ = [
    "MIN_SECRET_BYTES",
    "NONCE_BYTES",
    "RELAY_PATH_PREFIX",
    "SECRET_BYTES",
    "SIGNATURE_SCHEME",
    "SignedGrant",
    "UrlRole",
    "UrlSigner",
    "new_nonce",
    "sign_url",
    "verify_url",
    "websocket_base_url",
]

SIGNATURE_SCHEME = "exec-server-rendezvous-url/v1"
"""Domain-separation prefix of every signed message (bump to invalidate old URLs)."""

SECRET_BYTES = 32
"""Length of a generated signing secret (the HMAC-SHA256 block-size-appropriate key)."""

MIN_SECRET_BYTES = 16
"""Shortest secret :class:`UrlSigner` accepts."""

NONCE_BYTES = 16
"""Random bytes in a generated nonce (22 base64url characters)."""

RELAY_PATH_PREFIX = "/relay/"
"""Path of the relay websocket, followed by the environment id."""

_SIGNATURE_BYTES = hashlib.sha256().digest_size
_NONCE_PATTERN = re.compile(r"^[A-Za-z0-9_-]{16,128}$")
_EXPIRY_PATTERN = re.compile(r"^[0-9]{1,12}$")
_SIGNED_KEYS = ("role", "exp", "nonce", "sig")


class UrlRole(StrEnum):
    """Which end of the relay a URL admits."""

    ENVIRONMENT = "environment"
    HARNESS = "harness"


@dataclass(frozen=True, slots=True)
class SignedGrant:
    """What a verified URL grants: one role, for one environment, until ``expires_at``."""

    role: UrlRole
    environment_id: str
    expires_at: int
    """Unix seconds."""
    nonce: str


def new_nonce() -> str:
    """A fresh random nonce (base64url, no padding)."""
    return _b64(secrets.token_bytes(NONCE_BYTES))


def websocket_base_url(http_base_url: str) -> str:
    """``http://h:p[/prefix]`` -> ``ws://h:p[/prefix]`` (https -> wss), no trailing ``/``."""
    parts = urlsplit(http_base_url.strip())
    scheme = {"http": "ws", "https": "wss", "ws": "ws", "wss": "wss"}.get(parts.scheme)
    if scheme is None or not parts.netloc:
        raise ValueError(f"expected an http(s):// or ws(s):// base URL, got {http_base_url!r}")
    return f"{scheme}://{parts.netloc}{parts.path.rstrip('/')}"


class UrlSigner:
    """Signs and verifies relay URLs with one server secret."""

    def __init__(self, secret: bytes) -> None:
        if len(secret) < MIN_SECRET_BYTES:
            raise ValueError(f"the URL-signing secret must be at least {MIN_SECRET_BYTES} bytes")
        self._secret = secret

    def signature(self, role: UrlRole, environment_id: str, expires_at: int, nonce: str) -> str:
        """The ``sig`` value for these claims."""
        return _b64(self._mac(role.value, environment_id, str(expires_at), nonce))

    def _mac(self, role: str, environment_id: str, expires_at: str, nonce: str) -> bytes:
        message = "\n".join((SIGNATURE_SCHEME, role, environment_id, expires_at, nonce))
        return hmac.new(self._secret, message.encode(), hashlib.sha256).digest()

    def sign(
        self,
        websocket_base: str,
        role: UrlRole,
        environment_id: str,
        *,
        lifetime_s: float,
        now: float,
        nonce: str | None = None,
    ) -> str:
        """A signed URL under ``websocket_base`` (``ws://host:port[/prefix]``) valid for
        ``lifetime_s`` seconds from ``now`` (rounded up to a whole second)."""
        if lifetime_s <= 0:
            raise ValueError("lifetime_s must be positive")
        nonce = nonce if nonce is not None else new_nonce()
        if not _NONCE_PATTERN.match(nonce):
            raise ValueError("nonce must be 16-128 base64url characters")
        expires_at = math.ceil(now + lifetime_s)
        query = urlencode(
            {
                "role": role.value,
                "exp": str(expires_at),
                "nonce": nonce,
                "sig": self.signature(role, environment_id, expires_at, nonce),
            }
        )
        path = RELAY_PATH_PREFIX + quote(environment_id, safe="")
        return f"{websocket_base.rstrip('/')}{path}?{query}"

    def verify(self, environment_id: str, query_string: str, *, now: float) -> SignedGrant:
        """Check the query of a relay URL whose path named ``environment_id``.

        Raises :class:`UrlRejected` (and nothing else) when a parameter is missing or
        malformed, the signature does not match, or the URL has expired.
        """
        try:
            params = parse_qs(query_string, keep_blank_values=True, strict_parsing=False)
        except ValueError:
            raise UrlRejected(UrlRejectReason.MALFORMED, "unparseable query") from None
        missing = [key for key in _SIGNED_KEYS if key not in params]
        if missing:
            raise UrlRejected(
                UrlRejectReason.MISSING_SIGNATURE, f"missing {', '.join(missing)} in the URL"
            )
        values: dict[str, str] = {}
        for key in _SIGNED_KEYS:
            if len(params[key]) != 1:
                raise UrlRejected(UrlRejectReason.MALFORMED, f"{key} is repeated")
            values[key] = params[key][0]
        role, expiry, nonce, sig = (values[key] for key in _SIGNED_KEYS)
        if not _EXPIRY_PATTERN.match(expiry) or not _NONCE_PATTERN.match(nonce):
            raise UrlRejected(UrlRejectReason.MALFORMED, "exp or nonce is not well formed")
        presented = _unb64(sig)
        if presented is None or len(presented) != _SIGNATURE_BYTES:
            raise UrlRejected(UrlRejectReason.MALFORMED, "sig is not a base64url HMAC-SHA256")
        # The role is covered by the MAC, so an unknown role can only fail the comparison;
        # computing the MAC for it anyway keeps one code path for every forgery.
        expected = self._mac(role, environment_id, expiry, nonce)
        if not hmac.compare_digest(expected, presented):
            raise UrlRejected(UrlRejectReason.INVALID_SIGNATURE, "signature does not match")
        expires_at = int(expiry)
        if now >= expires_at:
            raise UrlRejected(UrlRejectReason.EXPIRED, "the URL has expired; register again")
        try:
            url_role = UrlRole(role)
        except ValueError:  # only reachable if someone signed a bogus role with our secret
            raise UrlRejected(UrlRejectReason.MALFORMED, f"unknown role {role!r}") from None
        return SignedGrant(url_role, environment_id, expires_at, nonce)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes | None:
    if not re.fullmatch(r"[A-Za-z0-9_-]*", text):
        return None
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        return None


def sign_url(
    secret: bytes,
    websocket_base: str,
    role: UrlRole,
    environment_id: str,
    *,
    lifetime_s: float,
    now: float,
    nonce: str | None = None,
) -> str:
    """One-shot :meth:`UrlSigner.sign`."""
    return UrlSigner(secret).sign(
        websocket_base, role, environment_id, lifetime_s=lifetime_s, now=now, nonce=nonce
    )


def verify_url(secret: bytes, url: str, *, now: float) -> SignedGrant:
    """One-shot :meth:`UrlSigner.verify` of a whole URL (``.../relay/<id>?...``)."""
    parts = urlsplit(url)
    _, separator, environment_id = parts.path.rpartition(RELAY_PATH_PREFIX)
    if not separator or not environment_id:
        raise UrlRejected(UrlRejectReason.MALFORMED, "not a relay URL")
    return UrlSigner(secret).verify(unquote(environment_id), parts.query, now=now)
