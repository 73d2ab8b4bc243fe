"""Every error the harness SDK raises, under one base: :class:`ExecServerError`.

::

    ExecServerError
    ├── ServerError          the server answered a request with a JSON-RPC error (``code``)
    ├── ConnectError         could not connect (dial, upgrade, registry, handshake)
    ├── TransportClosed      the connection ended and could not be recovered
    ├── RequestTimeout       no answer within the timeout (also a ``TimeoutError``)
    │   └── ProcessTimeout   ``run`` ran out of time; the process was terminated
    ├── ProcessFailed        a process's events ended before ``closed``
    ├── SessionExpired       the server no longer has the session to resume
    └── RegistryError        the registry refused or failed (``status``, ``code``)

Recovery and callers decide by type (and by ``code``/``status``/``transient``),
never by matching message text: the one place that maps wire text to a type is
:func:`resume_error`, because Codex signals an expired session only by message.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from ..errors import ExecServerError
from ..protocol.errors import INVALID_REQUEST
from ..transport.registry_client import RegistryError

if TYPE_CHECKING:
    from .process import ProcessResult

__all__ = [
    "ConnectError",
    "ExecServerError",
    "ProcessFailed",
    "ProcessTimeout",
    "RegistryError",
    "RequestTimeout",
    "ServerError",
    "SessionExpired",
    "TransportClosed",
    "resume_error",
]


class ServerError(ExecServerError):
    """The server answered ``method`` with a JSON-RPC error.

    ``code`` is the JSON-RPC code (see :mod:`exec_server.protocol.errors`: -32600
    invalid request, -32601 method not found, -32602 invalid params, -32603 internal
    error, -32004 not found); ``message`` is the server's text, unchanged.
    """

    def __init__(self, code: int, message: str, data: Any = None, method: str = "") -> None:
        super().__init__(code, message, data, method)
        self.code = code
        self.message = message
        self.data = data
        self.method = method

    def __str__(self) -> str:
        return f"{self.message} (code {self.code})"

    @property
    def os_errno(self) -> int | None:
        """The errno of an OS error the server reports (Codex ends those messages with
        Rust's ``(os error N)``, e.g. a failed spawn or file operation), else ``None``."""
        match = _OS_ERROR.search(self.message)
        return int(match.group(1)) if match else None


_OS_ERROR = re.compile(r"\(os error (\d+)\)$")


class ConnectError(ExecServerError):
    """Connecting failed: refused, timed out, rejected at the upgrade or by the registry.

    ``status`` is the HTTP status that refused us, when there was one. ``transient``
    says whether trying again later may succeed.
    """

    def __init__(self, message: str, *, status: int | None = None, transient: bool = True) -> None:
        super().__init__(message)
        self.status = status
        self.transient = transient


class TransportClosed(ExecServerError):
    """The connection to the exec-server ended (and, if recovery was on, could not be
    recovered); ``reason`` says why. Every pending and later call raises it."""

    transient = True

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class RequestTimeout(ExecServerError, TimeoutError):
    """No answer to ``method`` within ``timeout`` seconds; the request was abandoned
    (a late answer is ignored) and the connection stays usable."""

    transient = True

    def __init__(self, message: str, *, method: str = "", timeout: float | None = None) -> None:
        super().__init__(message)
        self.method = method
        self.timeout = timeout


class ProcessTimeout(RequestTimeout):
    """:meth:`~exec_server.client.ExecServerClient.run` ran out of time. The process was
    asked to terminate; ``result`` holds the output gathered until then."""

    def __init__(self, message: str, *, timeout: float, result: ProcessResult) -> None:
        super().__init__(message, method="process/start", timeout=timeout)
        self.result = result


class ProcessFailed(ExecServerError):
    """A process's event stream ended without ``closed``: the connection was lost for
    good, or output was evicted while disconnected. ``process_id`` names it."""

    def __init__(self, message: str, *, process_id: str = "") -> None:
        super().__init__(message)
        self.process_id = process_id


class SessionExpired(ExecServerError):
    """The server no longer has the session (its detached lifetime ran out), so it
    cannot be resumed; its processes are gone."""

    def __init__(self, message: str, *, session_id: str = "") -> None:
        super().__init__(message)
        self.session_id = session_id


def resume_error(exc: ServerError, session_id: str) -> ExecServerError:
    """Classify the error answer to ``initialize{resumeSessionId}``.

    Codex answers an unknown (expired) session with -32600 ``unknown session id X``
    and a session still held by another connection with -32600 ``session X is
    already attached...``; only the text tells them apart, so it is read here and
    nowhere else. The first becomes :class:`SessionExpired`; anything else stays a
    :class:`ServerError`, marked transient (an old connection may still be letting
    go: retry).
    """
    if exc.code == INVALID_REQUEST and exc.message.startswith("unknown session id"):
        return SessionExpired(f"session {session_id} expired: {exc.message}", session_id=session_id)
    exc.transient = True
    return exc
