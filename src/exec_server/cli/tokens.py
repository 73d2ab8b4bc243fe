"""Reading bearer tokens for the CLI: from a file option or an environment variable.

Tokens are never printed or logged; errors name the file or the variable only.
"""

from __future__ import annotations

import os
from pathlib import Path

import click


def read_token_file(path: Path, option: str) -> str:
    """The stripped contents of ``path``; a usage error if unreadable or empty."""
    try:
        token = path.read_text().strip()
    except OSError as exc:
        raise click.UsageError(f"cannot read {option} {path}: {exc.strerror or exc}") from None
    if not token:
        raise click.UsageError(f"{option} {path} is empty")
    return token


def read_token(path: Path | None, option: str, env_var: str, *, required: bool) -> str | None:
    """The token from ``path`` (the ``option`` given), else from ``env_var``.

    An empty variable is a usage error (it is almost always a mistake); a missing one
    is too when ``required``.
    """
    if path is not None:
        return read_token_file(path, option)
    value = os.environ.get(env_var)
    if value is None:
        if required:
            raise click.UsageError(f"a bearer token is required: set {env_var} or pass {option}")
        return None
    token = value.strip()
    if not token:
        raise click.UsageError(f"{env_var} is set but empty")
    return token
