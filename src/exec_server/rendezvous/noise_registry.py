"""The registry side of Codex's Noise relay contract (``security_profile:
"noise_hybrid_ik_v1"``, codex-0171.md §3.3): executor keys, harness key authorizations.

The rendezvous never holds a private key and never sees plaintext: it stores each
environment's registered public key, hands it to harnesses, and vouches for harness keys.

``POST /cloud/environment/{id}/register`` with
``{"security_profile": "noise_hybrid_ik_v1", "executor_public_key": NoiseChannelPublicKey}``
    records the key under an ``executor_registration_id`` (``reg_`` + 22 base64url
    characters). Re-registering the same key keeps the id (a Codex executor re-registers
    with its one process key after an upgrade refusal); a new key gets a new id, which
    invalidates every authorization issued for the old one.
``POST .../connect`` with ``{"harness_public_key": NoiseChannelPublicKey}``
    returns the bundle: ``executor_public_key``, ``executor_registration_id``, a
    ``harness_key_authorization`` and the harness websocket URL.
``POST .../validate`` with ``{"executor_registration_id", "harness_public_key",
"harness_key_authorization"}`` (and ``x-codex-noise-stream-id``) answers
``{"valid": bool}`` (plus a ``reason`` when false).

A harness key authorization is ``v1.<expiry>.<nonce>.<mac>``: expiry in Unix seconds,
16 random bytes of nonce and ``HMAC-SHA256(key, message)`` (both base64url, unpadded),
where ``key = HMAC-SHA256(rendezvous secret, "exec-server-harness-key-authorization/v1")``
and ``message`` joins with newlines: the scheme, the environment id, the registration id,
SHA-256 of the harness public key (X25519 || ML-KEM bytes, hex), the expiry, the nonce,
and this process's random epoch. So an authorization:

* cannot be made without the rendezvous secret (forged -> ``invalid_signature``);
* is good for one environment, one registration and one harness key only
  (``wrong_environment`` / ``wrong_registration`` / ``wrong_key`` all look like a bad
  signature from outside, and are reported as ``invalid_signature``);
* expires ``authorization_lifetime_s`` after ``/connect`` (``expired``);
* is accepted once: the first ``/validate`` consumes its nonce, whatever the stream
  (``replayed``); the stream id is recorded with it. Codex's harness fetches a fresh
  bundle for every connection attempt, so single use costs it nothing;
* dies with the process that issued it (the epoch), since the consumed-nonce set is not
  persisted; harnesses simply ``/connect`` again.

Time is an argument everywhere; this module does no I/O except through the store.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from .errors import RendezvousError

if TYPE_CHECKING:
    # Imported where used: ``cryptography`` costs ~0.1 s of start-up, which every CLI
    # command would pay through the rendezvous import (the stdio server included).
    from ..relay.noise import NoisePublicKey

__all__ = [
    "DEFAULT_AUTHORIZATION_LIFETIME_S",
    "MAX_TRACKED_AUTHORIZATIONS",
    "SECURITY_PROFILE",
    "AuthorizationRefused",
    "HarnessKeyAuthorizer",
    "NoiseRegistration",
    "NoiseRegistry",
    "RefusalReason",
    "RegistryRefusal",
    "new_registration_id",
]

SECURITY_PROFILE = "noise_hybrid_ik_v1"
"""The only ``security_profile`` of Codex's Noise contract."""

DEFAULT_AUTHORIZATION_LIFETIME_S = 60.0
"""How long a harness has between ``/connect`` and the executor's ``/validate``."""

MAX_TRACKED_AUTHORIZATIONS = 100_000
"""Consumed nonces remembered until they expire; past this, validations fail closed."""

AUTHORIZATION_SCHEME = "exec-server-harness-key-authorization/v1"
_TOKEN_PATTERN = re.compile(r"^v1\.([0-9]{1,12})\.([A-Za-z0-9_-]{22})\.([A-Za-z0-9_-]{43})$")


class RefusalReason(StrEnum):
    """Why ``/validate`` said no; stable strings, usable as metric labels."""

    MALFORMED = "malformed"
    INVALID_SIGNATURE = "invalid_signature"
    EXPIRED = "expired"
    REPLAYED = "replayed"
    UNKNOWN_REGISTRATION = "unknown_registration"
    BUSY = "busy"


