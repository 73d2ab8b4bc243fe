"""Codex's end-to-end encrypted relay: Noise hybrid IK (X25519 + ML-KEM-768, AES-256-GCM,
SHA-256), sans-IO.

Layout (each module's docstring states its contract, limits and failure modes):

* :mod:`~exec_server.relay.noise.keys`: static identities, the ``NoiseChannelPublicKey``
  JSON, and the randomness source;
* :mod:`~exec_server.relay.noise.cipher`: symmetric state, HKDF, transport cipher states;
* :mod:`~exec_server.relay.noise.handshake`: the two handshake messages and the prologue;
* :mod:`~exec_server.relay.noise.errors`: the exception hierarchy.

Nothing here performs I/O or reads a clock, and nothing logs or formats key material.
"""

from exec_server.relay.noise.cipher import MAX_MESSAGE_LEN, NoiseTransport
from exec_server.relay.noise.errors import (
    NoiseError,
    NoiseHandshakeError,
    NoiseKeyError,
    NoiseProtocolError,
    NoiseTransportError,
)
from exec_server.relay.noise.handshake import (
    MAX_AUTHORIZATION_BYTES,
    PROTOCOL_NAME,
    InitiatorEphemeral,
    InitiatorHandshake,
    PendingResponderHandshake,
    noise_prologue,
)
from exec_server.relay.noise.keys import (
    NOISE_CHANNEL_SUITE,
    SYSTEM_KEY_SOURCE,
    KeySource,
    NoiseIdentity,
    NoisePublicKey,
)

__all__ = [
    "MAX_AUTHORIZATION_BYTES",
    "MAX_MESSAGE_LEN",
    "NOISE_CHANNEL_SUITE",
    "PROTOCOL_NAME",
    "SYSTEM_KEY_SOURCE",
    "InitiatorEphemeral",
    "InitiatorHandshake",
    "KeySource",
    "NoiseError",
    "NoiseHandshakeError",
    "NoiseIdentity",
    "NoiseKeyError",
    "NoiseProtocolError",
    "NoisePublicKey",
    "NoiseTransport",
    "NoiseTransportError",
    "PendingResponderHandshake",
    "noise_prologue",
]
