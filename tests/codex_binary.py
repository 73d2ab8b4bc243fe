"""Locating (and if need be installing) the real Codex binaries for the tests that run
against them: the seed-era 0.133.0 and today's 0.171.0.

``require_codex_binary()`` gives 0.133.0 (``$CODEX_0133_BIN`` overrides the location);
``require_codex_binary(CODEX_0171)`` gives 0.171.0 (``$CODEX_0171_BIN``)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
CODEX_0133 = "0.133.0"
CODEX_0171 = "0.171.0"
#: The default version (the seed era), kept for callers that name no version.
CODEX_VERSION = CODEX_0133
#: Set by CI: a missing binary fails the run instead of skipping it.
REQUIRE_ENV = "EXEC_SERVER_REQUIRE_INTEROP"
INSTALL_SCRIPT = REPO_ROOT / "scripts" / "install_codex.sh"

_PLATFORM_PACKAGES = {
    ("linux", "x86_64"): ("codex-linux-x64", "x86_64-unknown-linux-musl"),
    ("linux", "aarch64"): ("codex-linux-arm64", "aarch64-unknown-linux-musl"),
    ("darwin", "x86_64"): ("codex-darwin-x64", "x86_64-apple-darwin"),
    ("darwin", "arm64"): ("codex-darwin-arm64", "aarch64-apple-darwin"),
}


def binary_env_var(version: str = CODEX_0133) -> str:
    """The variable that overrides where the binary of ``version`` is: ``CODEX_0133_BIN``."""
    major_minor = "".join(version.split(".")[:2])
    return f"CODEX_{major_minor.zfill(4)}_BIN"


#: Kept for callers of the single-version locator.
CODEX_BIN_ENV = binary_env_var(CODEX_0133)


def missing_reason(version: str = CODEX_0133) -> str:
    return (
        f"real codex {version} binary not found; run "
        f"CODEX_VERSION={version} scripts/install_codex.sh or set {binary_env_var(version)}"
    )


CODEX_MISSING_REASON = missing_reason(CODEX_0133)


def find_codex_binary(version: str = CODEX_0133) -> Path | None:
    """The real Codex binary of ``version``: its ``$CODEX_xxxx_BIN``, else the
    project-local install under ``.interop/codex-<version>``."""
    env = os.environ.get(binary_env_var(version))
    if env:
        path = Path(env)
        return path if path.is_file() and os.access(path, os.X_OK) else None
    key = (sys.platform, os.uname().machine)
    if key not in _PLATFORM_PACKAGES:
        return None
    pkg, triple = _PLATFORM_PACKAGES[key]
    path = (
        REPO_ROOT
        / ".interop"
        / f"codex-{version}"
        / "node_modules"
        / "@openai"
        / pkg
        / "vendor"
        / triple
        / "bin"
        / "codex"
    )
    return path if path.is_file() and os.access(path, os.X_OK) else None


def _install_codex(version: str) -> str:
    """Run the project's installer (npm); returns its diagnostics on failure."""
    try:
        done = subprocess.run(
            ["bash", str(INSTALL_SCRIPT)],
            capture_output=True,
            text=True,
            timeout=600,
            env={**os.environ, "CODEX_VERSION": version},
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return str(exc)
    return "" if done.returncode == 0 else (done.stderr.strip()[-500:] or "installer failed")


def require_codex_binary(version: str = CODEX_0133) -> str:
    """The binary of ``version``, installed from npm on first use; skips the test when
    it cannot be had, or fails it when ``$EXEC_SERVER_REQUIRE_INTEROP`` is set (CI)."""
    binary = find_codex_binary(version)
    detail = ""
    if binary is None and not os.environ.get(binary_env_var(version)):
        detail = _install_codex(version)
        binary = find_codex_binary(version)
    if binary is None:
        reason = missing_reason(version) + (f" (install attempt: {detail})" if detail else "")
        if os.environ.get(REQUIRE_ENV):
            pytest.fail(f"{REQUIRE_ENV} is set but {reason}")
        pytest.skip(reason)
    return str(binary)
