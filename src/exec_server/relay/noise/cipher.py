"""Noise symmetric state and transport cipher states (AES-256-GCM, SHA-256).

The Noise framework's ``CipherState`` and ``SymmetricState`` (Noise spec §5.1-5.2) as
Clatter 2.2 implements them for ``AESGCM_SHA256``, which is what Codex 0.171 links:

* ``HKDF(ck, ikm)``: ``t = HMAC(ck, ikm)``, ``o1 = HMAC(t, 0x01)``,
  ``o2 = HMAC(t, o1 || 0x02)``, ``o3 = HMAC(t, o2 || 0x03)``;
* AES-256-GCM with the 12-byte nonce ``0x00000000 || BE64(n)`` (big-endian: Noise's
  AESGCM rule), associated data ``h`` during the handshake and empty in transport;
* a message (handshake or transport) is at most :data:`MAX_MESSAGE_LEN` bytes.

:class:`NoiseTransport` is the pair of cipher states :meth:`SymmetricState.split` makes:
each direction has its own counter from 0, so records must be decrypted in the order they
were encrypted, and a record must never be re-encrypted (a retry resends the same bytes).
"""

from __future__ import annotations

import hashlib
import hmac

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from exec_server.relay.noise.errors import NoiseHandshakeError, NoiseTransportError

__all__ = [
    "HASH_LEN",
    "MAX_MESSAGE_LEN",
    "MAX_NONCE",
    "TAG_LEN",
    "CipherState",
    "NoiseTransport",
    "SymmetricState",
    "hkdf",
]

HASH_LEN = 32
TAG_LEN = 16
MAX_MESSAGE_LEN = 65535
"""Longest Noise message, handshake or transport (Clatter ``MAX_MESSAGE_LEN``)."""
MAX_NONCE = 2**64 - 1
"""Reserved by Noise: a cipher state refuses to use it (the counter is exhausted)."""

_ZERO_NONCE_PREFIX = b"\x00\x00\x00\x00"


def _hmac(key: bytes, data: bytes) -> bytes:
    return hmac.digest(key, data, "sha256")


def hkdf(chaining_key: bytes, ikm: bytes, outputs: int) -> tuple[bytes, ...]:
    """Noise ``HKDF`` with 2 or 3 outputs of :data:`HASH_LEN` bytes."""
    temp = _hmac(chaining_key, ikm)
    out1 = _hmac(temp, b"\x01")
    out2 = _hmac(temp, out1 + b"\x02")
    if outputs == 2:
        return out1, out2
    return out1, out2, _hmac(temp, out2 + b"\x03")


def _nonce(n: int) -> bytes:
    return _ZERO_NONCE_PREFIX + n.to_bytes(8, "big")


class CipherState:
    """A key (or none yet) and a 64-bit nonce counter."""

    __slots__ = ("_aead", "n")

    def __init__(self, key: bytes | None = None) -> None:
        self._aead = AESGCM(key) if key is not None else None
        self.n = 0

    def __repr__(self) -> str:
        return f"CipherState(keyed={self._aead is not None}, n={self.n})"

    @property
    def has_key(self) -> bool:
        return self._aead is not None

    def initialize_key(self, key: bytes) -> None:
        self._aead = AESGCM(key)
        self.n = 0

    def _next_nonce(self) -> bytes:
        if self.n >= MAX_NONCE:
            raise NoiseTransportError("Noise nonce space exhausted")
        nonce = _nonce(self.n)
        self.n += 1
        return nonce

    def encrypt_with_ad(self, ad: bytes, plaintext: bytes) -> bytes:
        aead = self._aead
        if aead is None:
            return plaintext
        return aead.encrypt(self._next_nonce(), plaintext, ad)

    def decrypt_with_ad(self, ad: bytes, ciphertext: bytes) -> bytes:
        """Decrypt or raise :class:`NoiseTransportError`; on failure the counter does
        not advance (Noise §5.1), though callers give up on the channel anyway."""
        aead = self._aead
        if aead is None:
            return ciphertext
        if self.n >= MAX_NONCE:
            raise NoiseTransportError("Noise nonce space exhausted")
        try:
            plaintext = aead.decrypt(_nonce(self.n), ciphertext, ad)
        except InvalidTag:
            raise NoiseTransportError("Noise message failed authentication") from None
        self.n += 1
        return plaintext


