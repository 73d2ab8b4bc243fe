"""Local websocket authentication, as Codex 0.171's ``exec-server --ws-auth`` has it.

Two modes gate the websocket upgrade (``/readyz`` is never gated):

* ``capability-token``: ``Authorization: Bearer <token>``, compared (as SHA-256
  digests, in constant time) with the token from ``--ws-token-file`` or with the
  digest given by ``--ws-token-sha256``;
* ``signed-bearer-token``: the bearer is an HS256 JWT signed with the secret from
  ``--ws-shared-secret-file`` (at least 32 bytes); it must carry ``exp``, and match
  ``--ws-issuer`` / ``--ws-audience`` when those are set, within
  ``--ws-max-clock-skew-seconds`` (default 60).

A refused upgrade is answered 401 with 0.171's plain-text reason: ``missing
websocket bearer token``, ``invalid authorization header`` (another scheme),
``invalid websocket bearer token``, ``invalid websocket jwt``, ``expired websocket
jwt``, ``websocket jwt is not valid yet``, ``websocket jwt audience mismatch``,
``websocket jwt issuer mismatch``. Configuration errors carry 0.171's texts too.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path

import jwt

#: Shortest shared secret accepted for signed bearer tokens (HS256 key size).
MIN_SHARED_SECRET_BYTES = 32
#: Clock skew allowed on ``exp``/``nbf`` when ``--ws-max-clock-skew-seconds`` is not given.
DEFAULT_MAX_CLOCK_SKEW_S = 60

MISSING_BEARER = "missing websocket bearer token"
INVALID_HEADER = "invalid authorization header"
INVALID_BEARER = "invalid websocket bearer token"
INVALID_JWT = "invalid websocket jwt"
EXPIRED_JWT = "expired websocket jwt"
IMMATURE_JWT = "websocket jwt is not valid yet"
AUDIENCE_MISMATCH = "websocket jwt audience mismatch"
ISSUER_MISMATCH = "websocket jwt issuer mismatch"

_SHA256_HEX = re.compile(r"^[0-9a-fA-F]{64}$")


class WsAuthConfigError(ValueError):
    """Bad ``--ws-*`` options (the message is 0.171's)."""


def _bearer(header: str | None) -> tuple[str | None, str | None]:
    """``(token, None)`` or ``(None, refusal reason)``."""
    if header is None or not header.strip():
        return None, MISSING_BEARER
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None, INVALID_HEADER
    token = token.strip()
    if not token:
        return None, MISSING_BEARER
    return token, None


@dataclass(frozen=True)
class CapabilityTokenAuth:
    token_sha256: bytes

    def refusal(self, authorization: str | None) -> str | None:
        """``None`` when the upgrade may proceed, else the 401 reason."""
        token, reason = _bearer(authorization)
        if token is None:
            return reason
        digest = hashlib.sha256(token.encode()).digest()
        return None if hmac.compare_digest(digest, self.token_sha256) else INVALID_BEARER


@dataclass(frozen=True)
class SignedBearerAuth:
    secret: bytes
    issuer: str | None = None
    audience: str | None = None
    max_clock_skew_s: float = DEFAULT_MAX_CLOCK_SKEW_S

    def refusal(self, authorization: str | None) -> str | None:
        token, reason = _bearer(authorization)
        if token is None:
            return reason
        try:
            jwt.decode(
                token,
                self.secret,
                algorithms=["HS256"],
                audience=self.audience,
                issuer=self.issuer,
                leeway=self.max_clock_skew_s,
                options={
                    "require": ["exp"],
                    "verify_aud": self.audience is not None,
                    "verify_iss": self.issuer is not None,
                },
            )
        except jwt.ExpiredSignatureError:
            return EXPIRED_JWT
        except jwt.ImmatureSignatureError:
            return IMMATURE_JWT
        except jwt.InvalidAudienceError:
            return AUDIENCE_MISMATCH
        except jwt.InvalidIssuerError:
            return ISSUER_MISMATCH
        except jwt.MissingRequiredClaimError as exc:
            if exc.claim == "aud":
                return AUDIENCE_MISMATCH
            if exc.claim == "iss":
                return ISSUER_MISMATCH
            return INVALID_JWT
        except jwt.InvalidTokenError:
            return INVALID_JWT
        return None


WsAuth = CapabilityTokenAuth | SignedBearerAuth


def _read_secret(path: Path) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as exc:
        detail = f"{exc.strerror} (os error {exc.errno})" if exc.errno else str(exc)
        raise WsAuthConfigError(f"failed to read websocket auth secret {path}: {detail}") from None
    data = data.rstrip(b"\r\n")
    if not data.strip():
        raise WsAuthConfigError(f"websocket auth secret {path} must not be empty")
    return data


def build_ws_auth(
    mode: str | None,
    *,
    token_file: Path | None = None,
    token_sha256: str | None = None,
    shared_secret_file: Path | None = None,
    issuer: str | None = None,
    audience: str | None = None,
    max_clock_skew_s: float | None = None,
) -> WsAuth | None:
    """The auth policy for ``serve``'s ``--ws-*`` options (``None``: no ``--ws-auth``)."""
    capability_flags = token_file is not None or token_sha256 is not None
    signed_flags = any(
        v is not None for v in (shared_secret_file, issuer, audience, max_clock_skew_s)
    )
    if mode is None:
        if capability_flags or signed_flags:
            raise WsAuthConfigError(
                "websocket auth flags require `--ws-auth capability-token` or "
                "`--ws-auth signed-bearer-token`"
            )
        return None
    if mode == "capability-token":
        if signed_flags:
            raise WsAuthConfigError(
                "`--ws-shared-secret-file`, `--ws-issuer`, `--ws-audience` and "
                "`--ws-max-clock-skew-seconds` require `--ws-auth signed-bearer-token`, "
                "not `capability-token`"
            )
        if token_file is not None and token_sha256 is not None:
            raise WsAuthConfigError(
                "`--ws-token-file` and `--ws-token-sha256` are mutually exclusive"
            )
        if token_file is not None:
            return CapabilityTokenAuth(hashlib.sha256(_read_secret(token_file)).digest())
        if token_sha256 is not None:
            if not _SHA256_HEX.match(token_sha256):
                raise WsAuthConfigError(
                    "--ws-token-sha256 must be a 64-character hex SHA-256 digest"
                )
            return CapabilityTokenAuth(bytes.fromhex(token_sha256))
        raise WsAuthConfigError(
            "`--ws-token-file` or `--ws-token-sha256` is required when "
            "`--ws-auth capability-token` is set"
        )
    if mode == "signed-bearer-token":
        if capability_flags:
            raise WsAuthConfigError(
                "`--ws-token-file` and `--ws-token-sha256` require "
                "`--ws-auth capability-token`, not `signed-bearer-token`"
            )
        if shared_secret_file is None:
            raise WsAuthConfigError(
                "`--ws-shared-secret-file` is required when `--ws-auth signed-bearer-token` is set"
            )
        secret = _read_secret(shared_secret_file)
        if len(secret) < MIN_SHARED_SECRET_BYTES:
            raise WsAuthConfigError(
                f"signed websocket bearer secret {shared_secret_file} must be at least "
                f"{MIN_SHARED_SECRET_BYTES} bytes"
            )
        skew = DEFAULT_MAX_CLOCK_SKEW_S if max_clock_skew_s is None else max_clock_skew_s
        if skew < 0:
            raise WsAuthConfigError("--ws-max-clock-skew-seconds must not be negative")
        return SignedBearerAuth(secret, issuer=issuer, audience=audience, max_clock_skew_s=skew)
    raise WsAuthConfigError(
        f"invalid --ws-auth {mode!r}: expected capability-token or signed-bearer-token"
    )


def is_loopback_host(host: str) -> bool:
    """Whether a listen host is a loopback address (``localhost`` counts)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def non_loopback_refusal(host: str, port: int) -> str:
    return (
        f"refusing to start non-loopback websocket listener {host}:{port} without auth; "
        "configure `--ws-auth capability-token` or `--ws-auth signed-bearer-token`"
    )
