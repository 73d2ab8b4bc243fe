"""Typed params, results and notifications of the exec-server JSON-RPC API.

Field names are snake_case in Python and camelCase on the wire (``rename="camel"``).
``bytes`` fields travel as standard padded base64 strings; msgspec encodes and decodes
them natively, so no handler touches base64 for those.

Each params type names its Rust struct (``rust_name``: 0.133's name for the methods
0.133 has, 0.171's for the later ones, ours for our extensions), because serde
names it in the error for absent or ``null`` params.

Unknown fields are ignored on input, as the Rust server's serde types do. Fields
that are ``UNSET`` by default are our extensions and are omitted from the wire unless
set, so Codex clients see byte-compatible shapes.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

import msgspec
from msgspec import UNSET, UnsetType


class Message(msgspec.Struct, rename="camel"):
    """Base of every typed message."""


class Empty(Message):
    """Encodes as ``{}``."""


# --- session -------------------------------------------------------------------


class InitializeParams(Message):
    rust_name: ClassVar[str] = "InitializeParams"
    client_name: str
    resume_session_id: str | None = None


class InitializeResult(Message):
    session_id: str
    # Codex 0.171: what the harness needs to know about this environment (0.133
    # clients ignore it, as serde ignores unknown fields).
    environment_info: EnvironmentInfoResult | UnsetType = UNSET


# --- processes -----------------------------------------------------------------

#: Codex's ``FileSystemSandboxContext`` (a portable sandbox intent), kept as decoded
#: JSON: ``environment/sandbox.py`` parses and validates it.
Sandbox = dict[str, Any] | None

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


# --- filesystem ----------------------------------------------------------------


class FsReadFileParams(Message):
    rust_name: ClassVar[str] = "FsReadFileParams"
    path: str
    sandbox: Sandbox = None
    max_bytes: int | None = None
    # Our extension: a ranged read of ``length`` bytes (default: to the end) from
    # ``offset``, for streaming files larger than one message. A range past the end
    # returns what exists (possibly nothing).
    offset: int | UnsetType = UNSET
    length: int | UnsetType = UNSET


class FsReadFileResult(Message):
    data_base64: bytes


class FsWriteFileParams(Message):
    rust_name: ClassVar[str] = "FsWriteFileParams"
    path: str
    # Kept as a string so invalid base64 maps to Codex's -32600, not a decode error.
    data_base64: str
    sandbox: Sandbox = None
    # Our extension: write at ``offset`` without truncating (the file must exist),
    # for streaming files larger than one message.
    offset: int | UnsetType = UNSET


class FsChecksumParams(Message):
    """Our extension: hash a file on the server (no transfer needed to verify it)."""

    rust_name: ClassVar[str] = "FsChecksumParams"
    path: str
    algorithm: Literal["sha256"] = "sha256"
    sandbox: Sandbox = None


class FsChecksumResult(Message):
    algorithm: str
    digest: str
    size: int


class FsCreateDirectoryParams(Message):
    rust_name: ClassVar[str] = "FsCreateDirectoryParams"
    path: str
    recursive: bool = True
    sandbox: Sandbox = None


class FsGetMetadataParams(Message):
    rust_name: ClassVar[str] = "FsGetMetadataParams"
    path: str
    sandbox: Sandbox = None


class FsMetadata(Message):
    is_directory: bool
    is_file: bool
    is_symlink: bool
    created_at_ms: int
    modified_at_ms: int
    size: int


class FsReadDirectoryParams(Message):
    rust_name: ClassVar[str] = "FsReadDirectoryParams"
    path: str
    sandbox: Sandbox = None


class FsDirectoryEntry(Message):
    file_name: str
    is_directory: bool
    is_file: bool


class FsReadDirectoryResult(Message):
    entries: list[FsDirectoryEntry]


class FsRemoveParams(Message):
    rust_name: ClassVar[str] = "FsRemoveParams"
    path: str
    recursive: bool = True
    force: bool = True
    sandbox: Sandbox = None


class FsCopyParams(Message):
    rust_name: ClassVar[str] = "FsCopyParams"
    source_path: str
    destination_path: str
    recursive: bool
    sandbox: Sandbox = None


class FsCanonicalizeParams(Message):
    rust_name: ClassVar[str] = "WireFsCanonicalizeParams"
    path: str
    sandbox: Sandbox = None


class FsCanonicalizeResult(Message):
    path: str


FsOpenMode = Literal["read", "replace"]


class FsOpenParams(Message):
    """Codex 0.171: open a handle for block reads, or (``replace``) block writes."""

    rust_name: ClassVar[str] = "WireFsOpenParams"
    handle_id: str
    path: str
    mode: FsOpenMode = "read"
    sandbox: Sandbox = None


class FsOpenResult(Message):
    handle_id: str


class FsReadBlockParams(Message):
    rust_name: ClassVar[str] = "FsReadBlockParams"
    handle_id: str
    offset: Annotated[int, msgspec.Meta(ge=0)]
    len: Annotated[int, msgspec.Meta(ge=0)]


class FsReadBlockResult(Message):
    chunk: bytes
    #: Fewer than ``len`` bytes were left at ``offset``.
    eof: bool


class FsWriteBlockParams(Message):
    rust_name: ClassVar[str] = "FsWriteBlockParams"
    handle_id: str
    offset: Annotated[int, msgspec.Meta(ge=0)]
    chunk: bytes


class FsCloseParams(Message):
    rust_name: ClassVar[str] = "FsCloseParams"
    handle_id: str


class FsWalkOptions(Message):
    #: Directory levels below the root's own entries that may be descended into.
    max_depth: Annotated[int, msgspec.Meta(ge=0)]
    #: Directories that may be listed, the root included.
    max_directories: Annotated[int, msgspec.Meta(ge=0)]
    #: Directory entries that may be examined (listed or not).
    max_entries: Annotated[int, msgspec.Meta(ge=0)]
    follow_directory_symlinks: bool
    #: List directories whose names start with ``.`` but do not descend into them.
    prune_hidden_directories: bool = False


class FsWalkParams(Message):
    rust_name: ClassVar[str] = "WireFsWalkParams"
    path: str
    options: FsWalkOptions
    sandbox: Sandbox = None


WalkEntryKind = Literal["directory", "file"]


class FsWalkEntry(Message):
    path: str
    kind: WalkEntryKind


class FsWalkError(Message):
    path: str
    message: str


class FsWalkResult(Message):
    entries: list[FsWalkEntry]
    errors: list[FsWalkError]
    truncated: bool


class FsWatchMissingParams(Message):
    """Codex 0.171: tell me (once) when one of ``missing`` appears or ``present`` changes."""

    rust_name: ClassVar[str] = "FsWatchMissingParams"
    watch_id: Annotated[int, msgspec.Meta(ge=0)]
    missing: list[str]
    present: str | None = None


class FsWatchMissingResult(Message):
    #: False when there is nothing to wait for (a path already exists, ``present`` is
    #: gone, no paths, or a stale ``watchId``): the caller should look again now.
    watching: bool


class FsMissingChangedNotification(Message):
    watch_id: int


# --- http ----------------------------------------------------------------------


class HttpHeader(Message):
    """One header line; lists of these keep order and repeated names."""

    name: str
    value: str


class HttpRequestParams(Message):
    rust_name: ClassVar[str] = "HttpRequestParams"
    method: str
    #: Absolute ``http://`` or ``https://`` URL.
    url: str
    #: Names the ``http/request/bodyDelta`` stream; required even when buffered.
    request_id: str
    headers: list[HttpHeader] = msgspec.field(default_factory=list)
    body_base64: bytes | None = None
    #: Whole-request deadline; omitted or null means no timeout.
    timeout_ms: Annotated[int, msgspec.Meta(ge=0)] | None = None
    #: Answer once the headers arrive and stream the body as notifications.
    stream_response: bool = False
    #: Codex 0.171: follow redirects (at most 10) or answer the 3xx itself.
    redirect_policy: Literal["follow", "stop"] = "follow"


class HttpRequestResult(Message):
    status: int
    headers: list[HttpHeader]
    #: Empty when the body is streamed.
    body_base64: bytes


class HttpRequestBodyDeltaNotification(Message):
    request_id: str
    #: 1, 2, 3... per stream.
    seq: int
    delta_base64: bytes
    #: Set on the last notification of a stream only.
    done: bool
    #: Set (with ``done``) when the body could not be read to the end.
    error: str | None = None


# --- environment ---------------------------------------------------------------


class ShellInfo(Message):
    name: str
    path: str


class EnvironmentCapabilities(Message):
    """Codex 0.171 ``EnvironmentCapabilities``: a flag is true only for a feature this
    server implements (the harness switches each feature off when its flag is
    false). Field order is 0.171's."""

    network_proxy_launch: bool = False
    network_proxy_review_domains: bool = False
    network_proxy_transparent_tcp: bool = False
    credential_masking: bool = False
    credential_masking_custom_providers: bool = False
    capability_discovery_sandbox: bool = False
    fs_watch_missing: bool = False
    capability_discovery_v2: bool = False
    environment_config_read: bool = False
    http_header_env_vars: bool = False
    sandboxed_file_streaming: bool = False
    file_write_streaming: bool = False
    shell_snapshot_v2: bool = False
    windows_mxc: bool = False
    linux_root_write_preserves_devices: bool = False
    linux_approved_root_write_preserves_restrictions: bool = False


