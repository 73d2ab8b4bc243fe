"""Reusing sandbox plans (environment/sandbox/disk_view.py and SandboxEnforcer.plan).

A plan is reused only while every disk fact it was made from still holds; these
tests change each kind of fact under a cached plan and check that the next plan
sees it, and that :class:`DiskView` answers exactly as ``os.path`` does.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from exec_server.environment.sandbox import parse_sandbox
from exec_server.environment.sandbox.confinement import SandboxEnforcer
from exec_server.environment.sandbox.disk_view import DiskView
from exec_server.environment.sandbox.kernel import KernelSupport
from exec_server.environment.sandbox.placeholders import PLACEHOLDERS
from exec_server.environment.sandbox.plan import Mount

#: Everything available (what is planned does not depend on this machine).
SUPPORTED = KernelSupport(landlock_abi=7)


def special(kind: str, access: str, **value: Any) -> dict[str, Any]:
    return {"path": {"type": "special", "value": {"kind": kind, **value}}, "access": access}


def workspace_write(work: Path) -> dict[str, Any]:
    """The 0.171 harness's workspace-write policy (as in test_sandbox_confinement)."""
    protected = [
        special("project_roots", "read", subpath=name) | {"missing_path_behavior": "skip"}
        for name in (".git", ".agents", ".codex")
    ]
    entries = [special("root", "read"), special("project_roots", "write"), *protected]
    return {
        "permissions": {
            "type": "managed",
            "file_system": {"type": "restricted", "entries": entries},
            "network": "restricted",
        },
        "cwd": work.as_uri(),
        "workspaceRoots": [work.as_uri()],
    }


@pytest.fixture
def work(tmp_path: Path) -> Path:
    path = tmp_path / "work"
    path.mkdir()
    return path


def plan(enforcer: SandboxEnforcer, work: Path) -> Any:
    return enforcer.plan(parse_sandbox(workspace_write(work)), {})


def test_an_unchanged_disk_reuses_the_plan(work: Path) -> None:
    enforcer = SandboxEnforcer(SUPPORTED)
    first = plan(enforcer, work)
    assert first is not None and str(work / ".git") in first.placeholders
    assert plan(enforcer, work) is first


def test_a_created_git_directory_is_seen(work: Path) -> None:
    enforcer = SandboxEnforcer(SUPPORTED)
    before = plan(enforcer, work)
    (work / ".git").mkdir()
    after = plan(enforcer, work)
    assert after is not before
    assert str(work / ".git") not in after.placeholders
    assert Mount("read_only", str(work / ".git")) in after.mounts


def test_a_git_pointer_file_and_its_rewrite_are_seen(work: Path, tmp_path: Path) -> None:
    first_dir, second_dir = tmp_path / "gitdir-a", tmp_path / "gitdir-b"
    first_dir.mkdir()
    second_dir.mkdir()
    (work / ".git").write_text(f"gitdir: {first_dir}\n")
    enforcer = SandboxEnforcer(SUPPORTED)
    first = plan(enforcer, work)
    assert any(path == str(first_dir) for path, _ in first.landlock_rules)
    (work / ".git").write_text(f"gitdir: {second_dir}\n")
    second = plan(enforcer, work)
    ruled = {path for path, _ in second.landlock_rules}
    assert str(second_dir) in ruled and str(first_dir) not in ruled


def test_a_root_swapped_for_a_symlink_is_seen(tmp_path: Path) -> None:
    real_a, real_b = tmp_path / "a", tmp_path / "b"
    real_a.mkdir()
    real_b.mkdir()
    link = tmp_path / "work"
    link.symlink_to(real_a)
    enforcer = SandboxEnforcer(SUPPORTED)
    first = plan(enforcer, link)
    assert str(real_a / ".git") in first.placeholders
    link.unlink()
    link.symlink_to(real_b)
    second = plan(enforcer, link)
    assert str(real_b / ".git") in second.placeholders
    assert str(real_a / ".git") not in second.placeholders


