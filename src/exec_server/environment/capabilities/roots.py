"""Codex 0.171's ``capabilityRoots/discoverV1``: the capability files under chosen roots.

For each root (``{id, path, sandbox?}``, at most 128 per request) the answer carries,
in request order and with the root's ``id`` and ``path`` echoed:

* ``plugin``: when the root is a plugin (it has ``.codex-plugin/plugin.json``, else
  ``.claude-plugin/...``, else ``.cursor-plugin/...``), that manifest plus its MCP
  and apps files (``mcpServers``/``apps`` naming ``./relative`` files, else
  ``.mcp.json``/``.app.json``; none for MCP servers declared inline);
* ``skills``: every ``SKILL.md`` (and its ``agents/openai.yaml``) found walking the
  root six levels deep, following directory symlinks, sorted by URI;
* ``namespaceManifests``: the manifest of the nearest plugin at or above the root,
  then those of the plugins nested below it;
* ``warnings`` for files that cannot be inspected or read (over 1 MiB, a 16 MiB
  budget per root, not UTF-8) and ``error`` when the root itself cannot be walked.

Everything is read through the root's ``sandbox`` when it has one, so a policy that
hides a file hides it from discovery too. The texts are 0.171's (probed).
"""

from __future__ import annotations

import errno
import os
import posixpath
import stat
from dataclasses import dataclass

from ...protocol.errors import InvalidRequest
from ...protocol.messages import (
    CapabilityRootDiscovery,
    CapabilityTextFile,
    DiscoveredPluginFiles,
    DiscoveredSkillFiles,
    FsWalkOptions,
)
from ...protocol.path_uri import path_to_uri
from ..fs_walk import walk_tree
from ..rust_compat import os_error_text
from ..sandbox import FsSandbox
from .skill_metadata import manifest_object

MAX_ROOTS_PER_REQUEST = 128
MAX_CAPABILITY_FILE_BYTES = 1024 * 1024
MAX_BUNDLE_BYTES_PER_ROOT = 16 * 1024 * 1024
SKILL_FILE_NAME = "SKILL.md"
SKILL_METADATA_PATH = "agents/openai.yaml"
#: Where a plugin root's manifest may be, in order of preference.
PLUGIN_MANIFEST_PATHS = (
    ".codex-plugin/plugin.json",
    ".claude-plugin/plugin.json",
    ".cursor-plugin/plugin.json",
)
_MANIFEST_DIRS = tuple(path.split("/")[0] for path in PLUGIN_MANIFEST_PATHS)
DEFAULT_MCP_CONFIG = ".mcp.json"
DEFAULT_APPS_CONFIG = ".app.json"
ROOT_WALK = FsWalkOptions(
    max_depth=6, max_directories=2_000, max_entries=20_000, follow_directory_symlinks=True
)


def check_root_count(count: int) -> None:
    if count > MAX_ROOTS_PER_REQUEST:
        raise InvalidRequest(
            f"capability root discovery accepts at most {MAX_ROOTS_PER_REQUEST} roots"
        )


def error_text(err: OSError) -> str:
    return os_error_text(err.errno) if err.errno is not None else str(err)


class _Reader:
    """Reads capability files under one root's budget, collecting warnings."""

    def __init__(self, sandbox: FsSandbox | None, warnings: list[str]) -> None:
        self.sandbox = sandbox
        self.warnings = warnings
        self.used = 0

    def stat(self, path: str) -> os.stat_result:
        if self.sandbox is not None:
            self.sandbox.check_visible(path)
        return os.stat(path)

    def read(self, path: str) -> CapabilityTextFile | None:
        """The file as text, or ``None`` (absent, not a file, or a warning)."""
        uri = path_to_uri(path)
        try:
            info = self.stat(path)
        except OSError as err:
            if err.errno == errno.ENOENT:
                return None
            self.warnings.append(f"failed to inspect capability file {uri}: {error_text(err)}")
            return None
        if not stat.S_ISREG(info.st_mode):
            return None
        if info.st_size > MAX_CAPABILITY_FILE_BYTES:
            self.warnings.append(
                f"capability file {uri} exceeds the {MAX_CAPABILITY_FILE_BYTES}-byte limit"
            )
            return None
        if self.used + info.st_size > MAX_BUNDLE_BYTES_PER_ROOT:
            self.warnings.append(
                f"capability root bundle exceeds the {MAX_BUNDLE_BYTES_PER_ROOT}-byte limit"
            )
            return None
        try:
            data = self._read_bytes(path)
        except OSError as err:
            self.warnings.append(f"failed to read capability file {uri}: {error_text(err)}")
            return None
        if len(data) > MAX_CAPABILITY_FILE_BYTES or self.used + len(data) > (
            MAX_BUNDLE_BYTES_PER_ROOT
        ):
            self.warnings.append(f"capability file {uri} exceeded its read limit")
            return None
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as err:
            self.warnings.append(f"capability file {uri} is not UTF-8: {_utf8_error(err)}")
            return None
        self.used += len(data)
        return CapabilityTextFile(path=uri, contents=text)

    def _read_bytes(self, path: str) -> bytes:
        if self.sandbox is not None:
            self.sandbox.check_read(path)
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
        try:
            os.set_blocking(fd, True)
            chunks: list[bytes] = []
            total = 0
            while total <= MAX_CAPABILITY_FILE_BYTES:
                chunk = os.read(fd, 64 * 1024)
                if not chunk:
                    break
                chunks.append(chunk)
                total += len(chunk)
            return b"".join(chunks)
        finally:
            os.close(fd)

    def first_manifest(self, root: str) -> CapabilityTextFile | None:
        for relative in PLUGIN_MANIFEST_PATHS:
            manifest = self.read(posixpath.join(root, relative))
            if manifest is not None:
                return manifest
        return None


