"""Imports point down the layers (docs/architecture.md): a package of the exec_server
tree imports only packages of a lower layer, never one beside or above it."""

from __future__ import annotations

import ast
from pathlib import Path

import exec_server

PACKAGE = Path(exec_server.__file__).parent

#: Layer of each top-level package or module; imports go to lower numbers only.
LAYERS = {
    "errors": 0,
    "protocol": 0,
    "concurrency": 0,
    "malloc_tuning": 0,
    "relay": 1,
    "transport": 2,
    "client": 3,
    "environment": 3,
    "rendezvous": 3,
    "cli": 4,
    "__main__": 5,
}


def _top_level(path: Path) -> str:
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return parts[0]


def _imported(path: Path) -> set[str]:
    """Top-level exec_server packages that ``path`` imports (at any depth of the file)."""
    parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
    package = ["exec_server", *parts[:-1]]  # a module's package, or the package itself
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names: list[list[str]] = []
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                names.append(base + (node.module.split(".") if node.module else []))
            else:
                names.append((node.module or "").split("."))
        elif isinstance(node, ast.Import):
            names.extend(alias.name.split(".") for alias in node.names)
        for name in names:
            if name[0] == "exec_server" and len(name) > 1:
                found.add(name[1])
    return found


def test_every_top_level_package_has_a_layer() -> None:
    tops = {_top_level(path) for path in PACKAGE.rglob("*.py")} - {"__init__"}
    assert tops <= LAYERS.keys(), sorted(tops - LAYERS.keys())


def test_imports_point_down() -> None:
    upward: list[str] = []
    for path in sorted(PACKAGE.rglob("*.py")):
        top = _top_level(path)
        if top == "__init__":
            continue
        for target in _imported(path) - {top}:
            if LAYERS.get(target, -1) >= LAYERS[top]:
                upward.append(f"{path.relative_to(PACKAGE)} imports exec_server.{target}")
    assert upward == []


def test_the_check_sees_relative_imports() -> None:
    """A check that found nothing could be blind: the environment's relative imports
    of the transport layer must be seen."""
    connection = PACKAGE / "environment" / "connection.py"
    assert {"transport", "protocol", "concurrency"} <= _imported(connection)
