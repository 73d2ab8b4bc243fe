"""The base of every typed message, and the sandbox intent several of them carry."""

from __future__ import annotations

from typing import Any

import msgspec


class Message(msgspec.Struct, rename="camel"):
    """Base of every typed message."""


class Empty(Message):
    """Encodes as ``{}``."""


#: Codex's ``FileSystemSandboxContext`` (a portable sandbox intent), kept as decoded
#: JSON: ``environment/sandbox.py`` parses and validates it.
Sandbox = dict[str, Any] | None
