"""``fs/*``: whole files, blocks, directories, copies, walks and missing-path watches."""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

import msgspec
from msgspec import UNSET, UnsetType

from .base import Message, Sandbox


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
