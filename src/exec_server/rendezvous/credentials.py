"""The rendezvous's two secrets: the registry bearer token and the URL-signing secret.

Bearer token (guards every ``/cloud/...`` endpoint), first match wins:

1. an explicit token given by an embedding process (:class:`RendezvousConfig.token`);
2. the environment variable ``EXEC_SERVER_RENDEZVOUS_TOKEN``;
3. ``<data dir>/token``, created on first start (mode 0600) when missing;
4. with neither a data dir nor the variable: a random token written to
   ``<fresh temp dir>/token`` (mode 0600, directory 0700), removed again on close. A
   cluster node passes the cluster's shared token instead of a random one
   (``shared``), so every node accepts the same bearer.

The token is compared in constant time and is never logged; only the path of the file
holding it is. Codex's executor sends its ``auth.json`` access token verbatim as the
bearer, so any string (including a JWT) is a valid token.

URL-signing secret: 32 random bytes, persisted as hex in ``<data dir>/url-signing-secret``
(mode 0600) so signed URLs stay valid across a restart, or random per process without a
data dir.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import shutil
import stat
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from ..transport.bearer import bearer_matches
from .errors import CredentialError
from .url_signing import MIN_SECRET_BYTES, SECRET_BYTES

__all__ = [
    "SECRET_FILE_NAME",
    "TOKEN_BYTES",
    "TOKEN_ENV",
    "TOKEN_FILE_NAME",
    "ResolvedToken",
    "TokenOrigin",
    "bearer_matches",
    "load_or_create_secret",
    "resolve_token",
]

log = logging.getLogger(__name__)

TOKEN_ENV = "EXEC_SERVER_RENDEZVOUS_TOKEN"
"""Environment variable holding the bearer token (wins over the data dir file)."""

TOKEN_FILE_NAME = "token"
SECRET_FILE_NAME = "url-signing-secret"

TOKEN_BYTES = 32
"""Random bytes in a generated token (43 base64url characters)."""

PRIVATE_FILE_MODE = 0o600
PRIVATE_DIR_MODE = 0o700


class TokenOrigin(StrEnum):
    CONFIG = "config"
    ENV = "env"
    DATA_DIR = "data_dir"
    TEMP_FILE = "temp_file"


@dataclass(frozen=True)
class ResolvedToken:
    """The bearer token and where it came from. ``repr`` never shows the token."""

    token: str
    origin: TokenOrigin
    path: Path | None = None
    """The file holding the token (data dir or temp file), if any."""
    temp_dir: Path | None = None
    """A temp dir we created for the token; :meth:`cleanup` removes it."""

    def __repr__(self) -> str:
        return f"ResolvedToken(origin={self.origin.value!r}, path={self.path!r})"

    def cleanup(self) -> None:
        if self.temp_dir is not None:
            shutil.rmtree(self.temp_dir, ignore_errors=True)


def resolve_token(
    data_dir: Path | None,
    *,
    explicit: str | None = None,
    environ: Mapping[str, str] | None = None,
    shared: str | None = None,
) -> ResolvedToken:
    """Find or create the bearer token (order in the module docstring)."""
    if explicit is not None:
        if not explicit.strip():
            raise CredentialError("the configured rendezvous token is empty")
        return ResolvedToken(explicit.strip(), TokenOrigin.CONFIG)
    env_value = (os.environ if environ is None else environ).get(TOKEN_ENV)
    if env_value is not None:
        if not env_value.strip():
            raise CredentialError(f"{TOKEN_ENV} is set but empty")
        log.info("rendezvous bearer token taken from %s", TOKEN_ENV)
        return ResolvedToken(env_value.strip(), TokenOrigin.ENV)
    if data_dir is not None:
        path = ensure_private_dir(data_dir) / TOKEN_FILE_NAME
        text, created = _read_or_create(path, lambda: secrets.token_urlsafe(TOKEN_BYTES))
        if created:
            log.warning("created a new rendezvous bearer token in %s", path)
        else:
            log.info("rendezvous bearer token read from %s", path)
        return ResolvedToken(text, TokenOrigin.DATA_DIR, path)
    temp_dir = Path(tempfile.mkdtemp(prefix="exec-server-rendezvous-"))
    path = temp_dir / TOKEN_FILE_NAME
    token = shared or secrets.token_urlsafe(TOKEN_BYTES)
    _write_private(path, token)
    log.warning(
        "no --data-dir and no %s: %s a rendezvous bearer token, stored in %s (removed on exit)",
        TOKEN_ENV,
        "using the cluster's shared" if shared else "generated",
        path,
    )
    return ResolvedToken(token, TokenOrigin.TEMP_FILE, path, temp_dir)


def load_or_create_secret(data_dir: Path | None) -> bytes:
    """The URL-signing secret: persisted in ``data_dir``, else random for this process."""
    if data_dir is None:
        return secrets.token_bytes(SECRET_BYTES)
    path = ensure_private_dir(data_dir) / SECRET_FILE_NAME
    text, created = _read_or_create(path, lambda: secrets.token_hex(SECRET_BYTES))
    if created:
        log.info("created a new URL-signing secret in %s", path)
    try:
        secret = bytes.fromhex(text)
    except ValueError:
        raise CredentialError(f"{path} does not hold a hex secret") from None
    if len(secret) < MIN_SECRET_BYTES:
        raise CredentialError(f"{path} holds a secret shorter than {MIN_SECRET_BYTES} bytes")
    return secret


def ensure_private_dir(path: Path) -> Path:
    """Create ``path`` (mode 0700) if needed and return it."""
    try:
        path.mkdir(mode=PRIVATE_DIR_MODE, parents=True, exist_ok=True)
    except OSError as exc:
        raise CredentialError(f"cannot create data dir {path}: {exc}") from None
    if not path.is_dir():
        raise CredentialError(f"data dir {path} is not a directory")
    return path


def _read_or_create(path: Path, make: Callable[[], str]) -> tuple[str, bool]:
    """Read a one-line private file, creating it atomically with ``make()`` if absent."""
    created = False
    try:
        _write_private(path, make(), exclusive=True)
        created = True
    except FileExistsError:
        pass
    try:
        text = path.read_text().strip()
        mode = stat.S_IMODE(path.stat().st_mode)
    except OSError as exc:
        raise CredentialError(f"cannot read {path}: {exc}") from None
    if not text:
        raise CredentialError(f"{path} is empty")
    if mode & 0o077:
        log.warning("%s is readable by other users (mode %o); chmod 600 it", path, mode)
    return text, created


def _write_private(path: Path, text: str, *, exclusive: bool = False) -> None:
    flags = os.O_WRONLY | os.O_CREAT | (os.O_EXCL if exclusive else os.O_TRUNC)
    try:
        fd = os.open(path, flags, PRIVATE_FILE_MODE)
    except FileExistsError:
        raise
    except OSError as exc:
        raise CredentialError(f"cannot create {path}: {exc}") from None
    try:
        os.write(fd, (text + "\n").encode())
    except OSError as exc:
        os.close(fd)
        with contextlib.suppress(OSError):
            path.unlink()
        raise CredentialError(f"cannot write {path}: {exc}") from None
    os.close(fd)
