"""The ``sandbox`` parameter, parsed: Codex's portable sandbox intent.

The ``sandbox`` of the fs methods and, since 0.171, of ``process/start`` is Codex's
``FileSystemSandboxContext``. :func:`parse_sandbox` reads it into a
:class:`SandboxSpec` (no disk access; malformed input gets Codex's serde texts),
which :mod:`.policy` resolves against the disk. :func:`parse_absolute_path` turns a
wire path into the native path an fs method operates on: absolute paths as Codex
0.133 takes them, and ``file://`` URIs as 0.171 sends them, both lexically
normalised the way Codex's ``AbsolutePathBuf`` is (``a/link/../x`` becomes ``a/x``
*before* anything touches the disk); :mod:`exec_server.protocol.path_uri` does the
parsing.

Entry semantics follow ``codex_protocol::permissions``: the most specific entry
(most path components) that contains a path decides its access; equally specific
entries resolve ``none`` over ``write`` over ``read`` (:class:`Access`'s order).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ...protocol.errors import InternalError, InvalidParams, InvalidRequest
from ...protocol.path_uri import RELATIVE_PATH_MESSAGE, native_path


def parse_absolute_path(raw: str) -> str:
    """Return the lexically normalised native path named by ``raw``.

    Accepts absolute paths (Codex 0.133) and ``file:`` URIs (0.171); errors carry
    the texts of the era the path speaks. See :mod:`exec_server.protocol.path_uri`.
    """
    return native_path(raw)


class Access(enum.IntEnum):
    """An entry's access level. The order is Codex's tie-break precedence."""

    READ = 0
    WRITE = 1
    NONE = 2

    @property
    def can_read(self) -> bool:
        return self is not Access.NONE

    @property
    def can_write(self) -> bool:
        return self is Access.WRITE


# 0.133 also takes "deny" for "none" (observed).
_ACCESS_BY_NAME = {
    "read": Access.READ,
    "write": Access.WRITE,
    "none": Access.NONE,
    "deny": Access.NONE,
}

#: Special path kinds whose location depends on the context's ``cwd``.
CWD_KINDS = frozenset({"current_working_directory", "project_roots"})
_KNOWN_KINDS = frozenset({"root", "minimal", "tmpdir", "slash_tmp"}) | CWD_KINDS

#: Read-only roots granted by the ``minimal`` special path. Codex leaves the list to
#: the platform sandbox; these are the usual Linux system directories.
PLATFORM_DEFAULT_READ_ROOTS = (
    "/bin",
    "/sbin",
    "/usr",
    "/lib",
    "/lib32",
    "/lib64",
    "/libx32",
    "/etc",
    "/opt",
    "/dev",
)

#: Names made read-only at the top of every writable root (Codex 0.133) ...
PROTECTED_SUBDIRECTORIES = (".git", ".agents", ".codex")
#: ... and in 0.171, which also protects ``.aws`` (probed: a sandboxed ``mkdir .aws``
#: in a writable root fails, and an fs write into it answers EROFS).
PROTECTED_SUBDIRECTORIES_0171 = (*PROTECTED_SUBDIRECTORIES, ".aws")

#: Codex's serde error for any permission profile that fails to parse.
MALFORMED_PROFILE_MESSAGE = "data did not match any variant of untagged enum PermissionProfileDe"
#: 0.133's -32600 for a cwd-relative entry in a context without ``cwd``.
DYNAMIC_PERMISSIONS_NEED_CWD_MESSAGE = (
    "file system sandbox context with dynamic permissions requires cwd"
)


class UnsupportedPolicy(InternalError):
    """A well-formed policy this executor cannot enforce faithfully (-32603).

    Raised while resolving or confining: the request is refused (fail closed) with
    the message, which names what cannot be enforced and why.
    """


@dataclass(frozen=True, slots=True)
class EntrySpec:
    """One parsed, unresolved ``file_system.entries`` item.

    Exactly one of ``path`` (an absolute normalised path), ``special`` (a special
    kind such as ``"root"``) and ``glob`` (a ``glob_pattern``) is set; ``subpath``
    only goes with ``project_roots``. ``skip_if_missing`` is 0.171's
    ``missing_path_behavior: "skip"``.
    """

    access: Access
    path: str | None = None
    special: str | None = None
    subpath: str | None = None
    glob: str | None = None
    skip_if_missing: bool = False


@dataclass(frozen=True, slots=True)
class SandboxSpec:
    """A parsed sandbox context: the file-system policy, the network policy and the
    context's paths.

    ``restricts_files`` is false for profiles that leave files alone (``external``,
    a managed ``unrestricted`` file system); ``entries`` is then empty. ``modern``
    marks a 0.171-shaped context (``file://`` URIs, workspace roots), whose denial
    errors and protected names are 0.171's.
    """

    entries: tuple[EntrySpec, ...]
    cwd: str | None = None
    restricts_files: bool = True
    restricts_network: bool = False
    workspace_roots: tuple[str, ...] = ()
    modern: bool = False


class _Malformed(Exception):
    """Internal: the profile does not match any shape Codex accepts."""


@dataclass(frozen=True, slots=True)
class _Profile:
    entries: tuple[EntrySpec, ...]
    restricts_files: bool
    restricts_network: bool


def parse_sandbox(raw: Mapping[str, Any] | None) -> SandboxSpec | None:
    """Parse the ``sandbox`` parameter of an fs method or of ``process/start``.

    Returns ``None`` for ``sandbox: null`` and for a ``disabled`` profile: nothing is
    restricted. ``external`` profiles and managed ``unrestricted`` file systems give
    a spec that restricts files not at all (``restricts_files`` false) but may
    restrict the network. Malformed input raises :class:`InvalidParams` with the
    serde message Codex answers. ``windowsSandboxLevel`` (required by Codex) is
    accepted but not required, and unknown special kinds are ignored as later Codex
    does.
    """
    if raw is None:
        return None
    if "permissions" not in raw:
        raise InvalidParams("missing field `permissions`")
    cwd_raw = raw.get("cwd")
    cwd: str | None = None
    if cwd_raw is not None:
        if not isinstance(cwd_raw, str):
            raise InvalidParams(RELATIVE_PATH_MESSAGE)
        cwd = parse_absolute_path(cwd_raw)
    workspace_roots = _parse_workspace_roots(raw)
    try:
        profile = _parse_permission_profile(raw["permissions"])
    except _Malformed:
        raise InvalidParams(MALFORMED_PROFILE_MESSAGE) from None
    if profile is None:
        return None
    modern = (
        "workspaceRoots" in raw
        or "policyContext" in raw
        or (isinstance(cwd_raw, str) and cwd_raw[:5].lower() == "file:")
    )
    return SandboxSpec(
        entries=profile.entries,
        cwd=cwd,
        restricts_files=profile.restricts_files,
        restricts_network=profile.restricts_network,
        workspace_roots=workspace_roots,
        modern=modern,
    )


def _parse_workspace_roots(raw: Mapping[str, Any]) -> tuple[str, ...]:
    # 0.171 sends the roots at the top (process/start) and in `policyContext` (fs).
    roots = raw.get("workspaceRoots")
    context = raw.get("policyContext")
    if roots is None and isinstance(context, Mapping):
        roots = context.get("workspaceRoots")
    if roots is None:
        return ()
    if not isinstance(roots, list) or not all(isinstance(root, str) for root in roots):
        raise InvalidParams("invalid type: expected a sequence of file URIs for `workspaceRoots`")
    return tuple(parse_absolute_path(root) for root in roots)


def _parse_permission_profile(raw: object) -> _Profile | None:
    """The profile's restrictions, or ``None`` for a ``disabled`` one."""
    if not isinstance(raw, Mapping):
        raise _Malformed
    kind = raw.get("type")
    if kind is None:
        return _parse_legacy_profile(raw)
    if kind == "disabled":
        return None
    if kind == "external":
        return _Profile((), restricts_files=False, restricts_network=_parse_network(raw))
    if kind != "managed":
        raise _Malformed
    network_restricted = _parse_network(raw)
    file_system = raw.get("file_system")
    if not isinstance(file_system, Mapping):
        raise _Malformed
    fs_kind = file_system.get("type")
    if fs_kind == "unrestricted":
        return _Profile((), restricts_files=False, restricts_network=network_restricted)
    if fs_kind != "restricted":
        raise _Malformed
    entries = _parse_entries(file_system.get("entries"))
    return _Profile(entries, restricts_files=True, restricts_network=network_restricted)


def _parse_legacy_profile(raw: Mapping[Any, Any]) -> _Profile:
    # The pre-tagged shape: {"network"?: {"enabled"?}, "file_system"?: {"entries"}},
    # with unknown fields rejected. A missing file_system means "nothing allowed";
    # the network is restricted unless `enabled` says otherwise.
    if set(raw) - {"network", "file_system"}:
        raise _Malformed
    network = raw.get("network")
    if network is not None and not isinstance(network, Mapping):
        raise _Malformed
    restricts_network = not (network is not None and network.get("enabled") is True)
    file_system = raw.get("file_system")
    if file_system is None:
        return _Profile((), restricts_files=True, restricts_network=restricts_network)
    if not isinstance(file_system, Mapping):
        raise _Malformed
    entries = _parse_entries(file_system.get("entries"))
    return _Profile(entries, restricts_files=True, restricts_network=restricts_network)


def _parse_network(raw: Mapping[Any, Any]) -> bool:
    """Whether the profile's ``network`` is ``restricted`` (else ``enabled``)."""
    network: object = raw.get("network")
    if network not in ("restricted", "enabled"):
        raise _Malformed
    return network == "restricted"


def _parse_entries(raw: object) -> tuple[EntrySpec, ...]:
    # `entries` is required (0.133 rejects a restricted file system without it).
    if not isinstance(raw, list):
        raise _Malformed
    entries = (_parse_entry(item) for item in raw)
    return tuple(entry for entry in entries if entry is not None)


def _parse_entry(raw: object) -> EntrySpec | None:
    if not isinstance(raw, Mapping):
        raise _Malformed
    access_name = raw.get("access")
    access = _ACCESS_BY_NAME.get(access_name) if isinstance(access_name, str) else None
    path = raw.get("path")
    if access is None or not isinstance(path, Mapping):
        raise _Malformed
    skip = _parse_missing_path_behavior(raw.get("missing_path_behavior"))
    path_type = path.get("type")
    if path_type == "path":
        return EntrySpec(
            access=access, path=_parse_entry_path(path.get("path")), skip_if_missing=skip
        )
    if path_type == "glob_pattern":
        pattern = path.get("pattern")
        if not isinstance(pattern, str):
            raise _Malformed
        return EntrySpec(access=access, glob=pattern, skip_if_missing=skip)
    if path_type != "special":
        raise _Malformed
    value = path.get("value")
    if not isinstance(value, Mapping) or not isinstance(value.get("kind"), str):
        raise _Malformed
    kind: str = value["kind"]
    if kind not in _KNOWN_KINDS:
        # Later Codex keeps unknown kinds so older runtimes can ignore them.
        return None
    subpath = value.get("subpath")
    if kind == "project_roots" and subpath is not None:
        if not isinstance(subpath, str):
            raise _Malformed
        return EntrySpec(access=access, special=kind, subpath=subpath, skip_if_missing=skip)
    return EntrySpec(access=access, special=kind, skip_if_missing=skip)


def _parse_missing_path_behavior(raw: object) -> bool:
    # 0.171 knows one value; anything else is its serde error (probed).
    if raw is None:
        return False
    if raw != "skip":
        shown = raw if isinstance(raw, str) else str(raw)
        raise InvalidParams(f"unknown variant `{shown}`, expected `skip`")
    return True


def _parse_entry_path(raw: object) -> str:
    if not isinstance(raw, str):
        raise _Malformed
    try:
        return parse_absolute_path(raw)
    except (InvalidParams, InvalidRequest):
        raise _Malformed from None
