"""The harness SDK: drive an exec-server (processes and files) from Python.

::

    from exec_server.client import ExecServerClient

    async with ExecServerClient.connect("ws://127.0.0.1:8765") as client:
        result = await client.run(["uname", "-a"])

See :class:`ExecServerClient` and the README's SDK section. Every error raised here
is an :class:`ExecServerError`.
"""

from ..transport.relay_status import RelayStatus, StatusCallback
from .client import DEFAULT_RUN_OUTPUT_BYTES, ExecServerClient
from .config import (
    DEFAULT,
    DEFAULT_OUTPUT_CHUNK_BYTES,
    ClientConfig,
    Timeout,
    Timeouts,
)
from .connect import Connecting
from .errors import (
    ConnectError,
    ExecServerError,
    ProcessFailed,
    ProcessTimeout,
    RegistryError,
    RequestTimeout,
    ServerError,
    SessionExpired,
    TransportClosed,
)
from .events import ClosedEvent, ExitedEvent, FailedEvent, OutputEvent, ProcessEvent
from .fs import FileSystem
from .info import EnvironmentInfo, local_path
from .process import ProcessHandle, ProcessResult

__all__ = [
    "DEFAULT",
    "DEFAULT_OUTPUT_CHUNK_BYTES",
    "DEFAULT_RUN_OUTPUT_BYTES",
    "ClientConfig",
    "ClosedEvent",
    "ConnectError",
    "Connecting",
    "EnvironmentInfo",
    "ExecServerClient",
    "ExecServerError",
    "ExitedEvent",
    "FailedEvent",
    "FileSystem",
    "OutputEvent",
    "ProcessEvent",
    "ProcessFailed",
    "ProcessHandle",
    "ProcessResult",
    "ProcessTimeout",
    "RegistryError",
    "RelayStatus",
    "RequestTimeout",
    "ServerError",
    "SessionExpired",
    "StatusCallback",
    "Timeout",
    "Timeouts",
    "TransportClosed",
    "local_path",
]
