"""SKILL.md front matter, agents/openai.yaml and plugin versions as Codex 0.171 reads
them (the cases were probed on the 0.171 binary; see tests/interop for the wire)."""

from __future__ import annotations

import pytest

from exec_server.environment.capabilities.skill_metadata import (
    InvalidMetadata,
    parse_skill_extras,
    parse_skill_front_matter,
)
from exec_server.environment.capabilities.versions import active_plugin_version


@pytest.mark.parametrize(
    ("contents", "name", "description", "short"),
    [
        ("---\nname: a\ndescription: d\n---\n", "a", "d", None),
        ("---\ndescription: d\n---\n", "dir", "d", None),
        ("---\nname: ~\ndescription: d\n---", "dir", "d", None),
        ("---\nname: a\ndescription: Build for AWS: ECS\n---\n", "a", "Build for AWS: ECS", None),
        ("---\nname: a\ndescription: |\n  one\n  two\n---\n", "a", "one two", None),
        ("---\nname: yes\ndescription: 0x10\n---\n", "yes", "0x10", None),
        ("---\nname: a\ndescription: 1.50 # c\n---\n", "a", "1.50", None),
        ("---\r\nname: a\r\ndescription: d\r\n---\r\n", "a", "d", None),
        ("--- \nname: '  a  b '\ndescription: d\n  ---\n", "a b", "d", None),
        (
            "---\nname: a\ndescription: d\nmetadata:\n  short-description: ' s  d '\n---\n",
            "a",
            "d",
            "s d",
        ),
        ("---\nname: [unclosed\ndescription: d\n---\n", "[unclosed", "d", None),
    ],
)
def test_front_matter(contents: str, name: str, description: str, short: str | None) -> None:
    parsed = parse_skill_front_matter(contents, "dir")
    assert (parsed.name, parsed.description, parsed.short_description) == (
        name,
        description,
        short,
    )


@pytest.mark.parametrize(
    "contents",
    [
        "# no front matter\n",
        "\ufeff---\nname: a\ndescription: d\n---\n",
        "---\n---\n",
        "---\nname: a\ndescription: d\n",
        "---\nname: a\n---\n",
        "---\nname: a\ndescription: null\n---\n",
        "---\nname: a\ndescription: [x]\n---\n",
        "---\nname: a\ndescription: d\nname: b\n---\n",
        "---\nname: a\ndescription: d\nmetadata: 5\n---\n",
        "---\n- a\n---\n",
        f"---\nname: {'n' * 65}\ndescription: d\n---\n",
    ],
)
def test_invalid_front_matter(contents: str) -> None:
    with pytest.raises(InvalidMetadata):
        parse_skill_front_matter(contents, "dir")


def test_skill_extras() -> None:
    extras = parse_skill_extras(
        "dependencies:\n  tools:\n    - type: env_var\n      value: T\n      url: '  '\n"
        "    - value: no-type\npolicy:\n  allow_implicit_invocation: false\n"
        "  products: [codex, atlas]\n"
    )
    assert extras.dependencies is not None
    assert [(t.type, t.value, t.url) for t in extras.dependencies.tools] == [("env_var", "T", None)]
    assert extras.policy is not None
    assert extras.policy.allow_implicit_invocation is False
    assert extras.policy.products == ["codex", "atlas"]


@pytest.mark.parametrize(
    "contents",
    [
        "policy:\n  allow_implicit_invocation: 'false'\n",
        "policy:\n  allow_implicit_invocation: yes\n",
        "policy:\n  products: [bogus]\n",
        "interface:\n  display_name: [x]\npolicy: {}\n",
        "policy: [",
    ],
)
def test_skill_extras_of_the_wrong_shape_are_ignored(contents: str) -> None:
    extras = parse_skill_extras(contents)
    assert extras.dependencies is None and extras.policy is None


@pytest.mark.parametrize(
    ("versions", "active"),
    [
        (["1.9.0", "1.10.0"], "1.10.0"),
        (["1.0.0", "1.0.0-beta", "0.9"], "1.0.0"),
        (["2.0.0", "local"], "local"),
        (["1.0.0+b", "10.0"], "10.0"),
        (["bad ver"], None),
        ([], None),
    ],
)
def test_active_plugin_version(tmp_path: object, versions: list[str], active: str | None) -> None:
    from pathlib import Path

    root = Path(str(tmp_path))
    for version in versions:
        (root / version).mkdir()
    assert active_plugin_version(str(root)) == active
