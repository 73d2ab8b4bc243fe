"""``process/*``: start, read, write, signal, resize, terminate, and the notifications."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import msgspec
from msgspec import UNSET, UnsetType

from .base import Message, Sandbox

#: ``process/start`` result ``sandboxType`` (Codex 0.171's ``ProcessSandboxType``).
ProcessSandboxType = Literal["none", "linuxSeccomp", "macosSeatbelt", "windowsRestrictedToken"]

InheritPolicy = Literal["core", "all", "none"]


class EnvPolicy(Message):
    """Codex's ``ShellEnvironmentPolicy``: build the child env from the server's."""

    inherit: InheritPolicy = "all"
    ignore_default_excludes: bool = False
    exclude: list[str] = msgspec.field(default_factory=list)
    set: dict[str, str] = msgspec.field(default_factory=dict)
    include_only: list[str] = msgspec.field(default_factory=list)


class ProcessMetadata(Message):
    """Codex 0.171 ``ExecMetadata``: which thread and tool call started a process."""

    thread_id: str | None = None
    tool_call_id: str | None = None


class ProcessStartParams(Message):
    rust_name: ClassVar[str] = "ExecParams"
    process_id: str
    argv: list[str]
    cwd: str
    env: dict[str, str]
    tty: bool
    pipe_stdin: bool = False
    arg0: str | None = None
    env_policy: EnvPolicy | None = None
    # Codex 0.171: who asked, the confinement to apply in the child (``null``: none),
    # and the managed-network settings.
    metadata: ProcessMetadata | None = None
    sandbox: Sandbox = None
    enforce_managed_network: bool = False
    managed_network: dict[str, Any] | None = None
    # Our extension: initial PTY size (Codex uses 24x80).
    rows: int | UnsetType = UNSET
    cols: int | UnsetType = UNSET
    # Our extension: largest raw output chunk per notification (Codex: 8 KiB). Fewer,
    # larger messages cost less per byte, above all through a relay.
    output_chunk_bytes: int | UnsetType = UNSET


class ProcessStartResult(Message):
    process_id: str
    # Codex 0.171 (absent for 0.133 clients): the confinement the child runs under.
    sandbox_type: ProcessSandboxType | UnsetType = UNSET


OutputStream = Literal["stdout", "stderr", "pty"]


class ProcessOutputChunk(Message):
    seq: int
    stream: OutputStream
    chunk: bytes


class ProcessReadParams(Message):
    rust_name: ClassVar[str] = "ReadParams"
    process_id: str
    after_seq: int | None = None
    max_bytes: int | None = None
    wait_ms: int | None = None


class ProcessReadResult(Message):
    chunks: list[ProcessOutputChunk]
    next_seq: int
    exited: bool
    exit_code: int | None
    closed: bool
    failure: str | None = None
    # Codex 0.171 (absent for 0.133 clients): the failure was a sandbox denial.
    sandbox_denied: bool | UnsetType = UNSET
    # Our extension: set only when output after ``afterSeq`` was evicted from the
    # retention buffer; names the first seq still retained so the gap is explicit.
    first_retained_seq: int | UnsetType = UNSET


class ProcessWriteParams(Message):
    rust_name: ClassVar[str] = "WriteParams"
    process_id: str
    chunk: bytes
    write_id: str | None = None


WriteStatus = Literal["accepted", "unknownProcess", "stdinClosed", "starting"]


class ProcessWriteResult(Message):
    status: WriteStatus


class ProcessTerminateParams(Message):
    rust_name: ClassVar[str] = "TerminateParams"
    process_id: str


class ProcessTerminateResult(Message):
    running: bool


SignalName = Literal["interrupt", "terminate", "kill", "hangup", "quit"]


class ProcessSignalParams(Message):
    rust_name: ClassVar[str] = "SignalParams"
    process_id: str
    signal: SignalName


class ProcessResizeParams(Message):
    """Our extension: resize a PTY process's window."""

    rust_name: ClassVar[str] = "ResizeParams"
    process_id: str
    rows: int
    cols: int


class ProcessOutputNotification(Message):
    process_id: str
    seq: int
    stream: OutputStream
    chunk: bytes


class ProcessExitedNotification(Message):
    process_id: str
    seq: int
    exit_code: int
    # Codex 0.171 (absent for 0.133 clients): the failure was a sandbox denial.
    sandbox_denied: bool | UnsetType = UNSET


class ProcessClosedNotification(Message):
    process_id: str
    seq: int
