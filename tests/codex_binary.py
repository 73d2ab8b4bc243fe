"""Locating (and if need be installing) the real Codex 0.133.0 binary for the tests
that run against it: ``tests/interop`` and the rendezvous executor interop test."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
CODEX_VERSION = "0.133.0"
CODEX_BIN_ENV = "CODEX_0133_BIN"
#: Set by CI: a missing binary fails the run instead of skipping it.
REQUIRE_ENV = "EXEC_SERVER_REQUIRE_INTEROP"
INSTALL_SCRIPT = REPO_ROOT / "scripts" / "install_codex.sh"
CODEX_MISSING_REASON = (
    f"real codex {CODEX_VERSION} binary not found; run scripts/install_codex.sh "
    f"or set {CODEX_BIN_ENV}"
)

_PLATFORM_PACKAGES = {
    ("linux", "x86_64"): ("codex-linux-x64", "x86_64-unknown-linux-musl"),
    ("linux", "aarch64"): ("codex-linux-arm64", "aarch64-unknown-linux-musl"),
    ("darwin", "x86_64"): ("codex-darwin-x64", "x86_64-apple-darwin"),
    ("darwin", "arm64"): ("codex-darwin-arm64", "aarch64-apple-darwin"),
}


def find_codex_binary() -> Path | None:
    """The real Codex binary: ``$CODEX_0133_BIN``, else the project-local install."""
    env = os.environ.get(CODEX_BIN_ENV)
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
        / f"codex-{CODEX_VERSION}"
        / "node_modules"
        / "@openai"
        / pkg
        / "vendor"
        / triple
        / "bin"
        / "codex"
    )
    return path if path.is_file() and os.access(path, os.X_OK) else None


def _install_codex() -> str:
    """Run the project's installer (npm); returns its diagnostics on failure."""
    try:
        done = subprocess.run(
            ["bash", str(INSTALL_SCRIPT)], capture_output=True, text=True, timeout=600
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return str(exc)
    return "" if done.returncode == 0 else (done.stderr.strip()[-500:] or "installer failed")


def require_codex_binary() -> str:
    """The binary, installed from npm on first use; skips the test when it cannot be
    had, or fails it when ``$EXEC_SERVER_REQUIRE_INTEROP`` is set (CI)."""
    binary = find_codex_binary()
    detail = ""
    if binary is None and not os.environ.get(CODEX_BIN_ENV):
        detail = _install_codex()
        binary = find_codex_binary()
    if binary is None:
        reason = CODEX_MISSING_REASON + (f" (install attempt: {detail})" if detail else "")
        if os.environ.get(REQUIRE_ENV):
            pytest.fail(f"{REQUIRE_ENV} is set but {reason}")
        pytest.skip(reason)
    return str(binary)
