"""Skill and plugin metadata as Codex 0.171 reads it (pure functions, no I/O).

* ``SKILL.md`` front matter: a ``---`` line, YAML, a ``---`` line (each compared
  after trimming). ``name`` (default: the skill directory's name), ``description``
  (required) and ``metadata.short-description``; each is collapsed to one line
  (runs of whitespace become one space). A name longer than 64 characters, a missing
  description, a value that is not a scalar, or YAML that cannot be read makes the
  skill invalid. Codex reads the YAML with serde_yaml into strings: a plain scalar
  keeps its text (``true``, ``0x10`` and ``1.50`` stay as written) and only
  ``null``/``~``/empty mean "absent". YAML that fails is retried once with plain
  values containing ``": "`` quoted (``description: Build for AWS: ECS``), as Codex
  does.
* ``agents/openai.yaml`` beside a ``SKILL.md``: ``dependencies.tools`` and
  ``policy``; a file that does not match Codex's types is ignored as a whole.
* a plugin manifest (``plugin.json``): its ``name`` namespaces the plugin's skills,
  ``interface.displayName`` names the plugin, ``mcpServers``/``apps`` may name the
  plugin's MCP and apps files.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from typing import Any

import yaml

from ...protocol.messages import SkillDependencies, SkillPolicy, SkillToolDependency

MAX_SKILL_NAME_CHARS = 64
#: ``<namespace>:<name>`` must fit in this many characters.
MAX_QUALIFIED_NAME_CHARS = MAX_SKILL_NAME_CHARS * 2 + 1
#: Codex's ``Product`` values accepted in ``policy.products``.
PRODUCTS = frozenset({"chatgpt", "codex", "atlas"})
#: Per-field limits of a tool dependency (characters, after collapsing whitespace).
#: Codex has such limits; these values are ours (its numbers were not read), generous
#: enough that no real skill reaches them.
MAX_DEPENDENCY_CHARS = {
    "type": 64,
    "value": 1024,
    "description": 1024,
    "transport": 64,
    "command": 1024,
    "url": 2048,
}

_NULL_TAG = "tag:yaml.org,2002:null"
_BOOL_TEXT = {"true": True, "True": True, "TRUE": True, "false": False, "False": False}
_BOOL_TEXT["FALSE"] = False


class _RawScalarLoader(yaml.SafeLoader):
    """Resolves only ``null``: every other plain scalar stays text, as serde_yaml
    hands it to a ``String`` field."""


_RawScalarLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag == _NULL_TAG]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


class InvalidMetadata(ValueError):
    """The file does not have the shape Codex requires."""


@dataclass(frozen=True, slots=True)
class SkillFrontMatter:
    name: str
    description: str
    short_description: str | None


def one_line(text: str) -> str:
    """Runs of whitespace become one space; leading and trailing ones go."""
    return " ".join(text.split())


def parse_skill_front_matter(contents: str, default_name: str) -> SkillFrontMatter:
    """The metadata of a ``SKILL.md``; :class:`InvalidMetadata` if it has none valid."""
    block = _front_matter(contents)
    if block is None:
        raise InvalidMetadata("missing YAML frontmatter delimited by ---")
    try:
        root = _compose(block)
    except yaml.YAMLError:
        repaired = _quote_colon_values(block)
        if repaired is None:
            raise InvalidMetadata("invalid YAML") from None
        try:
            root = _compose(repaired)
        except yaml.YAMLError:
            raise InvalidMetadata("invalid YAML") from None
    fields = _struct_fields(root, ("name", "description", "metadata"))
    name = one_line(_optional_text(fields.get("name")) or "") or default_name
    description = one_line(_optional_text(fields.get("description")) or "")
    short: str | None = None
    metadata = fields.get("metadata")
    if metadata is not None and not _is_null(metadata):
        meta_fields = _struct_fields(metadata, ("short-description",))
        short = one_line(_optional_text(meta_fields.get("short-description")) or "") or None
    if not name:
        raise InvalidMetadata("missing field `name`")
    if len(name) > MAX_SKILL_NAME_CHARS:
        raise InvalidMetadata(f"invalid name: exceeds maximum length of {MAX_SKILL_NAME_CHARS}")
    if not description:
        raise InvalidMetadata("missing field `description`")
    return SkillFrontMatter(name, description, short)


def default_skill_name(directory_name: str) -> str:
    """The name of a skill whose front matter gives none."""
    return one_line(directory_name) or "skill"


def _front_matter(contents: str) -> str | None:
    lines = contents.splitlines()
    if not lines or lines[0].strip() != "---":
        return None
    body: list[str] = []
    for line in lines[1:]:
        if line.strip() == "---":
            return "\n".join(body) if body else None
        body.append(line)
    return None


def _compose(text: str) -> yaml.Node | None:
    return yaml.compose(text, Loader=_RawScalarLoader)


def _is_null(node: yaml.Node) -> bool:
    return isinstance(node, yaml.ScalarNode) and node.tag == _NULL_TAG


def _struct_fields(node: yaml.Node | None, known: tuple[str, ...]) -> dict[str, yaml.Node]:
    """The known fields of a mapping, as serde reads a struct (unknown ones ignored,
    a known one given twice is an error)."""
    if node is None or _is_null(node):
        return {}
    if not isinstance(node, yaml.MappingNode):
        raise InvalidMetadata("invalid type: expected a map")
    fields: dict[str, yaml.Node] = {}
    for key, value in node.value:
        if not isinstance(key, yaml.ScalarNode) or key.value not in known:
            continue
        if key.value in fields:
            raise InvalidMetadata(f"duplicate field `{key.value}`")
        fields[key.value] = value
    return fields


def _optional_text(node: yaml.Node | None) -> str | None:
    if node is None or _is_null(node):
        return None
    if not isinstance(node, yaml.ScalarNode):
        raise InvalidMetadata("invalid type: expected a string")
    return str(node.value)


def _optional_bool(node: yaml.Node | None) -> bool | None:
    if node is None or _is_null(node):
        return None
    if not isinstance(node, yaml.ScalarNode) or node.style is not None:
        raise InvalidMetadata("invalid type: expected a boolean")
    value = _BOOL_TEXT.get(str(node.value))
    if value is None:
        raise InvalidMetadata("invalid type: expected a boolean")
    return value


def _sequence(node: yaml.Node | None) -> list[yaml.Node]:
    if node is None or _is_null(node):
        return []
    if not isinstance(node, yaml.SequenceNode):
        raise InvalidMetadata("invalid type: expected a sequence")
    return list(node.value)


def _quote_colon_values(block: str) -> str | None:
    """Codex's one repair: single-quote plain values that contain ``": "`` (or that
    start like a flow collection and do not parse), leaving comments in place."""
    changed = False
    block_indent: int | None = None
    out: list[str] = []
    for line in block.split("\n"):
        indent = len(line) - len(line.lstrip(" "))
        if block_indent is not None:
            if not line.strip() or indent > block_indent:
                out.append(line)
                continue
            block_indent = None
        repaired = _repair_line(line)
        if repaired is None:
            out.append(line)
            continue
        if repaired == "block":
            block_indent = indent
            out.append(line)
            continue
        out.append(repaired)
        changed = True
    return "\n".join(out) if changed else None


def _repair_line(line: str) -> str | None:
    key, colon, value = line.partition(":")
    if not colon or not key.strip() or (value and not value[0].isspace()):
        return None
    stripped = value.lstrip()
    leading = value[: len(value) - len(stripped)]
    scalar, comment = stripped, ""
    for index, char in enumerate(stripped):
        if char == "#" and (index == 0 or stripped[index - 1].isspace()):
            scalar = stripped[:index].rstrip()
            comment = stripped[len(scalar) :]
            break
    scalar = scalar.rstrip()
    if not scalar:
        return None
    if scalar[0] in "|>":
        return "block"
    if scalar[0] in "'\"":
        return None
    has_separator = any(char == ":" and nxt.isspace() for char, nxt in itertools.pairwise(scalar))
    if not has_separator and not (scalar[0] in "[{@`" and not _parses(scalar)):
        return None
    quoted = "'" + scalar.replace("'", "''") + "'"
    return f"{key}:{leading}{quoted}{comment}"


def _parses(text: str) -> bool:
    try:
        _compose(text)
    except yaml.YAMLError:
        return False
    return True


# --- agents/openai.yaml -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SkillExtras:
    dependencies: SkillDependencies | None = None
    policy: SkillPolicy | None = None


_INTERFACE_FIELDS = (
    "display_name",
    "short_description",
    "icon_small",
    "icon_large",
    "brand_color",
    "default_prompt",
)
_TOOL_FIELDS = ("type", "value", "description", "transport", "command", "url")


def parse_skill_extras(contents: str) -> SkillExtras:
    """``dependencies`` and ``policy`` of an ``agents/openai.yaml``; a file of the
    wrong shape is ignored as a whole (Codex fails open on this optional file)."""
    try:
        root = _compose(contents)
        fields = _struct_fields(root, ("interface", "dependencies", "policy"))
        interface = fields.get("interface")
        if interface is not None:
            for node in _struct_fields(interface, _INTERFACE_FIELDS).values():
                _optional_text(node)
        dependencies = _dependencies(fields.get("dependencies"))
        policy = _policy(fields.get("policy"))
    except (yaml.YAMLError, InvalidMetadata):
        return SkillExtras()
    return SkillExtras(dependencies, policy)


def _dependencies(node: yaml.Node | None) -> SkillDependencies | None:
    if node is None or _is_null(node):
        return None
    tools: list[SkillToolDependency] = []
    for item in _sequence(_struct_fields(node, ("tools",)).get("tools")):
        raw = {
            name: _optional_text(value)
            for name, value in _struct_fields(item, _TOOL_FIELDS).items()
        }
        values = {name: _limited(raw.get(name), name) for name in _TOOL_FIELDS}
        kind, value = values.pop("type"), values.pop("value")
        if kind is None or value is None:
            continue  # Codex drops a tool without a usable type and value
        tools.append(
            SkillToolDependency(
                type=kind,
                value=value,
                description=values["description"],
                transport=values["transport"],
                command=values["command"],
                url=values["url"],
            )
        )
    return SkillDependencies(tools=tools) if tools else None


def _limited(value: str | None, field: str) -> str | None:
    if value is None:
        return None
    value = one_line(value)
    if not value or len(value) > MAX_DEPENDENCY_CHARS[field]:
        return None
    return value


def _policy(node: yaml.Node | None) -> SkillPolicy | None:
    if node is None or _is_null(node):
        return None
    fields = _struct_fields(node, ("allow_implicit_invocation", "products"))
    products: list[str] = []
    for item in _sequence(fields.get("products")):
        product = _optional_text(item)
        if product not in PRODUCTS:
            raise InvalidMetadata(f"unknown variant `{product}`")
        products.append(product)
    allow = _optional_bool(fields.get("allow_implicit_invocation"))
    return SkillPolicy(allow_implicit_invocation=allow, products=products)


# --- plugin manifests ---------------------------------------------------------------------


def manifest_object(contents: str) -> dict[str, Any] | None:
    """The manifest's JSON object, or ``None`` if it is not one."""
    try:
        parsed = json.loads(contents)
    except ValueError:
        return None
    return parsed if isinstance(parsed, dict) else None


def manifest_name(contents: str, root_basename: str) -> str | None:
    """The namespace a manifest gives its plugin's skills: its ``name``, or the
    plugin directory's name when that is blank; ``None`` if it is not readable."""
    manifest = manifest_object(contents)
    if manifest is None:
        return None
    name = manifest.get("name", "")
    if not isinstance(name, str):
        return None
    return name if name.strip() else root_basename


def display_name(contents: str, fallback: str) -> str:
    """``interface.displayName`` of a manifest, else ``fallback``."""
    manifest = manifest_object(contents) or {}
    interface = manifest.get("interface")
    if isinstance(interface, dict):
        name = interface.get("displayName")
        if isinstance(name, str) and name.strip():
            return name
    return fallback


def compact_json(value: object) -> str:
    """JSON as serde_json writes it (no spaces, keys in their order, UTF-8 kept)."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
