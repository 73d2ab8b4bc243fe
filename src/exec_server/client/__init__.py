"""Harness SDK: :class:`ExecServerClient` and process handles."""

from .client import (
    DEFAULT_OUTPUT_CHUNK_BYTES,
    ClientTimeouts,
    ClosedEvent,
    ExecServerClient,
    ExitedEvent,
    FailedEvent,
    OutputEvent,
    ProcessEvent,
    ProcessFailed,
    ProcessHandle,
    ProcessResult,
)
from .rpc import TransportClosed

__all__ = [
    "DEFAULT_OUTPUT_CHUNK_BYTES",
    "ClientTimeouts",
    "ClosedEvent",
    "ExecServerClient",
    "ExitedEvent",
    "FailedEvent",
    "OutputEvent",
    "ProcessEvent",
    "ProcessFailed",
    "ProcessHandle",
    "ProcessResult",
    "TransportClosed",
]
