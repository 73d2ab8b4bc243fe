"""The environment and working directory a child gets, as Codex builds them.

Without ``envPolicy`` the environment is exactly ``process/start``'s ``env``. With
one, Codex's ``ShellEnvironmentPolicy`` derives it from the server's environment
(inherit, default excludes, excludes, set, includeOnly, in that order) and ``env``
is overlaid last. Patterns are Codex's globs: ``*`` and ``?``, case-insensitive.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from functools import lru_cache

from ..protocol.errors import InvalidParams
from ..protocol.messages import EnvPolicy, ProcessStartParams
from ..protocol.path_uri import file_uri_to_path, speaks_uri

#: Server variables kept by ``inherit: "core"`` (union of Codex's lists over time;
#: compared case-insensitively, as current Codex does).
CORE_ENV_VARS = frozenset(
    name.upper()
    for name in (
        "HOME",
        "LOGNAME",
        "PATH",
        "SHELL",
        "USER",
        "USERNAME",
        "TMPDIR",
        "TEMP",
        "TMP",
        "LANG",
        "LC_ALL",
        "LC_CTYPE",
    )
)
#: Removed unless ``ignoreDefaultExcludes`` (Codex's default excludes).
DEFAULT_ENV_EXCLUDES = ("*KEY*", "*SECRET*", "*TOKEN*")


@lru_cache(maxsize=256)
def _compile_env_pattern(pattern: str) -> re.Pattern[str]:
    # Codex matches with `*` and `?` wildcards only (no character classes), ignoring case.
    parts = (".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.compile("".join(parts), re.IGNORECASE | re.DOTALL)


def env_pattern_matches(pattern: str, name: str) -> bool:
    """Whether ``name`` matches a Codex env-var glob (``*``, ``?``; case-insensitive)."""
    return _compile_env_pattern(pattern).fullmatch(name) is not None


def _matches_any(name: str, patterns: Iterable[str]) -> bool:
    return any(env_pattern_matches(p, name) for p in patterns)


def build_child_env(params: ProcessStartParams, server_env: Mapping[str, str]) -> dict[str, str]:
    """The environment a child gets, as Codex builds it.

    Without ``envPolicy`` it is exactly ``params.env``. With one, Codex's
    ``ShellEnvironmentPolicy`` derives it from ``server_env`` (inherit, default
    excludes, excludes, set, includeOnly, in that order) and ``params.env`` is
    overlaid last.
    """
    policy = params.env_policy
    if policy is None:
        return dict(params.env)
    env = _apply_env_policy(policy, server_env)
    env.update(params.env)
    return env


def _apply_env_policy(policy: EnvPolicy, server_env: Mapping[str, str]) -> dict[str, str]:
    if policy.inherit == "all":
        env = dict(server_env)
    elif policy.inherit == "core":
        env = {k: v for k, v in server_env.items() if k.upper() in CORE_ENV_VARS}
    else:
        env = {}
    if not policy.ignore_default_excludes:
        env = {k: v for k, v in env.items() if not _matches_any(k, DEFAULT_ENV_EXCLUDES)}
    if policy.exclude:
        env = {k: v for k, v in env.items() if not _matches_any(k, policy.exclude)}
    env.update(policy.set)
    if policy.include_only:
        env = {k: v for k, v in env.items() if _matches_any(k, policy.include_only)}
    return env


def resolve_cwd(cwd: str) -> str:
    """An absolute native path from a ``process/start`` cwd (path or ``file://`` URI).

    Codex 0.133 passes the string to the OS as is (a relative cwd resolves against
    the server's cwd, a URI fails with ENOENT); a URI is parsed as Codex 0.171 does
    (with its error texts); a relative path is rejected, since it would depend on
    where the server was started.
    """
    if speaks_uri(cwd):
        return file_uri_to_path(cwd)
    if not os.path.isabs(cwd):
        raise InvalidParams(f"cwd must be an absolute path or a file:// URI, got {cwd!r}")
    return cwd
