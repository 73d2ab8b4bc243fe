"""Which installed version of a cached plugin is active, and its remote identity.

A plugin package (``plugins/cache/<marketplace>/<name>``) holds one directory per
installed version. The active one is ``local`` if present, else the highest:
semantic versions compare by semver precedence, anything else by its text (as
Codex's ``compare_plugin_versions``). Version names are ASCII letters, digits and
``.``, ``+``, ``_``, ``-``.
"""

from __future__ import annotations

import functools
import json
import os
import re
import stat

LOCAL_VERSION = "local"
REMOTE_INSTALL_METADATA_FILE = ".codex-remote-plugin-install.json"
REMOTE_INSTALL_SCHEMA_VERSION = 1
MAX_REMOTE_INSTALL_METADATA_BYTES = 16 * 1024
MAX_REMOTE_PLUGIN_ID_BYTES = 1024

_VERSION_NAME = re.compile(r"^[A-Za-z0-9._+-]+$")
_SEMVER = re.compile(
    r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(?:-((?:0|[1-9]\d*|\d*[A-Za-z-][0-9A-Za-z-]*)(?:\.(?:0|[1-9]\d*|\d*[A-Za-z-][0-9A-Za-z-]*))*))?"
    r"(?:\+([0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*))?$"
)


def _valid_version_name(name: str) -> bool:
    return name not in (".", "..") and _VERSION_NAME.match(name) is not None


def _identifier_key(part: str) -> tuple[int, int, str]:
    # Numeric identifiers sort before alphanumeric ones, numerically.
    return (0, int(part), "") if part.isdigit() else (1, 0, part)


def _semver_key(match: re.Match[str]) -> tuple[object, ...]:
    major, minor, patch, pre, build = match.groups()
    # A release sorts after its pre-releases; build metadata breaks remaining ties.
    pre_key = (1, ()) if pre is None else (0, tuple(_identifier_key(p) for p in pre.split(".")))
    build_key = () if build is None else tuple(_identifier_key(p) for p in build.split("."))
    return (int(major), int(minor), int(patch), pre_key, build_key)


def compare_versions(left: str, right: str) -> int:
    left_match, right_match = _SEMVER.match(left), _SEMVER.match(right)
    if left_match is not None and right_match is not None:
        a, b = _semver_key(left_match), _semver_key(right_match)
    else:
        a, b = (left,), (right,)
    return (a > b) - (a < b)


def active_plugin_version(package_root: str) -> str | None:
    """The active version directory's name, or ``None`` when there is none."""
    try:
        entries = list(os.scandir(package_root))
    except OSError:
        return None
    versions = []
    for entry in entries:
        try:
            if entry.is_dir() and _valid_version_name(entry.name):
                versions.append(entry.name)
        except OSError:
            continue
    if not versions:
        return None
    if LOCAL_VERSION in versions:
        return LOCAL_VERSION
    versions.sort(key=functools.cmp_to_key(compare_versions))
    return versions[-1]


def read_remote_plugin_id(package_root: str) -> str | None:
    """The ``remote_plugin_id`` of the package's install metadata, if it has one.

    Raises :class:`ValueError` or :class:`OSError` for metadata that is there but
    unusable (not a regular file, too big, not UTF-8 JSON of schema 1, a blank id).
    """
    path = os.path.join(package_root, REMOTE_INSTALL_METADATA_FILE)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ValueError("remote installation metadata is not a regular file")
        data = os.read(fd, MAX_REMOTE_INSTALL_METADATA_BYTES + 1)
    finally:
        os.close(fd)
    if len(data) > MAX_REMOTE_INSTALL_METADATA_BYTES:
        raise ValueError("remote installation metadata exceeds its byte limit")
    metadata = json.loads(data.decode("utf-8"))
    if not isinstance(metadata, dict) or metadata.get("schema_version") != (
        REMOTE_INSTALL_SCHEMA_VERSION
    ):
        raise ValueError("unsupported remote plugin install metadata schema version")
    remote_id = metadata.get("remote_plugin_id")
    if not isinstance(remote_id, str) or not remote_id.strip():
        raise ValueError("remote plugin id must not be blank")
    remote_id = remote_id.strip()
    if len(remote_id.encode()) > MAX_REMOTE_PLUGIN_ID_BYTES:
        raise ValueError("remote plugin ID exceeds its byte limit")
    return remote_id
