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

from pathlib import Path

import pytest
from codex_binary import require_codex_binary
from interop_support import Differ, Target, interop_mode


@pytest.fixture(scope="session")
def codex_binary() -> str:
    """The real Codex 0.133.0 binary, installed from npm on first use."""
    return require_codex_binary()


@pytest.fixture(scope="session")
def codex_target(codex_binary: str) -> Target:
    return Target.codex(Path(codex_binary))


@pytest.fixture
def differ(codex_target: Target, request: pytest.FixtureRequest) -> Differ:
    candidate = Target.ours() if interop_mode() == "diff" else codex_target
    return Differ(codex_target, candidate, request.node.name)
