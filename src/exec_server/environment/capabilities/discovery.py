"""Codex 0.171's ``capabilities/discoverV2``: the plugins and skills installed here.

Where 0.171 looks (probed; the request's ``cwd`` is validated but not scanned):

1. installed plugins: ``<CODEX_HOME>/plugins/cache/<marketplace>/<name>/<version>``,
   one version per plugin (``local`` if present, else the highest, semver-aware);
   its id is ``<name>@<marketplace>``, its ``remotePluginId`` comes from the
   package's ``.codex-remote-plugin-install.json``;
2. standalone skills under ``<CODEX_HOME>/skills`` (``codex-home-skills``),
   ``~/.agents/skills`` (``user-agent-skills``) and ``/etc/codex/skills``
   (``system-skills``).

``CODEX_HOME`` (else ``~/.codex``) must exist and be a directory when it is set
(-32603 otherwise, with 0.171's text). Each location is read as
``capabilityRoots/discoverV1`` reads a root (:mod:`.roots`), through the request's
``sandbox``: a location the policy hides is skipped. Skills get their ``SKILL.md``
metadata (:mod:`.skill_metadata`); inside a plugin their names are qualified with
the nearest plugin's name (``plug:skill``). Problems are reported as 0.171 does,
coarsely: one warning per location that had any, one for unresolvable locations.
The answer is bounded like 0.171's: 512 locations, 2,048 capabilities, 4 MiB, 64
warnings.
"""

from __future__ import annotations

import errno
import os
import posixpath
import re
import stat
from dataclasses import dataclass, field

import msgspec

from ...protocol.errors import InternalError
from ...protocol.messages import (
    CapabilityRootDiscovery,
    CapabilityTextFile,
    DiscoverCapabilitiesResult,
    ExecutorPlugin,
    ExecutorSkill,
    FsWalkOptions,
    SkillDiscoveryRoot,
)
from ...protocol.path_uri import file_uri_to_path, path_to_uri
from ..environment_info import home_dir
from ..fs_walk import walk_tree
from ..sandbox import FsSandbox
from .roots import discover_root
from .skill_metadata import (
    MAX_QUALIFIED_NAME_CHARS,
    InvalidMetadata,
    SkillExtras,
    compact_json,
    default_skill_name,
    display_name,
    manifest_name,
    manifest_object,
    parse_skill_extras,
    parse_skill_front_matter,
)
from .versions import active_plugin_version, read_remote_plugin_id

SYSTEM_SKILLS_ROOT = "/etc/codex/skills"
PLUGINS_CACHE_DIR = "plugins/cache"
MAX_LOCATIONS = 512
MAX_CAPABILITIES = 2_048
MAX_RESPONSE_BYTES = 4 * 1024 * 1024
MAX_WARNINGS = 64
LOCATIONS_WARNING = "some capability locations could not be resolved; discovery may be incomplete"
METADATA_WARNING = "some capability metadata could not be loaded; discovery may be incomplete"
SIZE_LIMIT_WARNING = "capability discovery size limit reached"
_CACHE_WALK = FsWalkOptions(
    max_depth=1, max_directories=2_000, max_entries=20_000, follow_directory_symlinks=True
)
_PLUGIN_SEGMENT = re.compile(r"^[A-Za-z0-9._-]+$")


@dataclass(frozen=True, slots=True)
class _InstalledPlugin:
    id: str
    version: str
    remote_plugin_id: str | None


@dataclass(frozen=True, slots=True)
class _Location:
    root: str
    plugin: _InstalledPlugin | None = None
    #: A standalone skill root's id (``codex-home-skills``...).
    root_id: str | None = None


@dataclass
class _Locations:
    locations: list[_Location] = field(default_factory=list)
    problems: bool = False


def discovery_codex_home() -> str:
    """``$CODEX_HOME`` (which must be an existing directory), else ``~/.codex``."""
    raw = os.environ.get("CODEX_HOME")
    if not raw:
        return posixpath.join(home_dir(), ".codex")
    try:
        info = os.stat(raw)
    except OSError:
        raise InternalError(f'CODEX_HOME points to "{raw}", but that path does not exist') from None
    if not stat.S_ISDIR(info.st_mode):
        raise InternalError(f'CODEX_HOME points to "{raw}", but that path is not a directory')
    return os.path.realpath(raw)