class SymmetricState:
    """``h``, ``ck`` and the handshake cipher state (Noise §5.2)."""

    __slots__ = ("cipher", "ck", "h")

    def __init__(self, protocol_name: bytes) -> None:
        if len(protocol_name) <= HASH_LEN:
            self.h = protocol_name.ljust(HASH_LEN, b"\x00")
        else:
            self.h = hashlib.sha256(protocol_name).digest()
        self.ck = self.h
        self.cipher = CipherState()

    def __repr__(self) -> str:
        return "SymmetricState(<secret>)"

    def mix_hash(self, data: bytes) -> None:
        self.h = hashlib.sha256(self.h + data).digest()

    def mix_key(self, ikm: bytes) -> None:
        self.ck, key = hkdf(self.ck, ikm, 2)
        self.cipher.initialize_key(key)

    def mix_key_and_hash(self, ikm: bytes) -> None:
        self.ck, temp_h, key = hkdf(self.ck, ikm, 3)
        self.mix_hash(temp_h)
        self.cipher.initialize_key(key)

    def encrypt_and_hash(self, plaintext: bytes) -> bytes:
        ciphertext = self.cipher.encrypt_with_ad(self.h, plaintext)
        self.mix_hash(ciphertext)
        return ciphertext

    def decrypt_and_hash(self, ciphertext: bytes) -> bytes:
        try:
            plaintext = self.cipher.decrypt_with_ad(self.h, ciphertext)
        except NoiseTransportError:
            raise NoiseHandshakeError("Noise handshake message failed authentication") from None
        self.mix_hash(ciphertext)
        return plaintext

    def split(self) -> tuple[bytes, bytes]:
        """``(initiator-to-responder key, responder-to-initiator key)``."""
        k1, k2 = hkdf(self.ck, b"", 2)
        return k1, k2


class NoiseTransport:
    """An established channel: one cipher state per direction, implicit nonces.

    ``encrypt`` and ``decrypt`` each consume one nonce; records must be decrypted in the
    order the peer encrypted them. :attr:`handshake_hash` is the final ``h`` (the same
    on both ends: a channel binding for tests and diagnostics)."""

    __slots__ = ("_recv", "_send", "handshake_hash")

    def __init__(self, send_key: bytes, recv_key: bytes, handshake_hash: bytes) -> None:
        self._send = CipherState(send_key)
        self._recv = CipherState(recv_key)
        self.handshake_hash = handshake_hash

    def __repr__(self) -> str:
        return f"NoiseTransport(sent={self._send.n}, received={self._recv.n})"

    @property
    def sent_records(self) -> int:
        return self._send.n

    @property
    def received_records(self) -> int:
        return self._recv.n

    def encrypt(
        self, plaintext: bytes, ad: bytes = b"", *, max_len: int = MAX_MESSAGE_LEN
    ) -> bytes:
        """One transport record; ``len(plaintext) + 16`` must be at most ``max_len``.

        Codex's records have empty ``ad`` and Noise's 65535-byte limit; between this
        project's endpoints a record is one relay segment (up to 252 KiB) and ``ad``
        binds its place in its message (:mod:`~exec_server.relay.noise.noise_mux`)."""
        if len(plaintext) + TAG_LEN > max_len:
            raise NoiseTransportError("transport plaintext is too large")
        return self._send.encrypt_with_ad(ad, plaintext)

    def decrypt(
        self, ciphertext: bytes, ad: bytes = b"", *, max_len: int = MAX_MESSAGE_LEN
    ) -> bytes:
        """The plaintext of the next record in order, or :class:`NoiseTransportError`."""
        if len(ciphertext) < TAG_LEN:
            raise NoiseTransportError("transport ciphertext is too short")
        if len(ciphertext) > max_len:
            raise NoiseTransportError("transport ciphertext is too large")
        return self._recv.decrypt_with_ad(ad, ciphertext)
