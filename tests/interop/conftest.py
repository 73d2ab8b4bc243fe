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
from codex_binary import CODEX_0171, require_codex_binary
from interop_support import ERA_0171, Differ, Target, interop_mode


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


@pytest.fixture(scope="session")
def codex_home_0171(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One CODEX_HOME for both servers of a 0.171 comparison (its paths appear in
    ``environmentConfig/read`` answers; 0.171 would otherwise use ``~/.codex``)."""
    return tmp_path_factory.mktemp("codex-home-0171")


@pytest.fixture(scope="session")
def codex0171_target(codex_home_0171: Path) -> Target:
    binary = require_codex_binary(CODEX_0171)
    return Target.codex(Path(binary), {"CODEX_HOME": str(codex_home_0171)})


@pytest.fixture
def differ0171(
    codex0171_target: Target, codex_home_0171: Path, request: pytest.FixtureRequest
) -> Differ:
    """Codex 0.171.0 as the reference: the contract of today's harness."""
    if interop_mode() == "diff":
        candidate = Target.ours({"CODEX_HOME": str(codex_home_0171)})
    else:
        candidate = codex0171_target
    return Differ(codex0171_target, candidate, request.node.name, era=ERA_0171)