class EnvironmentInfoResult(Message):
    """Codex 0.171 ``EnvironmentInfo`` (``environment/info``, and ``environmentInfo``
    in the ``initialize`` result). Directories are ``file://`` URIs."""

    shell: ShellInfo
    executor_version: str | UnsetType = UNSET
    provider_id: str | UnsetType = UNSET
    cwd: str | UnsetType = UNSET
    user_home_dir: str | UnsetType = UNSET
    platform_os: str | UnsetType = UNSET
    prepend_path_dirs: list[str] | UnsetType = UNSET
    temporary_directories: list[str] | UnsetType = UNSET
    temp_dir: str | UnsetType = UNSET
    capabilities: EnvironmentCapabilities | UnsetType = UNSET


class EnvironmentConfigReadParams(Message):
    """Codex 0.171: the config (and requirements) key paths wanted, e.g. ``[["mcp_servers"]]``."""

    rust_name: ClassVar[str] = "EnvironmentConfigReadParams"
    cwd: str
    config_paths: list[list[str]]
    requirements_paths: list[list[str]]


class ConfigLayer(Message):
    #: Where it comes from, e.g. ``user (/root/.codex/config.toml)``.
    source: str
    base_dir: str
    #: The requested key paths of that file, as TOML.
    toml: str


class ConfigLayers(Message):
    layers: list[ConfigLayer]
    cloud_insertion_index: int = 0


