"""NATS credentials for the frame bus's connection: ``.creds`` files and nkey seeds.

:func:`load_credentials` reads a ``.creds`` file (a user JWT and its nkey seed) or a
file holding only a seed (nkey authentication); :func:`sign_nonce` signs the server's
``INFO`` nonce for ``CONNECT``'s ``sig`` and :func:`nkey_public_key` gives the public key
an nkey user announces; :func:`connect_options` puts the configured credentials (or a
URL's) into ``CONNECT``, reading the file at every connection. The encoding (base32
with a one- or two-byte prefix and a CRC-16/XMODEM checksum) is checked on every seed
read, so a damaged file is a clear :class:`ValueError`, not a signature the server
refuses. Ed25519 itself is the ``cryptography`` package's. No I/O but reading the file
named.
"""

from __future__ import annotations

import base64
from typing import Final

from .nats_client_config import ClientConfig, NatsConnectError, ServerAddress
from .nats_wire import ConnectOptions, ServerInfo

__all__ = ["connect_options", "encode_seed", "load_credentials", "nkey_public_key", "sign_nonce"]

_SEED_PREFIX: Final = 18 << 3
"""First 5 bits of a decoded nkey seed ('S')."""
_USER_PREFIX: Final = 20 << 3
"""An nkey user's public key ('U')."""


def load_credentials(path: str) -> tuple[str | None, str]:
    """A ``.creds`` file: (user JWT, nkey seed); the JWT is None when the file holds only
    a seed (nkey authentication)."""
    try:
        with open(path, encoding="utf-8") as file:
            text = file.read()
    except OSError as exc:
        raise ValueError(f"cannot read the NATS credentials file {path}: {exc}") from exc
    jwt = _armored(text, "JWT")
    seed = _armored(text, "SEED")
    if seed is None:
        bare = [line.strip() for line in text.splitlines() if line.strip().startswith("SU")]
        seed = bare[0] if bare else None
    if seed is None:
        raise ValueError(f"no nkey seed in the NATS credentials file {path}")
    _decode_seed(seed)
    return jwt, seed


def _armored(text: str, kind: str) -> str | None:
    lines = text.splitlines()
    for index, line in enumerate(lines):
        if "BEGIN" in line and kind in line and line.strip().startswith("-"):
            for value in lines[index + 1 :]:
                if value.strip():
                    return value.strip()
    return None


def _crc16(data: bytes) -> int:
    """CRC-16/XMODEM, the checksum of nkey encodings."""
    crc = 0
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else crc << 1
            crc &= 0xFFFF
    return crc


def _base32_decode(text: str) -> bytes:
    try:
        return base64.b32decode(text + "=" * (-len(text) % 8))
    except ValueError as exc:
        raise ValueError("an nkey that is not base32") from exc


def _base32_encode(data: bytes) -> str:
    return base64.b32encode(data).decode().rstrip("=")


def _decode_seed(seed: str) -> tuple[int, bytes]:
    """(public key prefix byte, 32-byte Ed25519 seed) of an encoded nkey seed."""
    raw = _base32_decode(seed)
    if len(raw) != 36 or _crc16(raw[:-2]) != int.from_bytes(raw[-2:], "little"):
        raise ValueError("an nkey seed with a bad length or checksum")
    if raw[0] & 0xF8 != _SEED_PREFIX:
        raise ValueError("not an nkey seed")
    prefix = ((raw[0] & 0x07) << 5) | ((raw[1] & 0xF8) >> 3)
    return prefix, raw[2:34]


def encode_seed(raw_seed: bytes, prefix: int = _USER_PREFIX) -> str:
    """The text form of a 32-byte Ed25519 seed as an nkey seed (``SU...`` for a user)."""
    if len(raw_seed) != 32:
        raise ValueError("an Ed25519 seed is 32 bytes")
    head = bytes((_SEED_PREFIX | (prefix >> 5), (prefix & 0x1F) << 3))
    body = head + raw_seed
    return _base32_encode(body + _crc16(body).to_bytes(2, "little"))


def nkey_public_key(seed: str) -> str:
    """The public nkey (``U...`` for a user) of an encoded seed."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    prefix, raw = _decode_seed(seed)
    public = Ed25519PrivateKey.from_private_bytes(raw).public_key()
    body = bytes((prefix,)) + public.public_bytes(Encoding.Raw, PublicFormat.Raw)
    return _base32_encode(body + _crc16(body).to_bytes(2, "little"))


def sign_nonce(seed: str, nonce: bytes) -> str:
    """The server's nonce signed with the seed's key, base64url without padding (what
    ``CONNECT``'s ``sig`` carries)."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    _, raw = _decode_seed(seed)
    signature = Ed25519PrivateKey.from_private_bytes(raw).sign(nonce)
    return base64.urlsafe_b64encode(signature).decode().rstrip("=")


def connect_options(
    config: ClientConfig, address: ServerAddress, info: ServerInfo
) -> ConnectOptions:
    """What ``CONNECT`` says to ``address`` (whose ``INFO`` is ``info``): the URL's
    credentials over the configured ones, and a ``.creds`` file read now (it may have
    changed since the last connection) and its nonce signature;
    :class:`~exec_server.rendezvous.cluster.nats_client_config.NatsConnectError` for a
    file that does not read or a server that sent no nonce."""
    user, password, token = config.user, config.password, config.token
    if address.user is not None:  # credentials in the URL take precedence
        if address.password is not None:
            user, password, token = address.user, address.password, None
        else:
            user, password, token = None, None, address.user
    jwt = signature = nkey = None
    if config.credentials_file is not None:
        try:
            jwt, seed = load_credentials(config.credentials_file)
        except ValueError as exc:
            raise NatsConnectError(str(exc)) from exc
        if info.nonce is None:
            raise NatsConnectError("the server sent no nonce to sign with the credentials")
        signature = sign_nonce(seed, info.nonce.encode())
        if jwt is None:
            nkey = nkey_public_key(seed)
    return ConnectOptions(
        name=config.name,
        user=user,
        password=password,
        token=token,
        jwt=jwt,
        signature=signature,
        nkey=nkey,
        echo=config.echo,
        tls_required=address.tls or config.tls_required,
    )
