"""Harness SDK: :class:`ExecServerClient` and process handles."""

from .client import (
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
