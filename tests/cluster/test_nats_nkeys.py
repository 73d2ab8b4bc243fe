"""NATS credentials without a server: nkey seeds, .creds files, the signed nonce."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from exec_server.rendezvous.cluster.nats_nkeys import (
    _base32_decode,
    encode_seed,
    load_credentials,
    nkey_public_key,
    sign_nonce,
)


def test_nkey_seed_signs_the_nonce_verifiably(tmp_path: Path) -> None:
    seed = encode_seed(bytes(range(32)))
    assert seed.startswith("SU")
    public = nkey_public_key(seed)
    assert public.startswith("U") and len(public) == 56
    signature = sign_nonce(seed, b"server-nonce")
    raw_public = _base32_decode(public)[1:33]
    Ed25519PublicKey.from_public_bytes(raw_public).verify(
        _b64url(signature), b"server-nonce"
    )  # raises if wrong
    creds = tmp_path / "user.creds"
    creds.write_text(
        "-----BEGIN NATS USER JWT-----\neyJhbGc.payload.sig\n------END NATS USER JWT------\n\n"
        "************************* IMPORTANT *************************\n\n"
        f"-----BEGIN USER NKEY SEED-----\n{seed}\n------END USER NKEY SEED------\n"
    )
    assert load_credentials(str(creds)) == ("eyJhbGc.payload.sig", seed)
    (tmp_path / "seed.nk").write_text(seed + "\n")
    assert load_credentials(str(tmp_path / "seed.nk")) == (None, seed)
    broken = seed[:-3] + ("A" if seed[-3] != "A" else "B") + seed[-2:]
    (tmp_path / "bad.nk").write_text(broken)
    with pytest.raises(ValueError, match=r"checksum|base32"):
        load_credentials(str(tmp_path / "bad.nk"))
    with pytest.raises(ValueError, match="cannot read"):
        load_credentials(str(tmp_path / "missing.creds"))


def _b64url(text: str) -> bytes:
    import base64

    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
