"""``environment/info``, ``environment/status`` and ``environmentConfig/read``."""

from __future__ import annotations

from typing import ClassVar, Literal

from msgspec import UNSET, UnsetType

from .base import Message


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


class EnvironmentStatusResult(Message):
    status: Literal["ready"] = "ready"
