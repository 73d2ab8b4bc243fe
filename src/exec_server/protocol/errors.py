"""JSON-RPC error codes and the typed exceptions that map to them.

Handlers raise one of the :class:`RpcError` subclasses below; the connection
processor turns it into a JSON-RPC error object. This module is the only place
where numeric codes appear, so the mapping matches Codex exactly in one place.
"""

from __future__ import annotations

from typing import Any

INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
NOT_FOUND = -32004
SESSION_ALREADY_ATTACHED = -32010


class RpcError(Exception):
    """An error that is answered to the peer as a JSON-RPC error object."""

    code: int = INTERNAL_ERROR

    def __init__(self, message: str, *, data: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.data = data

    def to_error_object(self) -> dict[str, Any]:
        obj: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.data is not None:
            obj["data"] = self.data
        return obj


class InvalidRequest(RpcError):
    """-32600: lifecycle violations, duplicates, unknown processes, fs permission errors."""

    code = INVALID_REQUEST


class MethodNotFound(RpcError):
    """-32601: a request for a method this server does not implement."""

    code = METHOD_NOT_FOUND

    def __init__(self, method: str) -> None:
        # The wording is Codex's; the acceptance test checks that the method is named.
        super().__init__(f"exec-server stub does not implement `{method}` yet")


class InvalidParams(RpcError):
    """-32602: params that do not decode into the method's parameter type."""

    code = INVALID_PARAMS


class InternalError(RpcError):
    """-32603: spawn failures, stdin write failures, unexpected I/O errors."""

    code = INTERNAL_ERROR


class NotFound(RpcError):
    """-32004: a filesystem path (or its parent) does not exist."""

    code = NOT_FOUND


class SessionAlreadyAttached(RpcError):
    """A resume of a session that another live connection holds.

    Codex 0.133 answers this with -32600; later Codex uses -32010. We follow the
    observed 0.133 binary (the wire reference for this project).
    """

    code = INVALID_REQUEST
