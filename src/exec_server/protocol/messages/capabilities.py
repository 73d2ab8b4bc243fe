"""``capabilities/discoverV2`` and ``capabilityRoots/discoverV1`` (Codex 0.171)."""

from __future__ import annotations

from typing import ClassVar

import msgspec
from msgspec import UNSET, UnsetType

from .base import Message, Sandbox


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
