"""Fixtures for the differential suite: real Codex 0.133.0 vs our exec-server.

Modes (``$INTEROP_MODE``):

* ``diff`` (default): every script runs against Codex and against ours; the normalized
  transcripts must be equal.
* ``codex``: every script runs twice against Codex (self-consistency). Use it to check
  that a script is deterministic before blaming a mismatch on our server.

Set ``$INTEROP_RECORD_DIR`` to dump the normalized Codex transcripts (the README table
is generated from them with ``python tests/interop/make_table.py DIR``).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from interop_support import CODEX_MISSING_REASON, Differ, Target, find_codex_binary, interop_mode

INSTALL_SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "install_codex.sh"
#: Set by CI: a missing binary fails the run instead of skipping it.
REQUIRE_ENV = "EXEC_SERVER_REQUIRE_INTEROP"


def _install_codex() -> str:
    """Run the project's installer (npm); returns its diagnostics on failure."""
    try:
        done = subprocess.run(
            ["bash", str(INSTALL_SCRIPT)], capture_output=True, text=True, timeout=600
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return str(exc)
    return "" if done.returncode == 0 else (done.stderr.strip()[-500:] or "installer failed")


@pytest.fixture(scope="session")
def codex_binary() -> str:
    """The real Codex 0.133.0 binary, installed from npm on first use."""
    binary = find_codex_binary()
    detail = ""
    if binary is None and not os.environ.get("CODEX_0133_BIN"):
        detail = _install_codex()
        binary = find_codex_binary()
    if binary is None:
        reason = CODEX_MISSING_REASON + (f" (install attempt: {detail})" if detail else "")
        if os.environ.get(REQUIRE_ENV):
            pytest.fail(f"{REQUIRE_ENV} is set but {reason}")
        pytest.skip(reason)
    return str(binary)


@pytest.fixture(scope="session")
def codex_target(codex_binary: str) -> Target:
    return Target.codex(Path(codex_binary))


@pytest.fixture
def differ(codex_target: Target, request: pytest.FixtureRequest) -> Differ:
    candidate = Target.ours() if interop_mode() == "diff" else codex_target
    return Differ(codex_target, candidate, request.node.name)