class AuthorizationRefused(RendezvousError):
    def __init__(self, reason: RefusalReason, detail: str) -> None:
        super().__init__(f"harness key authorization refused ({reason.value}): {detail}")
        self.reason = reason


class RegistryRefusal(RendezvousError):
    """An HTTP error answer (``status``, ``{"error": {"code", "message"}}``)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        return b""


def new_registration_id() -> str:
    return "reg_" + _b64(secrets.token_bytes(16))


def key_digest(key: NoisePublicKey) -> str:
    return hashlib.sha256(key.x25519 + key.mlkem768).hexdigest()


class HarnessKeyAuthorizer:
    """Issues and checks harness key authorizations (see the module docstring)."""

    def __init__(
        self,
        secret: bytes,
        *,
        lifetime_s: float = DEFAULT_AUTHORIZATION_LIFETIME_S,
        max_tracked: int = MAX_TRACKED_AUTHORIZATIONS,
        epoch: str | None = None,
    ) -> None:
        if len(secret) < 16:
            raise ValueError("the authorization secret must be at least 16 bytes")
        if lifetime_s <= 0:
            raise ValueError("lifetime_s must be positive")
        self._key = hmac.digest(secret, AUTHORIZATION_SCHEME.encode(), "sha256")
        self._epoch = epoch if epoch is not None else _b64(secrets.token_bytes(16))
        self.lifetime_s = lifetime_s
        self._max_tracked = max_tracked
        self._consumed: dict[str, tuple[int, str]] = {}  # nonce -> (expiry, stream id)

    def __repr__(self) -> str:
        return f"HarnessKeyAuthorizer(lifetime_s={self.lifetime_s}, consumed={len(self._consumed)})"

    def _mac(
        self,
        environment_id: str,
        registration_id: str,
        key: NoisePublicKey,
        expiry: str,
        nonce: str,
    ) -> bytes:
        message = "\n".join(
            (
                AUTHORIZATION_SCHEME,
                environment_id,
                registration_id,
                key_digest(key),
                expiry,
                nonce,
                self._epoch,
            )
        )
        return hmac.digest(self._key, message.encode(), "sha256")

    def issue(
        self, environment_id: str, registration_id: str, harness_key: NoisePublicKey, now: float
    ) -> str:
        expiry = str(int(now + self.lifetime_s) + 1)
        nonce = _b64(secrets.token_bytes(16))
        mac = self._mac(environment_id, registration_id, harness_key, expiry, nonce)
        return f"v1.{expiry}.{nonce}.{_b64(mac)}"

    def verify(
        self,
        authorization: str,
        *,
        environment_id: str,
        registration_id: str,
        harness_key: NoisePublicKey,
        stream_id: str,
        now: float,
    ) -> None:
        """Accept (and consume) ``authorization`` or raise :class:`AuthorizationRefused`."""
        match = _TOKEN_PATTERN.match(authorization)
        if match is None:
            raise AuthorizationRefused(RefusalReason.MALFORMED, "not a v1 authorization")
        expiry, nonce, mac = match.groups()
        expected = self._mac(environment_id, registration_id, harness_key, expiry, nonce)
        if not hmac.compare_digest(expected, _unb64(mac)):
            raise AuthorizationRefused(
                RefusalReason.INVALID_SIGNATURE,
                "not issued by this rendezvous for this environment, registration and key",
            )
        if now >= int(expiry):
            raise AuthorizationRefused(RefusalReason.EXPIRED, "the authorization has expired")
        self._prune(now)
        if nonce in self._consumed:
            raise AuthorizationRefused(RefusalReason.REPLAYED, "the authorization was used")
        if len(self._consumed) >= self._max_tracked:
            raise AuthorizationRefused(RefusalReason.BUSY, "too many live authorizations")
        self._consumed[nonce] = (int(expiry), stream_id)

    def _prune(self, now: float) -> None:
        if not self._consumed:
            return
        # Nonces are inserted in roughly increasing expiry order; stop at the first live one.
        expired = []
        for nonce, (expiry, _) in self._consumed.items():
            if expiry > now:
                break
            expired.append(nonce)
        for nonce in expired:
            del self._consumed[nonce]


@dataclass(frozen=True, slots=True)
class NoiseRegistration:
    environment_id: str
    registration_id: str
    executor_key: NoisePublicKey


def _parse_key(body: dict[str, Any], field: str) -> NoisePublicKey:
    from ..relay.noise import NoiseKeyError, NoisePublicKey

    if field not in body:
        raise RegistryRefusal(400, "invalid_request", f"missing {field}")
    try:
        return NoisePublicKey.from_json_obj(body[field])
    except NoiseKeyError as exc:
        raise RegistryRefusal(400, f"invalid_{field}", str(exc)) from None


def _only(body: dict[str, Any], allowed: set[str]) -> None:
    unknown = set(body) - allowed
    if unknown:
        raise RegistryRefusal(
            400, "invalid_request", f"unknown field(s): {', '.join(sorted(unknown)[:4])}"
        )


class NoiseRegistry:
    """Registered executor keys (memory, plus the store when it persists them) and the
    authorizer. The HTTP handlers in :mod:`~exec_server.rendezvous.server` call it."""

    def __init__(self, authorizer: HarnessKeyAuthorizer) -> None:
        self.authorizer = authorizer
        self._registrations: dict[str, NoiseRegistration] = {}

    def registration(self, environment_id: str) -> NoiseRegistration | None:
        return self._registrations.get(environment_id)

    def restore(self, registration: NoiseRegistration) -> None:
        """Adopt a registration read back from the store."""
        self._registrations.setdefault(registration.environment_id, registration)

    def forget(self, environment_id: str) -> bool:
        """A legacy (cleartext) registration replaced this environment's Noise one."""
        return self._registrations.pop(environment_id, None) is not None

    def register(self, environment_id: str, body: dict[str, Any]) -> NoiseRegistration:
        """Parse a Noise ``/register`` body and record the key."""
        _only(body, {"security_profile", "executor_public_key", "name"})
        if body.get("security_profile") != SECURITY_PROFILE:
            raise RegistryRefusal(
                400,
                "unsupported_security_profile",
                f"security_profile must be {SECURITY_PROFILE!r}",
            )
        key = _parse_key(body, "executor_public_key")
        old = self._registrations.get(environment_id)
        registration_id = (
            old.registration_id if old is not None and old.executor_key == key else None
        ) or new_registration_id()
        registration = NoiseRegistration(environment_id, registration_id, key)
        self._registrations[environment_id] = registration
        return registration

    def connect(
        self, environment_id: str, body: dict[str, Any], now: float
    ) -> tuple[NoiseRegistration, str]:
        """Parse a Noise ``/connect`` body: the registration and a fresh authorization."""
        _only(body, {"harness_public_key"})
        key = _parse_key(body, "harness_public_key")
        registration = self._registrations.get(environment_id)
        if registration is None:
            raise RegistryRefusal(
                409,
                "no_noise_registration",
                f"environment {environment_id!r} has no Noise registration: it is unknown, "
                "or it registered for the legacy cleartext relay",
            )
        authorization = self.authorizer.issue(
            environment_id, registration.registration_id, key, now
        )
        return registration, authorization

    def validate(
        self, environment_id: str, body: dict[str, Any], stream_id: str, now: float
    ) -> None:
        """Check a ``/validate`` body; raise :class:`AuthorizationRefused` on a no."""
        _only(body, {"executor_registration_id", "harness_public_key", "harness_key_authorization"})
        registration_id = body.get("executor_registration_id")
        authorization = body.get("harness_key_authorization")
        if not isinstance(registration_id, str) or not isinstance(authorization, str):
            raise RegistryRefusal(
                400,
                "invalid_request",
                "executor_registration_id and harness_key_authorization must be strings",
            )
        key = _parse_key(body, "harness_public_key")
        registration = self._registrations.get(environment_id)
        if registration is None or not hmac.compare_digest(
            registration.registration_id.encode(), registration_id.encode()
        ):
            raise AuthorizationRefused(
                RefusalReason.UNKNOWN_REGISTRATION,
                "not the environment's current executor registration",
            )
        self.authorizer.verify(
            authorization,
            environment_id=environment_id,
            registration_id=registration_id,
            harness_key=key,
            stream_id=stream_id,
            now=now,
        )
