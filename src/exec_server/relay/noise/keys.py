"""Noise static identities and the ``NoiseChannelPublicKey`` JSON.

A :class:`NoiseIdentity` is one X25519 key pair plus one ML-KEM-768 key pair. An
environment (responder) makes one per process and registers its public half; a harness
(initiator) makes one per connection attempt and sends its public half to ``/connect``.
Private keys never leave the object: ``repr`` shows a fingerprint of the public key only,
and there is no accessor for the private bytes.

:class:`NoisePublicKey` is the public half, with the strict JSON form Codex uses
(``#[serde(deny_unknown_fields)]``)::

    {"suite": "Noise_hybridIK_X25519+MLKEM768_AESGCM_SHA256",
     "x25519_public_key": "<standard base64 with padding, 32 bytes>",
     "mlkem768_public_key": "<standard base64 with padding, 1184 bytes>"}

Parsing refuses unknown or missing fields, another suite, non-canonical base64 and wrong
lengths, each with :class:`~exec_server.relay.noise.errors.NoiseKeyError`.

:class:`KeySource` is where the handshake gets fresh randomness (ephemeral keys, KEM
encapsulations). :data:`SYSTEM_KEY_SOURCE` uses the OS generator through ``cryptography``;
tests inject a scripted one to replay a fixed transcript.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from dataclasses import dataclass
from typing import Any, Protocol

from cryptography.hazmat.primitives.asymmetric.mlkem import (
    MLKEM768PrivateKey,
    MLKEM768PublicKey,
)
from cryptography.hazmat.primitives.asymmetric.x25519 import (
    X25519PrivateKey,
    X25519PublicKey,
)

from exec_server.relay.noise.errors import NoiseKeyError

__all__ = [
    "MLKEM768_CIPHERTEXT_BYTES",
    "MLKEM768_PUBLIC_KEY_BYTES",
    "MLKEM768_SEED_BYTES",
    "MLKEM768_SHARED_SECRET_BYTES",
    "NOISE_CHANNEL_SUITE",
    "SYSTEM_KEY_SOURCE",
    "X25519_KEY_BYTES",
    "KeySource",
    "NoiseIdentity",
    "NoisePublicKey",
    "SystemKeySource",
]

NOISE_CHANNEL_SUITE = "Noise_hybridIK_X25519+MLKEM768_AESGCM_SHA256"
"""The suite tag in the key JSON (not the Noise protocol name, which says ``25519``)."""

X25519_KEY_BYTES = 32
MLKEM768_PUBLIC_KEY_BYTES = 1184
MLKEM768_CIPHERTEXT_BYTES = 1088
MLKEM768_SHARED_SECRET_BYTES = 32
MLKEM768_SEED_BYTES = 64
"""An ML-KEM-768 private key as FIPS 203 seed ``d || z``."""

_KEY_FIELDS = frozenset({"suite", "x25519_public_key", "mlkem768_public_key"})
_MAX_KEY_JSON_BYTES = 8192


def _b64decode_strict(value: object, field: str, length: int) -> bytes:
    if not isinstance(value, str):
        raise NoiseKeyError(f"{field} must be a base64 string")
    try:
        raw = base64.b64decode(value.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raise NoiseKeyError(f"{field} is not standard padded base64") from None
    # b64decode(validate=True) still accepts non-zero trailing bits; re-encoding
    # catches those and missing padding, so one key has exactly one spelling.
    if base64.b64encode(raw).decode("ascii") != value:
        raise NoiseKeyError(f"{field} is not canonical standard padded base64")
    if len(raw) != length:
        raise NoiseKeyError(f"{field} must decode to {length} bytes, not {len(raw)}")
    return raw


@dataclass(frozen=True, slots=True)
class NoisePublicKey:
    """The public half of a :class:`NoiseIdentity`: raw X25519 and ML-KEM-768 keys."""

    x25519: bytes
    mlkem768: bytes

    def __post_init__(self) -> None:
        if len(self.x25519) != X25519_KEY_BYTES:
            raise NoiseKeyError(f"an X25519 public key is {X25519_KEY_BYTES} bytes")
        if len(self.mlkem768) != MLKEM768_PUBLIC_KEY_BYTES:
            raise NoiseKeyError(f"an ML-KEM-768 public key is {MLKEM768_PUBLIC_KEY_BYTES} bytes")

    def __repr__(self) -> str:
        return f"NoisePublicKey({self.fingerprint})"

    @property
    def fingerprint(self) -> str:
        """First 16 hex digits of SHA-256 over both keys: enough to tell keys apart in a
        log line, never the key itself."""
        return hashlib.sha256(self.x25519 + self.mlkem768).hexdigest()[:16]

    def to_json_obj(self) -> dict[str, str]:
        """The ``NoiseChannelPublicKey`` object."""
        return {
            "suite": NOISE_CHANNEL_SUITE,
            "x25519_public_key": base64.b64encode(self.x25519).decode("ascii"),
            "mlkem768_public_key": base64.b64encode(self.mlkem768).decode("ascii"),
        }

    def to_json(self) -> str:
        return json.dumps(self.to_json_obj(), separators=(",", ":"))

    @classmethod
    def from_json_obj(cls, obj: object) -> NoisePublicKey:
        """Parse a decoded ``NoiseChannelPublicKey`` object, strictly."""
        if not isinstance(obj, dict):
            raise NoiseKeyError("a Noise public key must be a JSON object")
        keys = set(obj)
        unknown = keys - _KEY_FIELDS
        if unknown:
            raise NoiseKeyError(f"unknown field(s) in Noise public key: {sorted(unknown)[:4]}")
        missing = _KEY_FIELDS - keys
        if missing:
            raise NoiseKeyError(f"missing field(s) in Noise public key: {sorted(missing)}")
        if obj["suite"] != NOISE_CHANNEL_SUITE:
            raise NoiseKeyError("unsupported Noise channel suite")
        x25519 = _b64decode_strict(obj["x25519_public_key"], "x25519_public_key", 32)
        mlkem = _b64decode_strict(
            obj["mlkem768_public_key"], "mlkem768_public_key", MLKEM768_PUBLIC_KEY_BYTES
        )
        return cls(x25519, mlkem)

    @classmethod
    def from_json(cls, text: str | bytes) -> NoisePublicKey:
        if len(text) > _MAX_KEY_JSON_BYTES:
            raise NoiseKeyError("Noise public key JSON is too large")
        try:
            obj: Any = json.loads(text)
        except ValueError:
            raise NoiseKeyError("Noise public key is not valid JSON") from None
        return cls.from_json_obj(obj)

    def x25519_key(self) -> X25519PublicKey:
        return X25519PublicKey.from_public_bytes(self.x25519)

    def mlkem768_key(self) -> MLKEM768PublicKey:
        try:
            return MLKEM768PublicKey.from_public_bytes(self.mlkem768)
        except ValueError:
            raise NoiseKeyError("invalid ML-KEM-768 public key") from None


class NoiseIdentity:
    """A static Noise key pair (X25519 + ML-KEM-768). Keep one per process (environment)
    or per connection (harness); never log, pickle or copy it out."""

    __slots__ = ("_mlkem", "_public", "_x25519")

    def __init__(self, x25519: X25519PrivateKey, mlkem768: MLKEM768PrivateKey) -> None:
        self._x25519 = x25519
        self._mlkem = mlkem768
        self._public = NoisePublicKey(
            x25519.public_key().public_bytes_raw(), mlkem768.public_key().public_bytes_raw()
        )

    @classmethod
    def generate(cls) -> NoiseIdentity:
        """A fresh identity from the OS random generator."""
        return cls(X25519PrivateKey.generate(), MLKEM768PrivateKey.generate())

    @classmethod
    def from_private_bytes(cls, x25519: bytes, mlkem768_seed: bytes) -> NoiseIdentity:
        """An identity from raw private material (32-byte X25519 scalar, 64-byte ML-KEM
        seed ``d || z``): for fixed test keys and for keys kept in a secret store."""
        if len(x25519) != X25519_KEY_BYTES or len(mlkem768_seed) != MLKEM768_SEED_BYTES:
            raise NoiseKeyError("expected a 32-byte X25519 key and a 64-byte ML-KEM-768 seed")
        return cls(
            X25519PrivateKey.from_private_bytes(x25519),
            MLKEM768PrivateKey.from_seed_bytes(mlkem768_seed),
        )

    @property
    def public_key(self) -> NoisePublicKey:
        return self._public

    def __repr__(self) -> str:
        return f"NoiseIdentity(public={self._public.fingerprint})"

    def __reduce__(self) -> Any:
        raise TypeError("a NoiseIdentity holds private keys and cannot be pickled")

    # Used by the handshake only (same package).
    def _dh(self, peer: X25519PublicKey) -> bytes:
        return _x25519_exchange(self._x25519, peer)

    def _decapsulate(self, ciphertext: bytes) -> bytes:
        return self._mlkem.decapsulate(ciphertext)


def _x25519_exchange(private: X25519PrivateKey, peer: X25519PublicKey) -> bytes:
    try:
        return private.exchange(peer)
    except ValueError:  # an all-zero result: the peer sent a low-order point
        raise NoiseKeyError("X25519 exchange with a low-order public key") from None


class KeySource(Protocol):
    """Fresh randomness for one handshake."""

    def x25519_private_key(self) -> X25519PrivateKey: ...

    def mlkem768_private_key(self) -> MLKEM768PrivateKey: ...

    def encapsulate(self, public_key: MLKEM768PublicKey) -> tuple[bytes, bytes]:
        """``(shared_secret, ciphertext)`` for ``public_key``."""
        ...


class SystemKeySource:
    """:class:`KeySource` backed by the OS random generator."""

    def x25519_private_key(self) -> X25519PrivateKey:
        return X25519PrivateKey.generate()

    def mlkem768_private_key(self) -> MLKEM768PrivateKey:
        return MLKEM768PrivateKey.generate()

    def encapsulate(self, public_key: MLKEM768PublicKey) -> tuple[bytes, bytes]:
        return public_key.encapsulate()


SYSTEM_KEY_SOURCE = SystemKeySource()