def _utf8_error(err: UnicodeDecodeError) -> str:
    # Rust's Utf8Error display.
    if err.reason == "unexpected end of data":
        return f"incomplete utf-8 byte sequence from index {err.start}"
    return f"invalid utf-8 sequence of {err.end - err.start} bytes from index {err.start}"


def plugin_root_of(manifest_path: str) -> str:
    return posixpath.dirname(posixpath.dirname(manifest_path))


def _manifest_priority(path: str) -> int | None:
    if posixpath.basename(path) != "plugin.json":
        return None
    parent = posixpath.basename(posixpath.dirname(path))
    return _MANIFEST_DIRS.index(parent) if parent in _MANIFEST_DIRS else None


@dataclass
class _Scan:
    skills: list[str]
    manifests: list[str]


def _scan(root: str, sandbox: FsSandbox | None, warnings: list[str]) -> _Scan:
    walked = walk_tree(root, ROOT_WALK, sandbox, lambda path: path)
    uri = path_to_uri(root)
    for failure in walked.errors:
        warnings.append(
            f"failed to scan capability path {path_to_uri(failure.path)}: {failure.message}"
        )
    if walked.truncated:
        warnings.append(f"capability scan reached its traversal limit (root: {uri})")
    files = [entry.path for entry in walked.entries if entry.kind == "file"]
    skills = sorted(
        (path for path in files if posixpath.basename(path) == SKILL_FILE_NAME), key=path_to_uri
    )
    manifests = [path for path in files if _manifest_priority(path) is not None]
    manifests.sort(key=lambda path: (path_to_uri(plugin_root_of(path)), _manifest_priority(path)))
    return _Scan(skills, manifests)


def discover_root(root_id: str, root: str, sandbox: FsSandbox | None) -> CapabilityRootDiscovery:
    """One root's capability files (blocking: run it in a worker thread)."""
    uri = path_to_uri(root)
    discovery = CapabilityRootDiscovery(id=root_id, path=uri)
    reader = _Reader(sandbox, discovery.warnings)
    try:
        is_dir = stat.S_ISDIR(reader.stat(root).st_mode)
    except OSError as err:
        discovery.error = f"failed to inspect capability root {uri}: {error_text(err)}"
        return discovery
    if not is_dir:
        discovery.error = f"capability root {uri} is not a directory"
        return discovery
    try:
        scan = _scan(root, sandbox, discovery.warnings)
    except OSError as err:
        discovery.error = f"failed to scan capability root {uri}: {error_text(err)}"
        return discovery
    root_manifest = reader.first_manifest(root)
    inherited = root_manifest or _nearest_ancestor_manifest(reader, root)
    seen: set[str] = set()
    if inherited is not None:
        seen.add(plugin_root_of(inherited.path))
        discovery.namespace_manifests.append(inherited)
    for path in scan.manifests:
        plugin_root = path_to_uri(plugin_root_of(path))
        if plugin_root in seen:
            continue
        seen.add(plugin_root)
        manifest = reader.read(path)
        if manifest is not None:
            discovery.namespace_manifests.append(manifest)
    if root_manifest is not None:
        discovery.plugin = _plugin_files(reader, root, root_manifest)
    for path in scan.skills:
        instructions = reader.read(path)
        if instructions is None:
            continue
        metadata = reader.read(posixpath.join(posixpath.dirname(path), SKILL_METADATA_PATH))
        discovery.skills.append(DiscoveredSkillFiles(instructions=instructions, metadata=metadata))
    return discovery


def _nearest_ancestor_manifest(reader: _Reader, root: str) -> CapabilityTextFile | None:
    ancestor = posixpath.dirname(root)
    while True:
        manifest = reader.first_manifest(ancestor)
        if manifest is not None:
            return manifest
        parent = posixpath.dirname(ancestor)
        if parent == ancestor:
            return None
        ancestor = parent


def _plugin_files(
    reader: _Reader, root: str, manifest: CapabilityTextFile
) -> DiscoveredPluginFiles:
    declared = manifest_object(manifest.contents) or {}
    mcp_servers = declared.get("mcpServers")
    mcp_config: CapabilityTextFile | None = None
    if not isinstance(mcp_servers, dict):  # inline servers: no file to read
        declared_mcp = _declared_path(root, "mcpServers", mcp_servers, manifest, reader.warnings)
        mcp_config = reader.read(declared_mcp or posixpath.join(root, DEFAULT_MCP_CONFIG))
    declared_apps = _declared_path(root, "apps", declared.get("apps"), manifest, reader.warnings)
    apps_config = reader.read(declared_apps or posixpath.join(root, DEFAULT_APPS_CONFIG))
    return DiscoveredPluginFiles(manifest=manifest, mcp_config=mcp_config, apps_config=apps_config)


def _declared_path(
    root: str, field: str, value: object, manifest: CapabilityTextFile, warnings: list[str]
) -> str | None:
    if not isinstance(value, str):
        return None
    relative = value.removeprefix("./")
    if relative == value:
        warnings.append(f"ignoring {field} in {manifest.path}: path must start with `./`")
        return None
    parts = relative.replace("\\", "/").split("/")
    if not relative or ".." in parts:
        warnings.append(
            f"ignoring {field} in {manifest.path}: path must remain below the capability root"
        )
        return None
    return posixpath.normpath(posixpath.join(root, relative))