class EnvironmentConfigReadResult(Message):
    user_home_dir: str
    codex_home_dir: str
    hostname: str
    config: ConfigLayers
    requirements: ConfigLayers


# --- capability discovery (Codex 0.171) ----------------------------------------


class CapabilityTextFile(Message):
    """A recognised UTF-8 capability file, read by the executor."""

    path: str
    contents: str


class DiscoveredPluginFiles(Message):
    manifest: CapabilityTextFile
    mcp_config: CapabilityTextFile | None = None
    apps_config: CapabilityTextFile | None = None


class DiscoveredSkillFiles(Message):
    instructions: CapabilityTextFile
    metadata: CapabilityTextFile | None = None


class CapabilityRootRequest(Message):
    id: str
    path: str
    sandbox: Sandbox = None


class CapabilityRootsDiscoverParams(Message):
    rust_name: ClassVar[str] = "WireCapabilityRootsDiscoverParams"
    roots: list[CapabilityRootRequest]


class CapabilityRootDiscovery(Message):
    id: str
    path: str
    plugin: DiscoveredPluginFiles | None = None
    skills: list[DiscoveredSkillFiles] = msgspec.field(default_factory=list)
    namespace_manifests: list[CapabilityTextFile] = msgspec.field(default_factory=list)
    warnings: list[str] = msgspec.field(default_factory=list)
    error: str | None = None


