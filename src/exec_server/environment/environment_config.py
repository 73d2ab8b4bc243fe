"""Codex 0.171's ``environmentConfig/read``: the Codex config layers of this environment.

A remote harness asks the environment for the parts of Codex's configuration that
live there (its MCP servers, in a normal turn: ``configPaths: [["mcp_servers"]]``).
The answer is one layer per config file that has any of the requested key paths,
lowest precedence first, each re-serialised as TOML holding only those paths:

* ``user (<CODEX_HOME>/config.toml)``, base dir ``CODEX_HOME`` (``$CODEX_HOME``,
  else ``~/.codex``);
* ``project (<cwd>/.codex/config.toml)``, base dir that ``.codex``, only when the
  user config trusts the directory (``[projects."<dir>"] trust_level = "trusted"``).

A key path whose first key is absent adds nothing; one whose first keys exist but
not the last keeps the (empty) enclosing table, as 0.171 does. The TOML is written
the way the ``toml`` crate writes it: plain values first, then sub-tables as
``[a.b]`` sections (inline tables too), arrays of tables as ``[[a.b]]``, a blank
line before each section, and a section header only where a table has values of
its own or none at all. Requirements layers (``requirementsPaths``) come from
managed installs; this server has none, so that list is always empty.
"""

from __future__ import annotations

import datetime
import math
import os
import re
import socket
import tomllib
from typing import Any

from ..protocol.errors import InvalidParams
from ..protocol.messages import (
    ConfigLayer,
    ConfigLayers,
    EnvironmentConfigReadParams,
    EnvironmentConfigReadResult,
)
from ..protocol.path_uri import parse_wire_path, path_to_uri
from .environment_info import home_dir

_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def codex_home() -> str:
    return os.environ.get("CODEX_HOME") or os.path.join(home_dir(), ".codex")


def read_environment_config(p: EnvironmentConfigReadParams) -> EnvironmentConfigReadResult:
    """Blocking (reads files): run it in a worker thread."""
    if not p.config_paths and not p.requirements_paths:
        raise InvalidParams("at least one config or requirements path is required")
    if any(not path for path in [*p.config_paths, *p.requirements_paths]):
        raise InvalidParams("TOML paths must contain at least one key segment")
    cwd = parse_wire_path(p.cwd).native
    home = codex_home()
    layers: list[ConfigLayer] = []
    user_file = os.path.join(home, "config.toml")
    user = _load(user_file)
    if user is not None:
        _add_layer(layers, f"user ({user_file})", home, user, p.config_paths)
        if _trusted(user, cwd):
            project_dir = os.path.join(cwd, ".codex")
            project_file = os.path.join(project_dir, "config.toml")
            project = _load(project_file)
            if project is not None:
                source = f"project ({project_file})"
                _add_layer(layers, source, project_dir, project, p.config_paths)
    return EnvironmentConfigReadResult(
        user_home_dir=path_to_uri(home_dir()),
        codex_home_dir=path_to_uri(home),
        hostname=socket.gethostname(),
        config=ConfigLayers(layers=layers),
        requirements=ConfigLayers(layers=[]),
    )


def _load(path: str) -> dict[str, Any] | None:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError):
        return None


def _trusted(user: dict[str, Any], cwd: str) -> bool:
    projects = user.get("projects")
    if not isinstance(projects, dict):
        return False
    entry = projects.get(cwd)
    return isinstance(entry, dict) and entry.get("trust_level") == "trusted"


def _add_layer(
    layers: list[ConfigLayer],
    source: str,
    base_dir: str,
    document: dict[str, Any],
    key_paths: list[list[str]],
) -> None:
    selected: dict[str, Any] = {}
    for key_path in key_paths:
        _select(document, key_path, selected)
    if selected:
        layers.append(
            ConfigLayer(source=source, base_dir=path_to_uri(base_dir), toml=dump_toml(selected))
        )


def _select(document: dict[str, Any], key_path: list[str], into: dict[str, Any]) -> None:
    source: Any = document
    target = into
    for depth, key in enumerate(key_path):
        if not isinstance(source, dict) or key not in source:
            return
        value = source[key]
        if depth == len(key_path) - 1 or not isinstance(value, dict):
            # A plain value where the path goes on is kept whole, as 0.171 does.
            target[key] = value
            return
        existing = target.get(key)
        if not isinstance(existing, dict):
            existing = target[key] = {}
        source, target = value, existing


# --- TOML, written as the toml crate writes it ----------------------------------------------


def dump_toml(document: dict[str, Any]) -> str:
    lines: list[str] = []
    _dump_table(document, [], lines, header=None)
    return "".join(line + "\n" for line in lines)


def _is_table_array(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, dict) for v in value)


def _dump_table(
    table: dict[str, Any], path: list[str], lines: list[str], header: str | None
) -> None:
    plain = [(k, v) for k, v in table.items() if not isinstance(v, dict) and not _is_table_array(v)]
    if header is not None and (plain or not table):
        if lines:
            lines.append("")
        lines.append(header)
    for key, value in plain:
        lines.append(f"{_key(key)} = {_value(value)}")
    for key, value in table.items():
        child = [*path, key]
        dotted = ".".join(_key(k) for k in child)
        if isinstance(value, dict):
            _dump_table(value, child, lines, header=f"[{dotted}]")
        elif _is_table_array(value):
            for item in value:
                if lines:
                    lines.append("")
                lines.append(f"[[{dotted}]]")
                _dump_table(item, child, lines, header=None)


def _key(key: str) -> str:
    return key if _BARE_KEY.match(key) else _string(key)


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return _string(value)
    if isinstance(value, datetime.datetime | datetime.date | datetime.time):
        return value.isoformat()
    if isinstance(value, list):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    if isinstance(value, dict):
        if not value:
            return "{}"
        return "{ " + ", ".join(f"{_key(k)} = {_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(f"cannot write {type(value).__name__} as TOML")


def _string(text: str) -> str:
    control = any(ord(c) < 0x20 or ord(c) == 0x7F for c in text if c not in "\t\n")
    if not control and "\n" in text:
        body = text.replace("\\", "\\\\").replace('"""', '""\\"')
        return '"""\n' + body + '"""'
    if not control and ("\\" in text or '"' in text) and "'" not in text:
        return f"'{text}'"
    escaped = []
    for char in text:
        if char == '"':
            escaped.append('\\"')
        elif char == "\\":
            escaped.append("\\\\")
        elif char == "\n":
            escaped.append("\\n")
        elif char == "\t":
            escaped.append("\\t")
        elif char == "\r":
            escaped.append("\\r")
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            escaped.append(f"\\u{ord(char):04X}")
        else:
            escaped.append(char)
    return '"' + "".join(escaped) + '"'
