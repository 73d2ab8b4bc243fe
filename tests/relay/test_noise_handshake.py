"""The Noise core: a fixed transcript, round trips, and every rejection.

The fixed transcript (``data/noise_transcript.json``: fixed keys and recorded ML-KEM
encapsulations) is checked against :func:`spec_walk`, a step-by-step reading of
codex-0171.md §3.4 written with the raw primitives only (hashlib, hmac, AESGCM), so the
core's SymmetricState/handshake code is checked by independent code; the frozen digests
in the fixture catch a change in both. The real Codex 0.171 executor accepting our
messages is tests/interop/test_noise_codex_executor.py.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import pickle
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.mlkem import MLKEM768PrivateKey, MLKEM768PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from exec_server.relay.noise import (
    InitiatorEphemeral,
    InitiatorHandshake,
    NoiseHandshakeError,
    NoiseIdentity,
    NoiseKeyError,
    NoisePublicKey,
    NoiseTransportError,
    PendingResponderHandshake,
    noise_prologue,
)
from exec_server.relay.noise.handshake import MESSAGE1_OVERHEAD, MESSAGE2_LEN

FIXTURE = json.loads((Path(__file__).parent / "data" / "noise_transcript.json").read_text())
KEYS = {name: bytes.fromhex(value) for name, value in FIXTURE["keys"].items()}
ENCAPSULATIONS = [
    (bytes.fromhex(e["shared_secret"]), bytes.fromhex(e["ciphertext"]))
    for e in FIXTURE["encapsulations"]
]


def x25519(name: str) -> X25519PrivateKey:
    return X25519PrivateKey.from_private_bytes(KEYS[name])


def mlkem(name: str) -> MLKEM768PrivateKey:
    return MLKEM768PrivateKey.from_seed_bytes(KEYS[name])


def responder_identity() -> NoiseIdentity:
    return NoiseIdentity.from_private_bytes(
        KEYS["responder_static_x25519"], KEYS["responder_static_mlkem768_seed"]
    )


def initiator_identity() -> NoiseIdentity:
    return NoiseIdentity.from_private_bytes(
        KEYS["initiator_static_x25519"], KEYS["initiator_static_mlkem768_seed"]
    )


def prologue() -> bytes:
    return noise_prologue(
        FIXTURE["environment_id"], FIXTURE["executor_registration_id"], FIXTURE["stream_id"]
    )


class ScriptedKeys:
    """A KeySource replaying fixed ephemeral keys and recorded encapsulations."""

    def __init__(self, x25519_keys: list[str], mlkem_keys: list[str], encaps: list[int]) -> None:
        self._x = [x25519(name) for name in x25519_keys]
        self._m = [mlkem(name) for name in mlkem_keys]
        self._e = [ENCAPSULATIONS[i] for i in encaps]
        self._targets = [FIXTURE["encapsulations"][i]["to"] for i in encaps]

    def x25519_private_key(self) -> X25519PrivateKey:
        return self._x.pop(0)

    def mlkem768_private_key(self) -> MLKEM768PrivateKey:
        return self._m.pop(0)

    def encapsulate(self, public_key: MLKEM768PublicKey) -> tuple[bytes, bytes]:
        target = self._targets.pop(0)
        assert public_key.public_bytes_raw() == mlkem(target).public_key().public_bytes_raw()
        return self._e.pop(0)


def initiator_keys() -> ScriptedKeys:
    return ScriptedKeys(["initiator_ephemeral_x25519"], ["initiator_ephemeral_mlkem768_seed"], [0])


def responder_keys() -> ScriptedKeys:
    return ScriptedKeys(
        ["responder_ephemeral_x25519"], ["responder_ephemeral_mlkem768_seed"], [1, 2]
    )


# --------------------------------------------------------------------------- spec walk


@dataclass
class Walk:
    h: bytes
    ck: bytes
    k: bytes | None = None
    n: int = 0

    def mix_hash(self, data: bytes) -> None:
        self.h = hashlib.sha256(self.h + data).digest()

    def hkdf(self, ikm: bytes, count: int) -> list[bytes]:
        temp = hmac.new(self.ck, ikm, "sha256").digest()
        outs = [hmac.new(temp, b"\x01", "sha256").digest()]
        while len(outs) < count:
            outs.append(hmac.new(temp, outs[-1] + bytes([len(outs) + 1]), "sha256").digest())
        return outs

    def mix_key(self, ikm: bytes) -> None:
        self.ck, self.k = self.hkdf(ikm, 2)
        self.n = 0

    def mix_key_and_hash(self, ikm: bytes) -> None:
        self.ck, temp_h, self.k = self.hkdf(ikm, 3)
        self.mix_hash(temp_h)
        self.n = 0

    def encrypt_and_hash(self, plaintext: bytes) -> bytes:
        if self.k is None:
            out = plaintext
        else:
            nonce = b"\x00\x00\x00\x00" + self.n.to_bytes(8, "big")
            out = AESGCM(self.k).encrypt(nonce, plaintext, self.h)
            self.n += 1
        self.mix_hash(out)
        return out


def dh(private: str, public: bytes) -> bytes:
    return x25519(private).exchange(X25519PublicKey.from_public_bytes(public))


def pub_x(name: str) -> bytes:
    return x25519(name).public_key().public_bytes_raw()


def pub_m(name: str) -> bytes:
    return mlkem(name).public_key().public_bytes_raw()


def spec_walk(msg2_payload: bytes = b"") -> dict[str, Any]:
    """Message 1, message 2 and the split keys, computed as codex-0171.md §3.4 says."""
    name = b"Noise_hybridIK_25519+MLKEM768_AESGCM_SHA256"
    assert len(name) == 43  # over HASHLEN: h = SHA-256(name)
    w = Walk(hashlib.sha256(name).digest(), hashlib.sha256(name).digest())
    parts = [b"codex-exec-server-relay-noise/v1", b"env-1", b"registration-1"]
    parts.append(FIXTURE["stream_id"].encode())
    w.mix_hash(b"".join(len(p).to_bytes(8, "big") + p for p in parts))
    w.mix_hash(pub_x("responder_static_x25519"))
    w.mix_hash(pub_m("responder_static_mlkem768_seed"))
    # message 1: skem, e, es, s, ss + payload
    ss1, ct1 = ENCAPSULATIONS[0]
    m1 = w.encrypt_and_hash(ct1)
    w.mix_key_and_hash(ss1)
    e, e_kem = pub_x("initiator_ephemeral_x25519"), pub_m("initiator_ephemeral_mlkem768_seed")
    m1 += e + e_kem
    w.mix_hash(e)
    w.mix_hash(e_kem)
    w.mix_key(dh("initiator_ephemeral_x25519", pub_x("responder_static_x25519")))
    m1 += w.encrypt_and_hash(pub_x("initiator_static_x25519"))
    m1 += w.encrypt_and_hash(pub_m("initiator_static_mlkem768_seed"))
    w.mix_key(dh("initiator_static_x25519", pub_x("responder_static_x25519")))
    m1 += w.encrypt_and_hash(FIXTURE["authorization"].encode())
    # message 2: ekem, skem, e, ee, se + payload
    ss2, ct2 = ENCAPSULATIONS[1]
    m2 = ct2
    w.mix_hash(ct2)
    w.mix_key(ss2)
    ss3, ct3 = ENCAPSULATIONS[2]
    m2 += w.encrypt_and_hash(ct3)
    w.mix_key_and_hash(ss3)
    re, re_kem = pub_x("responder_ephemeral_x25519"), pub_m("responder_ephemeral_mlkem768_seed")
    m2 += re + re_kem
    w.mix_hash(re)
    w.mix_hash(re_kem)
    w.mix_key(dh("responder_ephemeral_x25519", pub_x("initiator_ephemeral_x25519")))
    w.mix_key(dh("responder_ephemeral_x25519", pub_x("initiator_static_x25519")))
    m2 += w.encrypt_and_hash(msg2_payload)
    k_i2r, k_r2i = w.hkdf(b"", 2)
    return {"m1": m1, "m2": m2, "h": w.h, "k_i2r": k_i2r, "k_r2i": k_r2i}


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --------------------------------------------------------------------------- transcript


def test_fixed_transcript_matches_the_spec_walk_byte_for_byte() -> None:
    walk = spec_walk()
    assert len(walk["m1"]) == 3568 + len(FIXTURE["authorization"]) == 3593  # as 0.171 sent
    assert len(walk["m2"]) == 3424
    handshake, message1 = InitiatorHandshake.start(
        initiator_identity(),
        responder_identity().public_key,
        prologue(),
        FIXTURE["authorization"].encode(),
        keys=initiator_keys(),
    )
    assert message1 == walk["m1"]
    pending = PendingResponderHandshake.read_request(
        responder_identity(), prologue(), message1, keys=responder_keys()
    )
    assert pending.payload == FIXTURE["authorization"].encode()
    assert pending.initiator_public_key == initiator_identity().public_key
    responder, message2 = pending.complete()
    assert message2 == walk["m2"]
    initiator = handshake.finish(message2)
    assert initiator.handshake_hash == responder.handshake_hash == walk["h"]
    # Transport: initiator sends with k_i2r, nonce 0x00000000 || BE64(n), empty ad.
    for n, text in enumerate([b"first", b"second", b"third"]):
        record = initiator.encrypt(text)
        nonce = b"\x00" * 4 + n.to_bytes(8, "big")
        assert record == AESGCM(walk["k_i2r"]).encrypt(nonce, text, b"")
        assert responder.decrypt(record) == text
    reply = responder.encrypt(b"reply")
    assert reply == AESGCM(walk["k_r2i"]).encrypt(b"\x00" * 12, b"reply", b"")
    assert initiator.decrypt(reply) == b"reply"
    frozen = {
        "message1": digest(message1),
        "message2": digest(message2),
        "handshake_hash": initiator.handshake_hash.hex(),
    }
    assert frozen == FIXTURE["expected"]


def test_ephemeral_keys_generated_ahead_give_the_same_transcript_once() -> None:
    """Key pairs generated before the bundle arrives (while ``/connect`` is in flight)
    yield byte for byte the message 1 of generating them inside ``start``; a second
    handshake with the same pairs is refused, and they cannot be copied out."""
    walk = spec_walk()
    keys = initiator_keys()
    ephemeral = InitiatorEphemeral.generate(keys)
    handshake, message1 = InitiatorHandshake.start(
        initiator_identity(),
        responder_identity().public_key,
        prologue(),
        FIXTURE["authorization"].encode(),
        keys=keys,
        ephemeral=ephemeral,
    )
    assert message1 == walk["m1"]
    pending = PendingResponderHandshake.read_request(
        responder_identity(), prologue(), message1, keys=responder_keys()
    )
    _, message2 = pending.complete()
    assert handshake.finish(message2).handshake_hash == walk["h"]
    with pytest.raises(NoiseHandshakeError, match="one handshake only"):
        InitiatorHandshake.start(
            initiator_identity(),
            responder_identity().public_key,
            prologue(),
            b"",
            ephemeral=ephemeral,
        )
    with pytest.raises(TypeError):
        pickle.dumps(ephemeral)
    assert "spent=True" in repr(ephemeral)


def test_prologue_is_four_big_endian_u64_length_prefixed_parts() -> None:
    assert noise_prologue("e", "rg", "s1") == (
        (32).to_bytes(8, "big")
        + b"codex-exec-server-relay-noise/v1"
        + (1).to_bytes(8, "big")
        + b"e"
        + (2).to_bytes(8, "big")
        + b"rg"
        + (2).to_bytes(8, "big")
        + b"s1"
    )
    # Length prefixes keep different tuples apart.
    assert noise_prologue("ab", "c", "d") != noise_prologue("a", "bc", "d")


def test_a_non_empty_message2_payload_is_refused() -> None:
    walk = spec_walk(msg2_payload=b"x")
    handshake, _ = InitiatorHandshake.start(
        initiator_identity(),
        responder_identity().public_key,
        prologue(),
        FIXTURE["authorization"].encode(),
        keys=initiator_keys(),
    )
    assert len(walk["m2"]) == MESSAGE2_LEN + 1
    with pytest.raises(NoiseHandshakeError, match="payload must be empty"):
        handshake.finish(walk["m2"])


# --------------------------------------------------------------------------- round trips


def handshake_pair(
    payload: bytes = b"auth", stream_id: str = "s-1"
) -> tuple[InitiatorHandshake, bytes, NoiseIdentity, NoiseIdentity]:
    responder, initiator = NoiseIdentity.generate(), NoiseIdentity.generate()
    handshake, message1 = InitiatorHandshake.start(
        initiator, responder.public_key, noise_prologue("env", "reg", stream_id), payload
    )
    return handshake, message1, responder, initiator


def test_round_trip_with_fresh_keys_both_directions_many_records() -> None:
    handshake, message1, responder_id, initiator_id = handshake_pair(b"a" * 4096)
    assert len(message1) == MESSAGE1_OVERHEAD + 4096
    pending = PendingResponderHandshake.read_request(
        responder_id, noise_prologue("env", "reg", "s-1"), message1
    )
    assert pending.initiator_public_key == initiator_id.public_key
    responder, message2 = pending.complete()
    initiator = handshake.finish(message2)
    for i in range(50):
        data = bytes([i]) * (i * 997)
        assert responder.decrypt(initiator.encrypt(data)) == data
        assert initiator.decrypt(responder.encrypt(data[::-1])) == data[::-1]
    biggest = b"z" * (65535 - 16)
    assert responder.decrypt(initiator.encrypt(biggest)) == biggest
    assert initiator.sent_records == responder.received_records == 51


def test_handshake_messages_are_single_use() -> None:
    handshake, message1, responder_id, _ = handshake_pair()
    pending = PendingResponderHandshake.read_request(
        responder_id, noise_prologue("env", "reg", "s-1"), message1
    )
    _, message2 = pending.complete()
    with pytest.raises(NoiseHandshakeError, match="already finished"):
        pending.complete()
    handshake.finish(message2)
    with pytest.raises(NoiseHandshakeError, match="already finished"):
        handshake.finish(message2)


# --------------------------------------------------------------------------- rejections

M1_REGIONS = {
    "skem ciphertext": 100,
    "ephemeral x25519": 1088 + 5,
    "ephemeral ml-kem": 1088 + 32 + 600,
    "static x25519 (encrypted)": 1088 + 1216 + 10,
    "static ml-kem (encrypted)": 1088 + 1216 + 48 + 700,
    "payload": MESSAGE1_OVERHEAD - 16 + 2,
    "payload tag": MESSAGE1_OVERHEAD - 16 + 4 + 3,
}


@pytest.mark.parametrize("offset", list(M1_REGIONS.values()), ids=list(M1_REGIONS))
def test_a_tampered_message1_is_refused(offset: int) -> None:
    _, message1, responder_id, _ = handshake_pair()
    tampered = bytearray(message1)
    tampered[offset] ^= 0x01
    with pytest.raises(NoiseHandshakeError):
        PendingResponderHandshake.read_request(
            responder_id, noise_prologue("env", "reg", "s-1"), bytes(tampered)
        )


M2_REGIONS = {"ekem": 10, "skem": 1088 + 20, "ephemeral": 1088 + 1104 + 3, "tag": 3420}


@pytest.mark.parametrize("offset", list(M2_REGIONS.values()), ids=list(M2_REGIONS))
def test_a_tampered_message2_is_refused(offset: int) -> None:
    handshake, message1, responder_id, _ = handshake_pair()
    _, message2 = PendingResponderHandshake.read_request(
        responder_id, noise_prologue("env", "reg", "s-1"), message1
    ).complete()
    tampered = bytearray(message2)
    tampered[offset] ^= 0x80
    with pytest.raises(NoiseHandshakeError):
        handshake.finish(bytes(tampered))


def test_message1_bound_to_another_stream_or_responder_key_is_refused() -> None:
    _, message1, responder_id, _ = handshake_pair(stream_id="s-1")
    with pytest.raises(NoiseHandshakeError, match="authentication"):
        PendingResponderHandshake.read_request(
            responder_id, noise_prologue("env", "reg", "s-2"), message1
        )
    with pytest.raises(NoiseHandshakeError, match="authentication"):
        PendingResponderHandshake.read_request(
            NoiseIdentity.generate(), noise_prologue("env", "reg", "s-1"), message1
        )


def test_truncated_and_oversize_handshake_messages_are_refused() -> None:
    handshake, message1, responder_id, _ = handshake_pair()
    prologue_ = noise_prologue("env", "reg", "s-1")
    for cut in (0, 1, 1088, MESSAGE1_OVERHEAD - 1):
        with pytest.raises(NoiseHandshakeError, match="too short"):
            PendingResponderHandshake.read_request(responder_id, prologue_, message1[:cut])
    with pytest.raises(NoiseHandshakeError, match="request is too large"):
        PendingResponderHandshake.read_request(responder_id, prologue_, b"\x00" * 65536)
    with pytest.raises(NoiseHandshakeError, match="payload is too large"):
        InitiatorHandshake.start(
            NoiseIdentity.generate(),
            responder_id.public_key,
            prologue_,
            b"x" * (65535 - MESSAGE1_OVERHEAD + 1),
        )
    _, message2 = PendingResponderHandshake.read_request(
        responder_id, prologue_, message1
    ).complete()
    with pytest.raises(NoiseHandshakeError, match="response is too large"):
        handshake.finish(message2 + b"\x00" * 65535)
    with pytest.raises(NoiseHandshakeError):
        handshake.finish(message2[:-1])


def established() -> tuple[Any, Any]:
    handshake, message1, responder_id, _ = handshake_pair()
    responder, message2 = PendingResponderHandshake.read_request(
        responder_id, noise_prologue("env", "reg", "s-1"), message1
    ).complete()
    return handshake.finish(message2), responder


def test_transport_refuses_short_long_tampered_replayed_and_reordered_records() -> None:
    initiator, responder = established()
    with pytest.raises(NoiseTransportError, match="too short"):
        responder.decrypt(b"\x00" * 15)
    with pytest.raises(NoiseTransportError, match="ciphertext is too large"):
        responder.decrypt(b"\x00" * 65536)
    with pytest.raises(NoiseTransportError, match="plaintext is too large"):
        initiator.encrypt(b"\x00" * (65535 - 15))
    first, second = initiator.encrypt(b"one"), initiator.encrypt(b"two")
    with pytest.raises(NoiseTransportError, match="authentication"):
        responder.decrypt(second)  # out of order: wrong implicit nonce
    tampered = bytearray(first)
    tampered[0] ^= 1
    with pytest.raises(NoiseTransportError, match="authentication"):
        responder.decrypt(bytes(tampered))
    assert responder.decrypt(first) == b"one"  # a failure does not consume the nonce
    with pytest.raises(NoiseTransportError):
        responder.decrypt(first)  # replay
    assert responder.decrypt(second) == b"two"
    # Directions have separate keys: our own record does not decrypt on our side.
    with pytest.raises(NoiseTransportError):
        initiator.decrypt(initiator.encrypt(b"mirror"))


# --------------------------------------------------------------------------- keys


def test_public_key_json_round_trips_and_is_strict() -> None:
    key = NoiseIdentity.generate().public_key
    obj = key.to_json_obj()
    assert set(obj) == {"suite", "x25519_public_key", "mlkem768_public_key"}
    assert obj["suite"] == "Noise_hybridIK_X25519+MLKEM768_AESGCM_SHA256"
    assert NoisePublicKey.from_json(key.to_json()) == key
    bad: list[Any] = [
        [],
        "key",
        {**obj, "extra": 1},
        {k: v for k, v in obj.items() if k != "suite"},
        {**obj, "suite": "Noise_IK_25519_AESGCM_SHA256"},
        {**obj, "x25519_public_key": obj["x25519_public_key"].rstrip("=")},
        {**obj, "x25519_public_key": "-" + obj["x25519_public_key"][1:]},
        {**obj, "x25519_public_key": "AAAA"},
        {**obj, "x25519_public_key": 5},
        {**obj, "mlkem768_public_key": obj["x25519_public_key"]},
        {**obj, "x25519_public_key": " " + obj["x25519_public_key"]},
    ]
    for candidate in bad:
        with pytest.raises(NoiseKeyError):
            NoisePublicKey.from_json_obj(candidate)
    with pytest.raises(NoiseKeyError):
        NoisePublicKey.from_json(b"{not json")
    # Non-canonical trailing bits: decodes to the same bytes, but is not the one spelling.
    alphabet = string.ascii_uppercase + string.ascii_lowercase + string.digits + "+/"
    x = obj["x25519_public_key"]
    twisted = x[:-2] + alphabet[alphabet.index(x[-2]) + 1] + "="
    with pytest.raises(NoiseKeyError, match="canonical"):
        NoisePublicKey.from_json_obj({**obj, "x25519_public_key": twisted})


def test_keys_never_appear_in_reprs_and_identities_do_not_pickle() -> None:
    identity = NoiseIdentity.generate()
    handshake, message1, responder_id, _ = handshake_pair(b"secret-authorization")
    pending = PendingResponderHandshake.read_request(
        responder_id, noise_prologue("env", "reg", "s-1"), message1
    )
    transport, _ = pending.complete()
    texts = " ".join(
        repr(x) for x in (identity, identity.public_key, handshake, pending, transport)
    )
    obj = identity.public_key.to_json_obj()
    for secret in (obj["x25519_public_key"][:12], obj["mlkem768_public_key"][:12]):
        assert secret not in texts
    assert "secret-authorization" not in texts
    assert identity.public_key.fingerprint in repr(identity)
    with pytest.raises(TypeError, match="pickled"):
        pickle.dumps(identity)


def test_identity_from_private_bytes_is_deterministic_and_checked() -> None:
    a = responder_identity()
    b = responder_identity()
    assert a.public_key == b.public_key
    with pytest.raises(NoiseKeyError):
        NoiseIdentity.from_private_bytes(b"\x00" * 31, b"\x00" * 64)
    with pytest.raises(NoiseKeyError):
        NoiseIdentity.from_private_bytes(b"\x00" * 32, b"\x00" * 32)


def test_a_low_order_ephemeral_key_is_a_handshake_error() -> None:
    _, message1, responder_id, _ = handshake_pair()
    zero_e = message1[:1088] + b"\x00" * 32 + message1[1088 + 32 :]
    with pytest.raises(NoiseHandshakeError):
        PendingResponderHandshake.read_request(
            responder_id, noise_prologue("env", "reg", "s-1"), zero_e
        )


def test_an_invalid_ml_kem_key_is_refused_before_any_message_is_written() -> None:
    """Lengths are right but the polynomial coefficients are not reduced mod q."""
    responder = NoisePublicKey(b"\x09" * 32, b"\xff" * 1184)
    with pytest.raises(NoiseHandshakeError, match="ML-KEM"):
        InitiatorHandshake.start(
            NoiseIdentity.generate(), responder, noise_prologue("e", "r", "s"), b"auth"
        )