def discover_capabilities(sandbox: FsSandbox | None) -> DiscoverCapabilitiesResult:
    """The whole answer (blocking: run it in a worker thread)."""
    codex_home = discovery_codex_home()
    found = _locations(codex_home, home_dir())
    result = DiscoverCapabilitiesResult()
    if found.problems:
        result.warnings.append(LOCATIONS_WARNING)
    budget = _Budget()
    for index, location in enumerate(found.locations):
        plugin, skills, warned = _load(location, sandbox)
        if warned and len(result.warnings) < MAX_WARNINGS:
            result.warnings.append(METADATA_WARNING)
        budget.append(result, plugin, skills)
        if budget.full and index + 1 < len(found.locations):
            budget.truncated = True
            break
    result.plugins.sort(key=lambda plugin: (plugin.id, plugin.root))
    _enforce_size(result, budget.truncated)
    return result


# --- locations ---------------------------------------------------------------------------


def _locations(codex_home: str, user_home: str) -> _Locations:
    found = _Locations()
    cache = posixpath.join(codex_home, PLUGINS_CACHE_DIR)
    if _is_directory(cache, found):
        _cached_plugins(cache, found)
    standalone = (
        ("codex-home-skills", posixpath.join(codex_home, "skills")),
        ("user-agent-skills", posixpath.join(user_home, ".agents", "skills")),
        ("system-skills", SYSTEM_SKILLS_ROOT),
    )
    seen: set[str] = set()
    for root_id, root in standalone:
        if root in seen:
            continue
        seen.add(root)
        if _is_directory(root, found):
            found.locations.append(_Location(root, root_id=root_id))
    if len(found.locations) > MAX_LOCATIONS:
        del found.locations[MAX_LOCATIONS:]
        found.problems = True
    return found


def _is_directory(path: str, found: _Locations) -> bool:
    try:
        return stat.S_ISDIR(os.stat(path).st_mode)
    except FileNotFoundError:
        return False
    except OSError:
        found.problems = True
        return False


def _cached_plugins(cache: str, found: _Locations) -> None:
    try:
        walked = walk_tree(cache, _CACHE_WALK, None, lambda path: path)
    except OSError:
        found.problems = True
        return
    if walked.errors:
        raise InternalError(
            f"failed to scan plugin cache path {path_to_uri(walked.errors[0].path)}: "
            f"{walked.errors[0].message}"
        )
    found.problems |= walked.truncated
    packages: dict[str, str] = {}
    for entry in walked.entries:
        if entry.kind != "directory":
            continue
        parts = posixpath.relpath(entry.path, cache).split("/")
        if len(parts) != 2 or not all(_valid_segment(part) for part in parts):
            continue
        marketplace, name = parts
        packages[f"{name}@{marketplace}"] = entry.path
    plugin_count = 0
    for plugin_id in sorted(packages):
        package = packages[plugin_id]
        version = active_plugin_version(package)
        if version is None:
            continue
        if plugin_count == MAX_LOCATIONS:
            found.problems = True
            break
        try:
            remote_id = read_remote_plugin_id(package)
        except (OSError, ValueError):
            remote_id = None
            found.problems = True
        plugin = _InstalledPlugin(plugin_id, version, remote_id)
        found.locations.append(_Location(posixpath.join(package, version), plugin=plugin))
        plugin_count += 1


def _valid_segment(segment: str) -> bool:
    return segment not in (".", "..") and _PLUGIN_SEGMENT.match(segment) is not None


# --- one location ------------------------------------------------------------------------


def _load(
    location: _Location, sandbox: FsSandbox | None
) -> tuple[ExecutorPlugin | None, list[ExecutorSkill], bool]:
    """The location's plugin or skills, and whether anything went wrong there."""
    try:
        if sandbox is not None:
            sandbox.check_visible(location.root)
        info = os.stat(location.root)
    except OSError as err:
        # Missing or forbidden roots are normal; anything else is worth a warning.
        return None, [], err.errno not in (errno.ENOENT, errno.EACCES)
    if not stat.S_ISDIR(info.st_mode):
        return None, [], False
    plugin_id = location.plugin.id if location.plugin is not None else ""
    discovery = discover_root(plugin_id, location.root, sandbox)
    warned = bool(discovery.warnings or discovery.error)
    if location.plugin is not None and discovery.plugin is None:
        return None, [], True
    namespaces = _namespaces(discovery)
    skills, skipped = _skills(discovery, namespaces, location)
    warned |= skipped
    if location.plugin is None or discovery.plugin is None:
        return None, skills, warned
    manifest = discovery.plugin.manifest
    namespace = manifest_name(manifest.contents, posixpath.basename(location.root))
    if namespace is None:
        return None, [], True
    files = discovery.plugin
    inline = (manifest_object(manifest.contents) or {}).get("mcpServers")
    if isinstance(inline, dict):
        # discoverV2 serves inline MCP servers as the manifest holding just them.
        files.mcp_config = CapabilityTextFile(path=manifest.path, contents=compact_json(inline))
    plugin = ExecutorPlugin(
        id=location.plugin.id,
        display_name=display_name(manifest.contents, namespace),
        remote_plugin_id=location.plugin.remote_plugin_id,
        version=location.plugin.version,
        root=path_to_uri(location.root),
        files=files,
        skills=skills,
    )
    return plugin, [], warned


