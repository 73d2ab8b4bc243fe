"""``initialize``: the params and the result."""

from __future__ import annotations

from typing import ClassVar

from msgspec import UNSET, UnsetType

from .base import Message
from .environment import EnvironmentInfoResult


class InitializeParams(Message):
    rust_name: ClassVar[str] = "InitializeParams"
    client_name: str
    resume_session_id: str | None = None


class InitializeResult(Message):
    session_id: str
    # Codex 0.171: what the harness needs to know about this environment (0.133
    # clients ignore it, as serde ignores unknown fields).
    environment_info: EnvironmentInfoResult | UnsetType = UNSET
