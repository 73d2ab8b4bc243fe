"""The Noise layer's exception hierarchy.

Everything :mod:`exec_server.relay.noise` raises derives from :class:`NoiseError`, which
is a :class:`~exec_server.relay.errors.RelayError`. Messages never contain key material,
authorizations, plaintext or ciphertext: they are safe to log. Where Codex has a message
for the same failure (``handshake payload is too large``, ``transport ciphertext is too
short``...), ours uses the same words.
"""

from __future__ import annotations

from exec_server.relay.errors import RelayError

__all__ = [
    "NoiseError",
    "NoiseHandshakeError",
    "NoiseKeyError",
    "NoiseProtocolError",
    "NoiseTransportError",
]


class NoiseError(RelayError):
    """Base class of every error raised by :mod:`exec_server.relay.noise`."""


class NoiseKeyError(NoiseError):
    """A public key (``NoiseChannelPublicKey`` JSON) or raw key material is invalid."""


class NoiseHandshakeError(NoiseError):
    """A handshake message is malformed, too large, fails authentication, or arrives in
    the wrong state. The handshake cannot continue."""


class NoiseTransportError(NoiseError):
    """A transport record is too short or too large, fails authentication, or the
    nonce space is exhausted. The channel cannot continue."""


class NoiseProtocolError(NoiseError):
    """A peer broke the Noise relay stream rules (data before the handshake, a record
    outside the reorder window, a bad message length...). Reset the stream."""
