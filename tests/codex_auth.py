"""A fake Codex ``$CODEX_HOME/auth.json``, so a real Codex executor registers with us.

Codex's remote executor (0.133) insists on ChatGPT-style credentials and sends
``tokens.access_token`` verbatim as the registration bearer (codex-observed.md §1, §5).
It does not verify the JWT locally, so an unsigned ``alg: none`` token with the expected
claims is enough. The returned token is what the rendezvous must be configured with
(``RendezvousConfig(token=...)`` or ``EXEC_SERVER_RENDEZVOUS_TOKEN``).

Test support: nothing here is a credential for any real service.
"""

from __future__ import annotations

import base64
import json
import os
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

__all__ = [
    "AUTH_FILE_NAME",
    "DEFAULT_JWT_LIFETIME_S",
    "PLACEHOLDER_SIGNATURE",
    "unsigned_jwt",
    "write_codex_auth_json",
]

AUTH_FILE_NAME = "auth.json"

DEFAULT_JWT_LIFETIME_S = 7 * 24 * 3600.0
"""``exp`` of the fake tokens, seconds from now (Codex wants a future expiry)."""

_OPENAI_AUTH_CLAIM = "https://api.openai.com/auth"
_OPENAI_PROFILE_CLAIM = "https://api.openai.com/profile"


PLACEHOLDER_SIGNATURE = "dW5zaWduZWQ"
"""base64url("unsigned"): Codex's ``parse_id_token`` rejects a JWT whose signature segment
is empty (it never verifies it), so an ``alg: none`` token needs a non-empty placeholder."""


def unsigned_jwt(claims: dict[str, Any]) -> str:
    """``base64url(header).base64url(claims).<placeholder>`` with ``{"alg": "none"}``."""
    header = {"alg": "none", "typ": "JWT"}
    return ".".join((_b64_json(header), _b64_json(claims), PLACEHOLDER_SIGNATURE))


def write_codex_auth_json(
    codex_home: Path,
    *,
    account_id: str = "acct-1",
    plan_type: str = "pro",
    email: str = "exec-server-test@example.invalid",
    lifetime_s: float = DEFAULT_JWT_LIFETIME_S,
    now: float | None = None,
) -> str:
    """Write ``codex_home/auth.json`` (mode 0600, ``codex_home`` created if missing) and
    return the access token the executor will present as its bearer."""
    issued = time.time() if now is None else now
    claims: dict[str, Any] = {
        "iss": "https://auth.openai.com",
        "aud": ["https://api.openai.com/v1"],
        "sub": f"user-{account_id}",
        "email": email,
        "iat": int(issued),
        "exp": int(issued + lifetime_s),
        _OPENAI_AUTH_CLAIM: {
            "chatgpt_account_id": account_id,
            "chatgpt_plan_type": plan_type,
            "chatgpt_user_id": f"user-{account_id}",
        },
        _OPENAI_PROFILE_CLAIM: {"email": email, "email_verified": True},
    }
    token = unsigned_jwt(claims)
    document = {
        "auth_mode": "chatgpt",
        "OPENAI_API_KEY": None,
        "tokens": {
            "id_token": token,
            "access_token": token,
            "refresh_token": "exec-server-test-refresh-token",
            "account_id": account_id,
        },
        "last_refresh": datetime.fromtimestamp(issued, UTC)
        .isoformat(timespec="seconds")
        .replace("+00:00", "Z"),
    }
    codex_home.mkdir(parents=True, exist_ok=True)
    path = codex_home / AUTH_FILE_NAME
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(document, handle, indent=2)
    os.chmod(path, 0o600)
    return token


def _b64_json(value: dict[str, Any]) -> str:
    raw = json.dumps(value, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