class CapabilityRootsDiscoverResult(Message):
    roots: list[CapabilityRootDiscovery]


class DiscoverCapabilitiesParams(Message):
    rust_name: ClassVar[str] = "DiscoverV2CapabilitiesRequest"
    cwd: str
    sandbox: Sandbox = None


class SkillToolDependency(Message):
    type: str
    value: str
    description: str | None = None
    transport: str | None = None
    command: str | None = None
    url: str | None = None
    oauth_callback_port: int | None = None


class SkillDependencies(Message):
    tools: list[SkillToolDependency]


class SkillPolicy(Message):
    allow_implicit_invocation: bool | None = None
    products: list[str] = msgspec.field(default_factory=list)


class SkillDiscoveryRoot(Message):
    id: str
    path: str


class ExecutorSkill(Message):
    #: Qualified as ``<plugin namespace>:<name>`` inside a plugin.
    name: str
    description: str
    short_description: str | None
    #: The ``SKILL.md`` file.
    path: str
    #: Where a standalone skill was found (absent for a plugin's skills).
    discovery_root: SkillDiscoveryRoot | UnsetType = UNSET
    dependencies: SkillDependencies | None = None
    policy: SkillPolicy | None = None


class ExecutorPlugin(Message):
    #: ``<name>@<marketplace>``.
    id: str
    display_name: str
    remote_plugin_id: str | None
    version: str
    root: str
    files: DiscoveredPluginFiles
    skills: list[ExecutorSkill]


class DiscoverCapabilitiesResult(Message):
    plugins: list[ExecutorPlugin] = msgspec.field(default_factory=list)
    skills: list[ExecutorSkill] = msgspec.field(default_factory=list)
    warnings: list[str] = msgspec.field(default_factory=list)


class EnvironmentStatusResult(Message):
    status: Literal["ready"] = "ready"


# --- method names --------------------------------------------------------------

INITIALIZE = "initialize"
INITIALIZED = "initialized"
PROCESS_START = "process/start"
PROCESS_READ = "process/read"
PROCESS_WRITE = "process/write"
PROCESS_TERMINATE = "process/terminate"
PROCESS_SIGNAL = "process/signal"
PROCESS_RESIZE = "process/resize"
PROCESS_OUTPUT = "process/output"
PROCESS_EXITED = "process/exited"
PROCESS_CLOSED = "process/closed"
FS_READ_FILE = "fs/readFile"
FS_WRITE_FILE = "fs/writeFile"
FS_CREATE_DIRECTORY = "fs/createDirectory"
FS_GET_METADATA = "fs/getMetadata"
FS_READ_DIRECTORY = "fs/readDirectory"
FS_REMOVE = "fs/remove"
FS_COPY = "fs/copy"
FS_CHECKSUM = "fs/checksum"
FS_CANONICALIZE = "fs/canonicalize"
FS_OPEN = "fs/open"
FS_READ_BLOCK = "fs/readBlock"
FS_WRITE_BLOCK = "fs/writeBlock"
FS_CLOSE = "fs/close"
FS_WALK = "fs/walk"
FS_WATCH_MISSING = "fs/watchMissing"
FS_MISSING_CHANGED = "fs/missingChanged"
ENVIRONMENT_INFO = "environment/info"
ENVIRONMENT_STATUS = "environment/status"
ENVIRONMENT_CONFIG_READ = "environmentConfig/read"
CAPABILITIES_DISCOVER = "capabilities/discoverV2"
CAPABILITY_ROOTS_DISCOVER = "capabilityRoots/discoverV1"
HTTP_REQUEST = "http/request"
HTTP_REQUEST_BODY_DELTA = "http/request/bodyDelta"
