"""The ``Noise_hybridIK_25519+MLKEM768_AESGCM_SHA256`` handshake of Codex's relay.

Two messages, harness (initiator) to environment (responder) and back, byte-compatible
with Codex 0.171 (Clatter 2.2.0; codex-0171.md §3.4)::

    <- s                                  (pre-message: the registered executor key)
    ...
    -> skem, e, es, s, ss                 + payload (the harness_key_authorization)
    <- ekem, skem, e, ee, se              + empty payload

* ``h = SHA256("Noise_hybridIK_25519+MLKEM768_AESGCM_SHA256")``, ``ck = h``, then
  ``MixHash(prologue)``, then the pre-message ``MixHash(rs.x25519)``,
  ``MixHash(rs.mlkem768)``.
* The prologue (:func:`noise_prologue`) is four parts, each a big-endian u64 length and
  the bytes: ``"codex-exec-server-relay-noise/v1"``, environment id, executor
  registration id, relay stream id. It binds a handshake to one registration and stream.
* ``skem``: encapsulate to the peer's static KEM key, ``EncryptAndHash(ct)``,
  ``MixKeyAndHash(ss)``. ``ekem``: encapsulate to the peer's ephemeral KEM key, send the
  ciphertext in clear, ``MixHash(ct)``, ``MixKey(ss)``. ``e``: ``MixHash(e.x25519)``,
  ``MixHash(e.mlkem768)`` (the responder sends an ephemeral KEM key that nothing uses:
  Clatter 2.2.0 does). ``es``/``ss``/``ee``/``se``: ``MixKey(X25519(...))``.
* Message 1 is ``3568 + len(payload)`` bytes; message 2 is always 3424 bytes, and its
  payload must be empty. The authorization payload is at most 4096 bytes.

:class:`InitiatorHandshake` and :class:`PendingResponderHandshake` are sans-IO: bytes in,
bytes out. The responder learns the initiator's static key from message 1 but must have
it authorized (``/validate``) before calling :meth:`PendingResponderHandshake.complete`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric.mlkem import MLKEM768PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from exec_server.relay.noise.cipher import (
    MAX_MESSAGE_LEN,
    TAG_LEN,
    NoiseTransport,
    SymmetricState,
)
from exec_server.relay.noise.errors import NoiseHandshakeError, NoiseKeyError
from exec_server.relay.noise.keys import (
    MLKEM768_CIPHERTEXT_BYTES,
    MLKEM768_PUBLIC_KEY_BYTES,
    SYSTEM_KEY_SOURCE,
    X25519_KEY_BYTES,
    KeySource,
    NoiseIdentity,
    NoisePublicKey,
    _x25519_exchange,
)

__all__ = [
    "MAX_AUTHORIZATION_BYTES",
    "MESSAGE1_OVERHEAD",
    "MESSAGE2_LEN",
    "PROLOGUE_DOMAIN",
    "PROTOCOL_NAME",
    "InitiatorEphemeral",
    "InitiatorHandshake",
    "PendingResponderHandshake",
    "noise_prologue",
]

PROTOCOL_NAME = b"Noise_hybridIK_25519+MLKEM768_AESGCM_SHA256"
"""The Noise protocol name hashed into ``h`` (DH named ``25519``, one KEM name)."""

PROLOGUE_DOMAIN = b"codex-exec-server-relay-noise/v1"

MAX_AUTHORIZATION_BYTES = 4096
"""Longest ``harness_key_authorization`` the responder accepts (Codex's executor cap)."""

_E_LEN = X25519_KEY_BYTES + MLKEM768_PUBLIC_KEY_BYTES
MESSAGE1_OVERHEAD = (
    MLKEM768_CIPHERTEXT_BYTES  # skem (no key yet: clear)
    + _E_LEN  # e
    + X25519_KEY_BYTES
    + TAG_LEN  # s (x25519)
    + MLKEM768_PUBLIC_KEY_BYTES
    + TAG_LEN  # s (ml-kem)
    + TAG_LEN  # payload tag
)
"""Bytes of message 1 besides the payload: 3568."""

MESSAGE2_LEN = (
    MLKEM768_CIPHERTEXT_BYTES  # ekem (clear)
    + MLKEM768_CIPHERTEXT_BYTES
    + TAG_LEN  # skem (encrypted)
    + _E_LEN  # e
    + TAG_LEN  # empty payload
)
"""Bytes of message 2: 3424."""


def noise_prologue(environment_id: str, executor_registration_id: str, stream_id: str) -> bytes:
    """The prologue binding a handshake to one registration and one relay stream."""
    out = bytearray()
    for part in (
        PROLOGUE_DOMAIN,
        environment_id.encode(),
        executor_registration_id.encode(),
        stream_id.encode(),
    ):
        out += len(part).to_bytes(8, "big")
        out += part
    return bytes(out)


def _initial_state(prologue: bytes, responder: NoisePublicKey) -> SymmetricState:
    state = SymmetricState(PROTOCOL_NAME)
    state.mix_hash(prologue)
    state.mix_hash(responder.x25519)
    state.mix_hash(responder.mlkem768)
    return state


def _dh(private: X25519PrivateKey, public: bytes) -> bytes:
    try:
        return _x25519_exchange(private, X25519PublicKey.from_public_bytes(public))
    except NoiseKeyError as exc:
        raise NoiseHandshakeError(str(exc)) from None


class _Reader:
    """Cuts a handshake message into its tokens; too short is a handshake error."""

    __slots__ = ("_data", "_pos")

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._pos = 0

    def take(self, n: int) -> bytes:
        end = self._pos + n
        if end > len(self._data):
            raise NoiseHandshakeError("handshake message is too short")
        chunk = self._data[self._pos : end]
        self._pos = end
        return chunk

    def rest(self) -> bytes:
        chunk = self._data[self._pos :]
        self._pos = len(self._data)
        return chunk


def _encapsulate(keys: KeySource, public: bytes) -> tuple[bytes, bytes]:
    try:
        key = NoisePublicKey(b"\x00" * X25519_KEY_BYTES, public).mlkem768_key()
    except NoiseKeyError as exc:
        raise NoiseHandshakeError(str(exc)) from None
    return keys.encapsulate(key)


def _decapsulate(private: MLKEM768PrivateKey, ciphertext: bytes) -> bytes:
    try:
        return private.decapsulate(ciphertext)
    except ValueError:
        raise NoiseHandshakeError("invalid ML-KEM-768 ciphertext") from None


class InitiatorEphemeral:
    """An initiator's ephemeral key pairs (X25519 and ML-KEM-768) for one message 1.

    They depend on nothing the registry answers, so a harness may generate them while
    its ``/connect`` is in flight (about 0.2 ms less between having the bundle and
    sending message 1). Each serves exactly one handshake: :meth:`take` refuses a second
    use, and the private halves are never exposed otherwise."""

    __slots__ = ("_mlkem768", "_spent", "_x25519", "mlkem768_public", "x25519_public")

    def __init__(self, x25519: X25519PrivateKey, mlkem768: MLKEM768PrivateKey) -> None:
        self._x25519 = x25519
        self._mlkem768 = mlkem768
        self.x25519_public = x25519.public_key().public_bytes_raw()
        self.mlkem768_public = mlkem768.public_key().public_bytes_raw()
        self._spent = False

    @classmethod
    def generate(cls, keys: KeySource = SYSTEM_KEY_SOURCE) -> InitiatorEphemeral:
        return cls(keys.x25519_private_key(), keys.mlkem768_private_key())

    def __repr__(self) -> str:
        return f"InitiatorEphemeral(spent={self._spent})"

    def __reduce__(self) -> Any:
        raise TypeError("ephemeral Noise keys cannot be pickled or copied")

    def take(self) -> tuple[X25519PrivateKey, MLKEM768PrivateKey]:
        """The private keys, once."""
        if self._spent:
            raise NoiseHandshakeError("ephemeral keys are used by one handshake only")
        self._spent = True
        return self._x25519, self._mlkem768


class InitiatorHandshake:
    """The harness side. ``start`` writes message 1; ``finish`` reads message 2.

    ::

        handshake, message1 = InitiatorHandshake.start(identity, executor_key, prologue,
                                                       authorization.encode())
        transport = handshake.finish(message2)
    """

    __slots__ = ("_done", "_e", "_e_kem", "_identity", "_rs", "_state")

    def __init__(
        self,
        state: SymmetricState,
        identity: NoiseIdentity,
        responder: NoisePublicKey,
        e: X25519PrivateKey,
        e_kem: MLKEM768PrivateKey,
    ) -> None:
        self._state = state
        self._identity = identity
        self._rs = responder
        self._e = e
        self._e_kem = e_kem
        self._done = False

    def __repr__(self) -> str:
        return f"InitiatorHandshake(responder={self._rs.fingerprint}, done={self._done})"

    @classmethod
    def start(
        cls,
        identity: NoiseIdentity,
        responder: NoisePublicKey,
        prologue: bytes,
        payload: bytes,
        *,
        keys: KeySource = SYSTEM_KEY_SOURCE,
        ephemeral: InitiatorEphemeral | None = None,
    ) -> tuple[InitiatorHandshake, bytes]:
        """Write message 1 (``skem, e, es, s, ss`` + ``payload``) to a pinned responder;
        ``ephemeral``: key pairs generated ahead (fresh ones from ``keys`` otherwise)."""
        if MESSAGE1_OVERHEAD + len(payload) > MAX_MESSAGE_LEN:
            raise NoiseHandshakeError("handshake payload is too large")
        if ephemeral is None:
            ephemeral = InitiatorEphemeral.generate(keys)
        e, e_kem = ephemeral.take()
        state = _initial_state(prologue, responder)
        out = bytearray()
        # skem
        ss1, ct1 = _encapsulate(keys, responder.mlkem768)
        out += state.encrypt_and_hash(ct1)
        state.mix_key_and_hash(ss1)
        # e
        e_pub = ephemeral.x25519_public
        e_kem_pub = ephemeral.mlkem768_public
        out += e_pub
        state.mix_hash(e_pub)
        out += e_kem_pub
        state.mix_hash(e_kem_pub)
        # es
        state.mix_key(_dh(e, responder.x25519))
        # s
        out += state.encrypt_and_hash(identity.public_key.x25519)
        out += state.encrypt_and_hash(identity.public_key.mlkem768)
        # ss
        try:
            state.mix_key(identity._dh(responder.x25519_key()))
        except NoiseKeyError as exc:
            raise NoiseHandshakeError(str(exc)) from None
        out += state.encrypt_and_hash(payload)
        return cls(state, identity, responder, e, e_kem), bytes(out)

    def finish(self, response: bytes) -> NoiseTransport:
        """Read message 2 (``ekem, skem, e, ee, se`` + empty payload); the transport
        sends with the initiator-to-responder key."""
        if self._done:
            raise NoiseHandshakeError("the handshake is already finished")
        self._done = True
        if len(response) > MAX_MESSAGE_LEN:
            raise NoiseHandshakeError("handshake response is too large")
        state = self._state
        reader = _Reader(response)
        # ekem
        ct2 = reader.take(MLKEM768_CIPHERTEXT_BYTES)
        state.mix_hash(ct2)
        state.mix_key(_decapsulate(self._e_kem, ct2))
        # skem
        ct3 = state.decrypt_and_hash(reader.take(MLKEM768_CIPHERTEXT_BYTES + TAG_LEN))
        state.mix_key_and_hash(self._identity._decapsulate(ct3))
        # e
        re = reader.take(X25519_KEY_BYTES)
        state.mix_hash(re)
        state.mix_hash(reader.take(MLKEM768_PUBLIC_KEY_BYTES))
        # ee
        state.mix_key(_dh(self._e, re))
        # se
        try:
            state.mix_key(self._identity._dh(X25519PublicKey.from_public_bytes(re)))
        except NoiseKeyError as exc:
            raise NoiseHandshakeError(str(exc)) from None
        if state.decrypt_and_hash(reader.rest()) != b"":
            raise NoiseHandshakeError("handshake response payload must be empty")
        k1, k2 = state.split()
        return NoiseTransport(k1, k2, state.h)


@dataclass(frozen=True, slots=True, repr=False)
class _ResponderSecrets:
    state: SymmetricState
    re: bytes
    re_kem: bytes
    rs: bytes


class PendingResponderHandshake:
    """The environment side between reading message 1 and writing message 2.

    :attr:`initiator_public_key` is authenticated by message 1 (the initiator proved it
    holds the private key); :attr:`payload` is its authorization. Ask the registry
    whether that key may connect, then :meth:`complete`; otherwise just drop this
    object."""

    __slots__ = ("_done", "_identity", "_keys", "_secrets", "initiator_public_key", "payload")

    def __init__(
        self,
        identity: NoiseIdentity,
        secrets: _ResponderSecrets,
        initiator_public_key: NoisePublicKey,
        payload: bytes,
        keys: KeySource,
    ) -> None:
        self._identity = identity
        self._secrets = secrets
        self._keys = keys
        self._done = False
        self.initiator_public_key = initiator_public_key
        self.payload = payload

    def __repr__(self) -> str:
        return (
            f"PendingResponderHandshake(initiator={self.initiator_public_key.fingerprint}, "
            f"payload_bytes={len(self.payload)}, done={self._done})"
        )

    @classmethod
    def read_request(
        cls,
        identity: NoiseIdentity,
        prologue: bytes,
        request: bytes,
        *,
        keys: KeySource = SYSTEM_KEY_SOURCE,
    ) -> PendingResponderHandshake:
        """Read message 1 with the responder's static ``identity``."""
        if len(request) > MAX_MESSAGE_LEN:
            raise NoiseHandshakeError("handshake request is too large")
        if len(request) < MESSAGE1_OVERHEAD:
            raise NoiseHandshakeError("handshake request is too short")
        state = _initial_state(prologue, identity.public_key)
        reader = _Reader(request)
        # skem
        ct1 = state.decrypt_and_hash(reader.take(MLKEM768_CIPHERTEXT_BYTES))
        state.mix_key_and_hash(identity._decapsulate(ct1))
        # e
        re = reader.take(X25519_KEY_BYTES)
        state.mix_hash(re)
        re_kem = reader.take(MLKEM768_PUBLIC_KEY_BYTES)
        state.mix_hash(re_kem)
        # es
        try:
            state.mix_key(identity._dh(X25519PublicKey.from_public_bytes(re)))
        except NoiseKeyError as exc:
            raise NoiseHandshakeError(str(exc)) from None
        # s
        rs = state.decrypt_and_hash(reader.take(X25519_KEY_BYTES + TAG_LEN))
        rs_kem = state.decrypt_and_hash(reader.take(MLKEM768_PUBLIC_KEY_BYTES + TAG_LEN))
        try:
            initiator = NoisePublicKey(rs, rs_kem)
            # ss
            state.mix_key(identity._dh(initiator.x25519_key()))
        except NoiseKeyError as exc:
            raise NoiseHandshakeError(str(exc)) from None
        payload = state.decrypt_and_hash(reader.rest())
        return cls(identity, _ResponderSecrets(state, re, re_kem, rs), initiator, payload, keys)

    def complete(
        self, *, unused_kem_public_key: bytes | None = None
    ) -> tuple[NoiseTransport, bytes]:
        """Write message 2; returns the transport (sending with the
        responder-to-initiator key) and the message.

        The responder's ephemeral ML-KEM public key is only hashed: no message follows
        that could encapsulate to it (Clatter 2.2.0 still sends one). Generating it costs
        about as much as the rest of message 2, so a responder may pass
        ``unused_kem_public_key`` (any valid key, e.g. one per process) instead."""
        if self._done:
            raise NoiseHandshakeError("the handshake is already finished")
        self._done = True
        secrets = self._secrets
        state = secrets.state
        keys = self._keys
        out = bytearray()
        # ekem
        ss2, ct2 = _encapsulate(keys, secrets.re_kem)
        out += ct2
        state.mix_hash(ct2)
        state.mix_key(ss2)
        # skem
        ss3, ct3 = _encapsulate(keys, self.initiator_public_key.mlkem768)
        out += state.encrypt_and_hash(ct3)
        state.mix_key_and_hash(ss3)
        # e
        e = keys.x25519_private_key()
        e_kem_pub = (
            unused_kem_public_key
            if unused_kem_public_key is not None
            else keys.mlkem768_private_key().public_key().public_bytes_raw()
        )
        if len(e_kem_pub) != MLKEM768_PUBLIC_KEY_BYTES:
            raise NoiseHandshakeError("invalid ML-KEM-768 public key")
        e_pub = e.public_key().public_bytes_raw()
        out += e_pub
        state.mix_hash(e_pub)
        out += e_kem_pub
        state.mix_hash(e_kem_pub)
        # ee, se
        state.mix_key(_dh(e, secrets.re))
        state.mix_key(_dh(e, secrets.rs))
        out += state.encrypt_and_hash(b"")
        k1, k2 = state.split()
        return NoiseTransport(k2, k1, state.h), bytes(out)