def test_a_placeholder_held_for_another_child_is_shared(work: Path) -> None:
    """A protected name that exists only as our placeholder is still planned as a
    placeholder, so the next child holds it too (it must not vanish under it)."""
    target = str(work / ".git")
    held = PLACEHOLDERS.acquire([target])
    try:
        assert held == (target,) and os.path.isdir(target)
        confinement = SandboxEnforcer(SUPPORTED).plan(parse_sandbox(workspace_write(work)), {})
        assert confinement is not None and target in confinement.placeholders
    finally:
        PLACEHOLDERS.release(held, namespace=None)
        PLACEHOLDERS.collect()
    assert not os.path.exists(target)


def test_view_notices_each_kind_of_change(tmp_path: Path) -> None:
    (tmp_path / "dir").mkdir()
    (tmp_path / "file").write_text("one")
    (tmp_path / "link").symlink_to("dir")

    def fresh() -> DiskView:
        view = DiskView()
        for name in ("dir", "file", "link", "missing"):
            view.lexists(str(tmp_path / name))
        view.read_text(str(tmp_path / "file"))
        assert view.still_holds()
        return view

    changes = [
        lambda: (tmp_path / "missing").mkdir(),
        lambda: (tmp_path / "missing").rmdir(),
        lambda: (tmp_path / "file").write_text("two"),
        lambda: ((tmp_path / "link").unlink(), (tmp_path / "link").symlink_to("file")),
        lambda: (shutil.rmtree(tmp_path / "dir"), (tmp_path / "dir").write_text("")),
    ]
    for change in changes:
        view = fresh()
        change()
        assert not view.still_holds()


# --- DiskView answers exactly as os.path ---------------------------------------------

NAMES = ["a", "b", "c"]
#: Symlink targets: relative, absolute (into the tree), upward, looping, dangling.
TARGETS = ["a", "b/c", "../b", "..", ".", "/TREE/a", "/TREE/c/a", "nowhere", "a/../c"]


@st.composite
def trees(draw: st.DrawFn) -> list[tuple[str, str, str]]:
    """(parent, name, what) entries: what is "dir", "file" or "link:<target>"."""
    entries: list[tuple[str, str, str]] = []
    for parent in ("", "a", "b"):
        for name in NAMES:
            kind = draw(st.sampled_from(["dir", "file", "link", "none"]))
            if kind == "link":
                kind = "link:" + draw(st.sampled_from(TARGETS))
            if kind != "none":
                entries.append((parent, name, kind))
    return entries


queries = st.lists(
    st.lists(st.sampled_from([*NAMES, "..", ".", "nowhere"]), min_size=1, max_size=5),
    min_size=1,
    max_size=8,
)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(tree=trees(), paths=queries)
def test_view_answers_as_os_path(
    tmp_path_factory: pytest.TempPathFactory,
    tree: list[tuple[str, str, str]],
    paths: list[list[str]],
) -> None:
    root = tmp_path_factory.mktemp("tree")
    for parent, name, what in tree:
        where = root / parent
        if where.is_symlink() or not where.is_dir():
            continue  # only ever create inside the tree, never through a link
        path = where / name
        if what == "dir":
            path.mkdir()
        elif what == "file":
            path.write_text("x")
        else:
            path.symlink_to(what[5:].replace("/TREE", str(root)))
    view = DiskView()
    for parts in paths:
        path = os.path.join(str(root), *parts)
        assert view.realpath(path) == os.path.realpath(path), path
        assert view.lexists(path) == os.path.lexists(path), path
        assert view.islink(path) == os.path.islink(path), path
        assert view.isdir(path) == os.path.isdir(path), path
        assert view.isfile(path) == os.path.isfile(path), path
        assert view.exists(path) == os.path.exists(path), path
    assert view.still_holds()