def _namespaces(discovery: CapabilityRootDiscovery) -> dict[str, str]:
    """Plugin root URI -> the name its skills are qualified with (first manifest wins)."""
    namespaces: dict[str, str] = {}
    for manifest in discovery.namespace_manifests:
        root_uri = manifest.path.rsplit("/", 2)[0]
        name = manifest_name(manifest.contents, _uri_basename(root_uri))
        if name is not None:
            namespaces.setdefault(root_uri, name)
    return namespaces


def _uri_basename(uri: str) -> str:
    return posixpath.basename(file_uri_to_path(uri))


def _skills(
    discovery: CapabilityRootDiscovery, namespaces: dict[str, str], location: _Location
) -> tuple[list[ExecutorSkill], bool]:
    skills: list[ExecutorSkill] = []
    skipped = False
    root = None
    if location.root_id is not None:
        root = SkillDiscoveryRoot(id=location.root_id, path=path_to_uri(location.root))
    for files in discovery.skills:
        path = files.instructions.path
        skill_dir = path.rsplit("/", 1)[0]
        try:
            parsed = parse_skill_front_matter(
                files.instructions.contents, default_skill_name(_uri_basename(skill_dir))
            )
        except InvalidMetadata:
            skipped = True
            continue
        name = parsed.name
        namespace = _nearest_namespace(skill_dir, namespaces)
        if namespace is not None:
            if len(namespace) + 1 + len(name) > MAX_QUALIFIED_NAME_CHARS:
                skipped = True
                continue
            name = f"{namespace}:{name}"
        extras = parse_skill_extras(files.metadata.contents) if files.metadata else SkillExtras()
        skill = ExecutorSkill(
            name=name,
            description=parsed.description,
            short_description=parsed.short_description,
            path=path,
            dependencies=extras.dependencies,
            policy=extras.policy,
        )
        if root is not None:
            skill.discovery_root = root
        skills.append(skill)
    return skills, skipped


def _nearest_namespace(directory_uri: str, namespaces: dict[str, str]) -> str | None:
    ancestor = directory_uri
    while ancestor.startswith("file:///"):
        if ancestor in namespaces:
            return namespaces[ancestor]
        parent = ancestor.rsplit("/", 1)[0]
        if parent == ancestor or parent == "file://":
            return namespaces.get("file:///")
        ancestor = parent
    return None


# --- bounds ------------------------------------------------------------------------------


class _Budget:
    def __init__(self) -> None:
        self.capabilities = 0
        self.bytes = 0
        self.truncated = False

    @property
    def full(self) -> bool:
        return self.capabilities == MAX_CAPABILITIES or self.bytes == MAX_RESPONSE_BYTES

    def admit(self, capabilities: int, size: int) -> bool:
        if (
            self.capabilities + capabilities > MAX_CAPABILITIES
            or self.bytes + size > MAX_RESPONSE_BYTES
        ):
            self.truncated = True
            return False
        self.capabilities += capabilities
        self.bytes += size
        return True

    def append(
        self,
        result: DiscoverCapabilitiesResult,
        plugin: ExecutorPlugin | None,
        skills: list[ExecutorSkill],
    ) -> None:
        if plugin is not None:
            remaining = MAX_CAPABILITIES - self.capabilities
            if remaining == 0:
                self.truncated = True
                return
            if len(plugin.skills) > remaining - 1:
                self.truncated = True
                del plugin.skills[remaining - 1 :]
            if self.admit(1 + len(plugin.skills), _size(plugin)):
                result.plugins.append(plugin)
        for skill in skills:
            if self.capabilities == MAX_CAPABILITIES:
                self.truncated = True
                break
            if self.admit(1, _size(skill)):
                result.skills.append(skill)


def _size(message: msgspec.Struct) -> int:
    return len(msgspec.json.encode(message))


def _enforce_size(result: DiscoverCapabilitiesResult, truncated: bool) -> None:
    del result.warnings[MAX_WARNINGS:]
    if not truncated and _size(result) <= MAX_RESPONSE_BYTES:
        return
    del result.warnings[MAX_WARNINGS - 1 :]
    result.warnings.insert(0, SIZE_LIMIT_WARNING)
    while _size(result) > MAX_RESPONSE_BYTES:
        if len(result.warnings) > 1:
            del result.warnings[1:]
        elif result.skills:
            result.skills.pop()
        elif result.plugins:
            result.plugins.pop()
        else:
            break
