"""Tests for the fs sandbox policy (spec section 8, items 30-33; 34 is bwrap-only).

Expected outcomes are what Codex 0.133 answered for the same policy and tree
(probed 2026-11-24; 0.133 runs restricted fs calls in a bubblewrap namespace):

* harness shape (root read, CWD write, CWD/.git read): reading anywhere works;
  writing outside CWD, into CWD/.git, or through CWD/link -> outside answers
  -32603 "Read-only file system (os error 30)"; CWD/link/../x is written to CWD/x;
  a write through a hard link in CWD updates the shared inode; a write through a
  symlinked alias of CWD works; removing CWD/link (a symlink) removes the link;
  ``fs/remove`` of a missing path outside CWD answers ``{}``.
* only CWD write (no root): reading outside -> -32004 "No such file or directory
  (os error 2)", also through a symlink in CWD; readDirectory omits entries whose
  target is hidden; a write with no entries at all -> -32004.
* a ``none`` (or ``deny``) entry hides reads (-32004) and refuses writes (EROFS).
* ``current_working_directory`` without ``cwd`` -> -32600 "file system sandbox
  context with dynamic permissions requires cwd".
* missing ``permissions`` -> -32602 "missing field `permissions`"; any malformed
  profile (unknown type or access, relative entry path, restricted without
  ``entries``, managed without ``network``, a legacy profile with extra fields) ->
  -32602 "data did not match any variant of untagged enum PermissionProfileDe";
  ``disabled``, ``external`` and managed ``unrestricted`` run unsandboxed.
* .git, .agents and .codex under a writable root are read-only even when absent.

Known differences (bubblewrap artefacts we do not imitate): 0.133 always mounts
/usr, /etc, /bin, /lib*, /dev and /proc readable; its mount points make removing a
protected path answer EBUSY (we answer EROFS) and show up in listings as empty
directories; a ``none`` directory is an empty directory there and absent here.
"""

# These tests inspect the tree the handler left behind with plain blocking calls on
# purpose: nothing else runs on the loop meanwhile.

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, TypeVar

import msgspec
import pybase64
import pytest

from exec_server.environment.fs_handler import FileSystemHandler
from exec_server.environment.sandbox import (
    ALLOW_ALL,
    DYNAMIC_PERMISSIONS_NEED_CWD_MESSAGE,
    MALFORMED_PROFILE_MESSAGE,
    PLATFORM_DEFAULT_READ_ROOTS,
    RELATIVE_PATH_MESSAGE,
    Access,
    EntrySpec,
    FsSandbox,
    ResolvedEntry,
    SandboxDenied,
    SandboxSpec,
    parse_absolute_path,
    parse_sandbox,
    resolve_location,
    resolve_policy,
    resolve_sandbox,
)
from exec_server.protocol import messages as m
from exec_server.protocol.errors import (
    INTERNAL_ERROR,
    INVALID_PARAMS,
    INVALID_REQUEST,
    NOT_FOUND,
    InvalidParams,
    InvalidRequest,
    RpcError,
)

P = TypeVar("P")

EROFS_TEXT = "Read-only file system (os error 30)"
ENOENT_TEXT = "No such file or directory (os error 2)"


def params(cls: type[P], **wire: Any) -> P:
    return msgspec.convert(wire, cls)


def b64(data: bytes) -> str:
    return pybase64.b64encode(data).decode()


def special(kind: str, access: str, **value: Any) -> dict[str, Any]:
    return {"path": {"type": "special", "value": {"kind": kind, **value}}, "access": access}


def at(path: Path | str, access: str) -> dict[str, Any]:
    return {"path": {"type": "path", "path": str(path)}, "access": access}


def restricted(*entries: dict[str, Any], **context: Any) -> dict[str, Any]:
    """A FileSystemSandboxContext as the 0.133 harness sends it."""
    return {
        "permissions": {
            "type": "managed",
            "file_system": {"type": "restricted", "entries": list(entries)},
            "network": "restricted",
        },
        "windowsSandboxLevel": "disabled",
        "windowsSandboxPrivateDesktop": True,
        "useLegacyLandlock": False,
        **context,
    }


def harness_sandbox(cwd: Path) -> dict[str, Any]:
    """The exact shape of observed section 3.2 (workspace-write)."""
    return restricted(
        special("root", "read"),
        at(cwd, "write"),
        special("slash_tmp", "write"),
        special("tmpdir", "write"),
        at(cwd / ".git", "read"),
        at(cwd / ".agents", "read"),
        at(cwd / ".codex", "read"),
    )


def sandbox_of(raw: dict[str, Any], environ: dict[str, str] | None = None) -> FsSandbox:
    sandbox = resolve_sandbox(parse_sandbox(raw), environ=environ or {})
    assert isinstance(sandbox, FsSandbox)
    return sandbox


async def expect_error(awaitable: Any, code: int, message: str) -> None:
    with pytest.raises(RpcError) as info:
        await awaitable
    assert (info.value.code, info.value.message) == (code, message)


@pytest.fixture
def fs() -> FileSystemHandler:
    return FileSystemHandler(environ={})


@pytest.fixture
def work(tmp_path: Path) -> Path:
    """tmp/work (the writable workspace), tmp/outside, tmp/ro (readable only)."""
    w = tmp_path / "work"
    for d in (w / "inner", w / ".git", tmp_path / "outside" / "od", tmp_path / "ro" / "sub"):
        d.mkdir(parents=True)
    (w / "f").write_bytes(b"f")
    (w / "inner" / "a").write_bytes(b"a")
    (tmp_path / "outside" / "secret").write_bytes(b"secret")
    (tmp_path / "ro" / "r").write_bytes(b"r")
    os.symlink(tmp_path / "outside", w / "link")
    os.symlink(tmp_path / "outside" / "secret", w / "flink")
    os.symlink(tmp_path / "outside" / "newfile", w / "dangling")
    os.symlink("../outside", w / "rellink")
    os.symlink(w, tmp_path / "walias")
    return w


def workspace_policy(work: Path, *extra: dict[str, Any]) -> dict[str, Any]:
    """Workspace write, ro readable, nothing else (the tree lives under /tmp)."""
    return restricted(at(work, "write"), at(work.parent / "ro", "read"), *extra)


# --- parsing -------------------------------------------------------------------------


def test_absent_sandbox_means_no_checks() -> None:
    assert parse_sandbox(None) is None
    assert resolve_sandbox(None) is ALLOW_ALL


@pytest.mark.parametrize(
    "raw",
    [
        {"permissions": {"type": "disabled"}},
        {"permissions": {"type": "disabled", "extra": 1}, "windowsSandboxLevel": "disabled"},
        {"permissions": {"type": "external", "network": "restricted"}},
        {
            "permissions": {
                "type": "managed",
                "file_system": {"type": "unrestricted"},
                "network": "enabled",
            }
        },
    ],
)
def test_unrestricted_profiles_need_no_checks(raw: dict[str, Any]) -> None:
    assert resolve_sandbox(parse_sandbox(raw)) is ALLOW_ALL


def test_external_profile_restricts_only_the_network() -> None:
    spec = parse_sandbox({"permissions": {"type": "external", "network": "restricted"}})
    assert spec is not None and not spec.restricts_files and spec.restricts_network
    policy = resolve_policy(spec)
    assert policy.files is None and policy.restricts_network and policy.confines
    assert parse_sandbox({"permissions": {"type": "disabled"}}) is None
    assert not resolve_policy(None).confines


def test_harness_shape_parses(tmp_path: Path) -> None:
    spec = parse_sandbox(harness_sandbox(tmp_path))
    assert spec == SandboxSpec(
        entries=(
            EntrySpec(access=Access.READ, special="root"),
            EntrySpec(access=Access.WRITE, path=str(tmp_path)),
            EntrySpec(access=Access.WRITE, special="slash_tmp"),
            EntrySpec(access=Access.WRITE, special="tmpdir"),
            EntrySpec(access=Access.READ, path=str(tmp_path / ".git")),
            EntrySpec(access=Access.READ, path=str(tmp_path / ".agents")),
            EntrySpec(access=Access.READ, path=str(tmp_path / ".codex")),
        ),
        cwd=None,
        restricts_network=True,
    )


def test_harness_shape_resolves_to_workspace_write(tmp_path: Path) -> None:
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    sandbox = sandbox_of(harness_sandbox(cwd), environ={"TMPDIR": "/var/tmp"})
    assert sandbox.can_read("/usr/bin/env") and not sandbox.can_write("/usr/bin/env")
    assert sandbox.can_write(f"{cwd}/src/main.py")
    assert not sandbox.can_write(f"{cwd}/.git/config")
    assert not sandbox.can_write(f"{cwd}/.codex/config.toml")
    assert sandbox.can_write("/tmp/scratch")
    assert sandbox.can_write("/var/tmp/scratch")
    assert not sandbox.can_write("/var/log/x")


MALFORMED = [
    {"type": "bogus"},
    {"type": "managed", "file_system": {"type": "restricted", "entries": []}},
    {"type": "managed", "file_system": {"type": "restricted"}, "network": "restricted"},
    {"type": "managed", "file_system": {"type": "sometimes"}, "network": "restricted"},
    {"type": "managed", "file_system": [], "network": "restricted"},
    {"type": "external"},
    {"file_system": {"entries": []}, "x": 1},
    {"file_system": {}},
    "disabled",
]


@pytest.mark.parametrize("permissions", MALFORMED)
def test_malformed_profiles_are_invalid_params(permissions: Any) -> None:
    with pytest.raises(InvalidParams) as info:
        parse_sandbox({"permissions": permissions, "windowsSandboxLevel": "disabled"})
    assert info.value.message == MALFORMED_PROFILE_MESSAGE


@pytest.mark.parametrize(
    "entry",
    [
        {"path": {"type": "path", "path": "/x"}, "access": "bogus"},
        {"path": {"type": "path", "path": "/x"}, "access": "Read"},
        {"path": {"type": "path", "path": "/x"}, "access": ["read"]},
        {"path": {"type": "path", "path": "rel"}, "access": "read"},
        {"path": {"type": "path", "path": 7}, "access": "read"},
        {"path": {"type": "glob", "pattern": "*"}, "access": "read"},
        {"path": {"type": "special", "value": {}}, "access": "read"},
        {"path": "/x", "access": "read"},
        "entry",
    ],
)
def test_malformed_entries_are_invalid_params(entry: Any) -> None:
    raw = restricted()
    raw["permissions"]["file_system"]["entries"] = [entry]
    with pytest.raises(InvalidParams) as info:
        parse_sandbox(raw)
    assert info.value.message == MALFORMED_PROFILE_MESSAGE


def test_missing_permissions_is_invalid_params() -> None:
    with pytest.raises(InvalidParams) as info:
        parse_sandbox({"windowsSandboxLevel": "disabled"})
    assert info.value.message == "missing field `permissions`"


def test_deny_is_an_alias_of_none_and_unknown_kinds_are_ignored() -> None:
    spec = parse_sandbox(restricted(at("/a", "deny"), special("future_kind", "write")))
    assert spec is not None
    assert spec.entries == (EntrySpec(access=Access.NONE, path="/a"),)


def test_legacy_profile_shape() -> None:
    spec = parse_sandbox(
        {"permissions": {"file_system": {"entries": [at("/a", "write")]}, "network": {}}}
    )
    assert spec == SandboxSpec(
        entries=(EntrySpec(access=Access.WRITE, path="/a"),), restricts_network=True
    )
    nothing = parse_sandbox({"permissions": {"network": {"enabled": True}}})
    assert nothing == SandboxSpec(entries=())


def test_context_cwd_and_entry_paths_are_absolute_paths_or_uris(tmp_path: Path) -> None:
    spec = parse_sandbox(restricted(at(tmp_path.as_uri() + "/x/..", "write"), cwd="file:///w/./"))
    assert spec == SandboxSpec(
        entries=(EntrySpec(Access.WRITE, path=str(tmp_path)),),
        cwd="/w",
        restricts_network=True,
        modern=True,
    )
    for cwd in ("rel", 5):
        with pytest.raises(InvalidParams) as info:
            parse_sandbox(restricted(cwd=cwd))
        assert info.value.message == RELATIVE_PATH_MESSAGE


def test_parse_absolute_path_normalises_lexically() -> None:
    assert parse_absolute_path("/a/link/../x") == "/a/x"
    assert parse_absolute_path("//a//b/./c/") == "/a/b/c"
    assert parse_absolute_path("/../..") == "/"
    assert parse_absolute_path("file:///a%2Fb/%C3%A9") == "/a/b/é"
    assert parse_absolute_path("FILE:///x") == "/x"
    with pytest.raises(InvalidParams):
        parse_absolute_path("file:///x?y")


# --- resolution ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "entries",
    [
        [special("root", "write")],
        [special("root", "write"), special("root", "read")],
        [special("root", "write"), special("minimal", "read")],
        [special("root", "write"), at("/", "read"), at("/", "write")],
        [special("root", "write"), at("/tmp", "read"), special("slash_tmp", "write")],
    ],
)
def test_full_disk_write_runs_unsandboxed(entries: list[dict[str, Any]]) -> None:
    assert resolve_sandbox(parse_sandbox(restricted(*entries))) is ALLOW_ALL


@pytest.mark.parametrize(
    "narrowing",
    [at("/etc", "read"), special("root", "none"), special("slash_tmp", "read"), at("/x", "none")],
)
def test_narrowed_root_write_is_sandboxed(narrowing: dict[str, Any]) -> None:
    raw = restricted(special("root", "write"), narrowing)
    assert resolve_sandbox(parse_sandbox(raw), environ={}) is not ALLOW_ALL


@pytest.mark.parametrize("kind", ["current_working_directory", "project_roots"])
def test_cwd_kinds_need_a_cwd(kind: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        resolve_sandbox(parse_sandbox(restricted(special(kind, "write"))), environ={})
    assert info.value.message == DYNAMIC_PERMISSIONS_NEED_CWD_MESSAGE


def test_cwd_kinds_resolve_against_cwd(tmp_path: Path) -> None:
    sandbox = sandbox_of(
        restricted(
            special("current_working_directory", "read"),
            special("project_roots", "write", subpath="src"),
            cwd=str(tmp_path),
        )
    )
    assert sandbox.can_read(f"{tmp_path}/README") and not sandbox.can_write(f"{tmp_path}/README")
    assert sandbox.can_write(f"{tmp_path}/src/x.py")
    whole = sandbox_of(restricted(special("project_roots", "write"), cwd=str(tmp_path)))
    assert whole.can_write(f"{tmp_path}/README")


def test_tmpdir_and_slash_tmp(tmp_path: Path) -> None:
    raw = restricted(special("tmpdir", "write"), special("slash_tmp", "read"))
    sandbox = sandbox_of(raw, environ={"TMPDIR": str(tmp_path / "t")})
    assert sandbox.can_write(f"{tmp_path}/t/x")
    assert sandbox.can_read("/tmp/x")
    for tmpdir in ("", "relative"):
        unset = sandbox_of(raw, environ={"TMPDIR": tmpdir})
        assert not unset.can_write(f"{tmp_path}/t/x")


def test_minimal_grants_platform_reads_only() -> None:
    sandbox = sandbox_of(restricted(special("minimal", "write")))
    for root in PLATFORM_DEFAULT_READ_ROOTS:
        # On merged-/usr systems /bin is /usr/bin: queries take resolved paths.
        location = resolve_location(f"{root}/x")
        assert sandbox.can_read(location)
        assert not sandbox.can_write(location)
    assert not sandbox.can_read("/root/x")
    assert not sandbox_of(restricted(special("minimal", "none"))).can_read("/usr/x")


def test_most_specific_entry_wins(tmp_path: Path) -> None:
    w = tmp_path
    sandbox = sandbox_of(
        restricted(
            special("root", "read"),
            at(w, "write"),
            at(w / "docs", "read"),
            at(w / "docs" / "drafts", "write"),
            at(w / "secret", "none"),
        )
    )
    assert sandbox.access(f"{w}/a") is Access.WRITE
    assert sandbox.access(f"{w}/docs/a") is Access.READ
    assert sandbox.access(f"{w}/docs/drafts/a") is Access.WRITE
    assert sandbox.access(f"{w}/secret/a") is Access.NONE
    assert sandbox.access(f"{w}/secretive") is Access.WRITE  # component-wise, not textual
    assert sandbox.access("/elsewhere") is Access.READ


@pytest.mark.parametrize(
    ("accesses", "winner"),
    [
        (("read", "write"), Access.WRITE),
        (("write", "none"), Access.NONE),
        (("none", "read"), Access.NONE),
    ],
)
def test_equally_specific_entries_prefer_none_then_write(
    tmp_path: Path, accesses: tuple[str, str], winner: Access
) -> None:
    sandbox = sandbox_of(restricted(*(at(tmp_path, a) for a in accesses)))
    assert sandbox.access(f"{tmp_path}/x") is winner


def test_protected_names_in_writable_roots(tmp_path: Path) -> None:
    w = tmp_path / "w"
    w.mkdir()
    sandbox = sandbox_of(restricted(at(w, "write")))
    for name in (".git", ".agents", ".codex"):
        assert not (w / name).exists()
        assert sandbox.can_read(f"{w}/{name}/x")
        assert not sandbox.can_write(f"{w}/{name}")
        assert not sandbox.can_write(f"{w}/{name}/x")
    assert sandbox.can_write(f"{w}/.github/x")
    # An explicit write entry for the protected path itself wins.
    opened = sandbox_of(restricted(at(w, "write"), at(w / ".git", "write")))
    assert opened.can_write(f"{w}/.git/config")


def test_git_pointer_file_target_is_protected(tmp_path: Path) -> None:
    w = tmp_path / "w"
    (w / "gitdirs" / "wt").mkdir(parents=True)
    (w / ".git").write_text("gitdir: gitdirs/wt\n")
    sandbox = sandbox_of(restricted(at(w, "write")))
    assert not sandbox.can_write(f"{w}/.git")
    assert not sandbox.can_write(f"{w}/gitdirs/wt/HEAD")
    assert sandbox.can_write(f"{w}/gitdirs/other")


def test_symlinked_git_is_protected_as_link_and_target(tmp_path: Path) -> None:
    w = tmp_path / "w"
    (w / "realgit").mkdir(parents=True)
    os.symlink(w / "realgit", w / ".git")
    sandbox = sandbox_of(restricted(at(w, "write")))
    assert not sandbox.can_write(f"{w}/realgit/config")
    with pytest.raises(SandboxDenied):
        sandbox.check_remove(f"{w}/.git", recursive=True, force=False)


def test_roots_named_through_symlinks_are_canonical(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    os.symlink(real, tmp_path / "alias")
    sandbox = sandbox_of(restricted(at(tmp_path / "alias", "write")))
    assert sandbox.entries[0] == ResolvedEntry(str(real), Access.WRITE)
    sandbox.check_write(f"{tmp_path}/alias/x")
    sandbox.check_write(f"{real}/x")


def test_resolve_location(tmp_path: Path) -> None:
    os.symlink(tmp_path / "target", tmp_path / "link")
    assert resolve_location(f"{tmp_path}/link") == f"{tmp_path}/target"
    assert resolve_location(f"{tmp_path}/link", follow_final=False) == f"{tmp_path}/link"
    assert resolve_location(f"{tmp_path}/link/x", follow_final=False) == f"{tmp_path}/target/x"
    assert resolve_location("/", follow_final=False) == "/"


def test_visibility_includes_the_way_to_readable_roots(tmp_path: Path) -> None:
    sandbox = sandbox_of(restricted(at(tmp_path / "a" / "b", "read"), at(tmp_path / "n", "none")))
    assert sandbox.is_visible("/")
    assert sandbox.is_visible(str(tmp_path / "a"))
    assert sandbox.is_visible(str(tmp_path / "a" / "b" / "c"))
    assert not sandbox.is_visible(str(tmp_path / "a" / "c"))
    assert not sandbox.is_visible(str(tmp_path / "n"))


# --- enforcement through the handler (spec items 30-33) ------------------------------


async def test_read_inside_readable_root_and_write_outside_writable(
    fs: FileSystemHandler, work: Path
) -> None:
    policy = workspace_policy(work)
    ro = work.parent / "ro"
    result = await fs.read_file(params(m.FsReadFileParams, path=f"{ro}/r", sandbox=policy))
    assert result.data_base64 == b"r"
    await fs.write_file(
        params(m.FsWriteFileParams, path=f"{work}/new", dataBase64=b64(b"ok"), sandbox=policy)
    )
    assert (work / "new").read_bytes() == b"ok"
    await expect_error(
        fs.write_file(
            params(m.FsWriteFileParams, path=f"{ro}/r", dataBase64=b64(b"x"), sandbox=policy)
        ),
        INTERNAL_ERROR,
        EROFS_TEXT,
    )
    assert (ro / "r").read_bytes() == b"r"
    await expect_error(
        fs.read_file(
            params(m.FsReadFileParams, path=f"{work.parent}/outside/secret", sandbox=policy)
        ),
        NOT_FOUND,
        ENOENT_TEXT,
    )


async def test_policy_without_entries_hides_everything(fs: FileSystemHandler, work: Path) -> None:
    policy = restricted()
    await expect_error(
        fs.read_file(params(m.FsReadFileParams, path=f"{work}/f", sandbox=policy)),
        NOT_FOUND,
        ENOENT_TEXT,
    )
    await expect_error(
        fs.write_file(params(m.FsWriteFileParams, path=f"{work}/x", dataBase64="", sandbox=policy)),
        NOT_FOUND,
        ENOENT_TEXT,
    )
    assert not (work / "x").exists()


async def test_symlink_escapes_are_refused(fs: FileSystemHandler, work: Path) -> None:
    policy = workspace_policy(work)
    outside = work.parent / "outside"
    hidden = [
        fs.read_file(params(m.FsReadFileParams, path=f"{work}/link/secret", sandbox=policy)),
        fs.read_file(params(m.FsReadFileParams, path=f"{work}/flink", sandbox=policy)),
        fs.read_file(params(m.FsReadFileParams, path=f"{work}/rellink/secret", sandbox=policy)),
        fs.read_directory(params(m.FsReadDirectoryParams, path=f"{work}/link", sandbox=policy)),
        fs.get_metadata(params(m.FsGetMetadataParams, path=f"{work}/link", sandbox=policy)),
        fs.get_metadata(params(m.FsGetMetadataParams, path=f"{work}/flink", sandbox=policy)),
    ]
    for call in hidden:
        await expect_error(call, NOT_FOUND, ENOENT_TEXT)
    refused = [
        fs.write_file(
            params(m.FsWriteFileParams, path=f"{work}/link/new", dataBase64="", sandbox=policy)
        ),
        fs.write_file(
            params(m.FsWriteFileParams, path=f"{work}/flink", dataBase64="", sandbox=policy)
        ),
        fs.write_file(
            params(m.FsWriteFileParams, path=f"{work}/dangling", dataBase64="", sandbox=policy)
        ),
        fs.write_file(
            params(m.FsWriteFileParams, path=f"{work}/rellink/new", dataBase64="", sandbox=policy)
        ),
        fs.create_directory(
            params(m.FsCreateDirectoryParams, path=f"{work}/link/newdir", sandbox=policy)
        ),
        fs.create_directory(
            params(m.FsCreateDirectoryParams, path=f"{work}/link/a/b/c", sandbox=policy)
        ),
        fs.create_directory(
            params(
                m.FsCreateDirectoryParams,
                path=f"{work}/link/newdir2",
                recursive=False,
                sandbox=policy,
            )
        ),
        fs.copy(
            params(
                m.FsCopyParams,
                sourcePath=f"{work}/f",
                destinationPath=f"{work}/link/copied",
                recursive=False,
                sandbox=policy,
            )
        ),
        fs.copy(
            params(
                m.FsCopyParams,
                sourcePath=f"{work}/inner",
                destinationPath=f"{work}/link/copied_dir",
                recursive=True,
                sandbox=policy,
            )
        ),
    ]
    for call in refused:
        with pytest.raises(RpcError) as info:
            await call
        # Hidden parent: ENOENT; visible read-only parent: EROFS (as in 0.133).
        assert (info.value.code, info.value.message) in {
            (NOT_FOUND, ENOENT_TEXT),
            (INTERNAL_ERROR, EROFS_TEXT),
        }
    assert sorted(p.name for p in outside.iterdir()) == ["od", "secret"]
    assert (outside / "secret").read_bytes() == b"secret"


async def test_dotdot_after_symlink_is_normalised_before_checking(
    fs: FileSystemHandler, work: Path
) -> None:
    # link/../x is work/x lexically (allowed), although physically it is outside/../x.
    policy = workspace_policy(work)
    await fs.write_file(
        params(m.FsWriteFileParams, path=f"{work}/link/../x", dataBase64=b64(b"in"), sandbox=policy)
    )
    assert (work / "x").read_bytes() == b"in"
    assert not (work.parent / "x").exists()


async def test_write_through_hard_link_updates_shared_inode(
    fs: FileSystemHandler, work: Path
) -> None:
    ro_file = work.parent / "ro" / "r"
    os.link(ro_file, work / "hard")
    policy = workspace_policy(work)
    await fs.write_file(
        params(m.FsWriteFileParams, path=f"{work}/hard", dataBase64=b64(b"new"), sandbox=policy)
    )
    assert ro_file.read_bytes() == b"new"
    assert ro_file.stat().st_ino == (work / "hard").stat().st_ino


async def test_alias_roots_and_additional_write_roots(fs: FileSystemHandler, work: Path) -> None:
    extra = work.parent / "extra"
    extra.mkdir()
    alias_policy = restricted(at(work.parent / "walias", "write"), at(extra, "write"))
    for path in (f"{work}/via_real", f"{work.parent}/walias/via_alias", f"{extra}/x"):
        await fs.write_file(
            params(m.FsWriteFileParams, path=path, dataBase64=b64(b"ok"), sandbox=alias_policy)
        )
    assert (work / "via_real").read_bytes() == b"ok"
    assert (work / "via_alias").read_bytes() == b"ok"
    assert (extra / "x").read_bytes() == b"ok"


async def test_protected_paths_in_the_workspace(fs: FileSystemHandler, work: Path) -> None:
    policy = workspace_policy(work)
    await expect_error(
        fs.write_file(
            params(m.FsWriteFileParams, path=f"{work}/.git/config", dataBase64="", sandbox=policy)
        ),
        INTERNAL_ERROR,
        EROFS_TEXT,
    )
    for path in (f"{work}/.agents/skills", f"{work}/.codex"):
        await expect_error(
            fs.create_directory(params(m.FsCreateDirectoryParams, path=path, sandbox=policy)),
            INTERNAL_ERROR,
            EROFS_TEXT,
        )
    assert not (work / ".codex").exists()
    # Reading them is fine; so is the existing .git directory itself.
    meta = await fs.get_metadata(params(m.FsGetMetadataParams, path=f"{work}/.git", sandbox=policy))
    assert meta.is_directory
    await fs.create_directory(
        params(m.FsCreateDirectoryParams, path=f"{work}/.git", sandbox=policy)
    )


async def test_create_directory_chain_above_a_missing_root_is_refused(
    fs: FileSystemHandler, work: Path
) -> None:
    missing_root = work.parent / "ro" / "newroot"
    policy = workspace_policy(work, at(missing_root, "write"))
    await expect_error(
        fs.create_directory(
            params(m.FsCreateDirectoryParams, path=f"{missing_root}/x", sandbox=policy)
        ),
        INTERNAL_ERROR,
        EROFS_TEXT,
    )
    assert not missing_root.exists()
    await fs.create_directory(
        params(m.FsCreateDirectoryParams, path=f"{work}/n1/n2/n3", sandbox=policy)
    )
    assert (work / "n1" / "n2" / "n3").is_dir()


async def test_remove_in_the_sandbox(fs: FileSystemHandler, work: Path) -> None:
    policy = workspace_policy(work)
    ro = work.parent / "ro"
    # A symlink pointing outside goes; its target stays.
    await fs.remove(params(m.FsRemoveParams, path=f"{work}/link", sandbox=policy))
    assert not os.path.lexists(work / "link")
    assert (work.parent / "outside" / "secret").exists()
    # Read-only things are refused.
    for path in (f"{ro}/r", str(work), f"{work}/.git"):
        await expect_error(
            fs.remove(params(m.FsRemoveParams, path=path, sandbox=policy)),
            INTERNAL_ERROR,
            EROFS_TEXT,
        )
    assert (ro / "r").exists() and work.is_dir() and (work / ".git").is_dir()
    # Missing (or hidden) paths are forgiven by force, NotFound otherwise.
    for path in (
        f"{ro}/nothing",
        f"{work.parent}/outside/nothing",
        f"{work.parent}/outside/secret",
    ):
        await fs.remove(params(m.FsRemoveParams, path=path, sandbox=policy))
        await expect_error(
            fs.remove(params(m.FsRemoveParams, path=path, force=False, sandbox=policy)),
            NOT_FOUND,
            ENOENT_TEXT,
        )
    assert (work.parent / "outside" / "secret").exists()


async def test_recursive_remove_cannot_reach_a_carve_out(fs: FileSystemHandler, work: Path) -> None:
    (work / "nested" / "keep").mkdir(parents=True)
    (work / "nested" / "keep" / "x").write_bytes(b"x")
    (work / "nested" / "other").write_bytes(b"o")
    policy = workspace_policy(work, at(work / "nested" / "keep", "none"))
    await expect_error(
        fs.remove(params(m.FsRemoveParams, path=f"{work}/nested", sandbox=policy)),
        INTERNAL_ERROR,
        EROFS_TEXT,
    )
    assert (work / "nested" / "other").exists()
    # The hidden file inside counts as missing (0.133: {} with force, else -32004).
    await fs.remove(params(m.FsRemoveParams, path=f"{work}/nested/keep/x", sandbox=policy))
    await expect_error(
        fs.remove(
            params(m.FsRemoveParams, path=f"{work}/nested/keep/x", force=False, sandbox=policy)
        ),
        NOT_FOUND,
        ENOENT_TEXT,
    )
    assert (work / "nested" / "keep" / "x").exists()
    await fs.remove(params(m.FsRemoveParams, path=f"{work}/nested/other", sandbox=policy))
    assert not (work / "nested" / "other").exists()


async def test_none_entries_hide_and_refuse(fs: FileSystemHandler, work: Path) -> None:
    (work / "priv").mkdir()
    (work / "priv" / "p").write_bytes(b"p")
    for access in ("none", "deny"):
        policy = restricted(special("root", "read"), at(work, "write"), at(work / "priv", access))
        await expect_error(
            fs.read_file(params(m.FsReadFileParams, path=f"{work}/priv/p", sandbox=policy)),
            NOT_FOUND,
            ENOENT_TEXT,
        )
        await expect_error(
            fs.write_file(
                params(m.FsWriteFileParams, path=f"{work}/priv/q", dataBase64="", sandbox=policy)
            ),
            INTERNAL_ERROR,
            EROFS_TEXT,
        )


async def test_read_directory_shows_only_what_the_sandbox_sees(
    fs: FileSystemHandler, work: Path
) -> None:
    policy = workspace_policy(work)
    listing = await fs.read_directory(
        params(m.FsReadDirectoryParams, path=str(work), sandbox=policy)
    )
    names = [e.file_name for e in listing.entries]
    # link/flink/rellink point into the hidden outside; dangling is broken anyway.
    assert names == [".git", "f", "inner"]
    # Above the roots only the way to them is listed (bubblewrap's skeleton).
    parent = await fs.read_directory(
        params(m.FsReadDirectoryParams, path=str(work.parent), sandbox=policy)
    )
    assert [e.file_name for e in parent.entries] == ["ro", "work"]
    root = await fs.get_metadata(params(m.FsGetMetadataParams, path="/", sandbox=policy))
    assert root.is_directory


async def test_recursive_copy_skips_hidden_entries_and_refuses_carve_outs(
    fs: FileSystemHandler, work: Path
) -> None:
    src = work / "src"
    (src / "secret").mkdir(parents=True)
    (src / "secret" / "s").write_bytes(b"s")
    (src / "plain").write_bytes(b"p")
    policy = workspace_policy(work, at(src / "secret", "none"))
    await fs.copy(
        params(
            m.FsCopyParams,
            sourcePath=str(src),
            destinationPath=f"{work}/dst",
            recursive=True,
            sandbox=policy,
        )
    )
    assert sorted(p.name for p in (work / "dst").iterdir()) == ["plain"]
    # A tree with a .git copied over the workspace root would write into .git.
    (work / "repo" / ".git").mkdir(parents=True)
    (work / "repo" / ".git" / "HEAD").write_bytes(b"ref")
    await expect_error(
        fs.copy(
            params(
                m.FsCopyParams,
                sourcePath=f"{work}/repo",
                destinationPath=str(work),
                recursive=True,
                sandbox=policy,
            )
        ),
        INTERNAL_ERROR,
        EROFS_TEXT,
    )
    assert not (work / ".git" / "HEAD").exists()


async def test_copy_source_must_be_readable(fs: FileSystemHandler, work: Path) -> None:
    policy = workspace_policy(work)
    await expect_error(
        fs.copy(
            params(
                m.FsCopyParams,
                sourcePath=f"{work.parent}/outside/secret",
                destinationPath=f"{work}/stolen",
                recursive=False,
                sandbox=policy,
            )
        ),
        NOT_FOUND,
        ENOENT_TEXT,
    )
    assert not (work / "stolen").exists()
    # A symlink source is copied as a link; only its own entry has to be visible.
    await fs.copy(
        params(
            m.FsCopyParams,
            sourcePath=f"{work}/link",
            destinationPath=f"{work}/link2",
            recursive=False,
            sandbox=policy,
        )
    )
    assert os.readlink(work / "link2") == str(work.parent / "outside")


async def test_dynamic_permissions_without_cwd_through_the_handler(
    fs: FileSystemHandler, work: Path
) -> None:
    policy = restricted(special("root", "read"), special("current_working_directory", "write"))
    await expect_error(
        fs.write_file(params(m.FsWriteFileParams, path=f"{work}/a", dataBase64="", sandbox=policy)),
        INVALID_REQUEST,
        DYNAMIC_PERMISSIONS_NEED_CWD_MESSAGE,
    )
    policy["cwd"] = str(work)
    await fs.write_file(
        params(m.FsWriteFileParams, path=f"{work}/a", dataBase64="", sandbox=policy)
    )
    assert (work / "a").exists()


async def test_invalid_sandbox_is_invalid_params_before_any_io(
    fs: FileSystemHandler, work: Path
) -> None:
    bad = {"permissions": {"type": "bogus"}, "windowsSandboxLevel": "disabled"}
    await expect_error(
        fs.write_file(params(m.FsWriteFileParams, path=f"{work}/a", dataBase64="", sandbox=bad)),
        INVALID_PARAMS,
        MALFORMED_PROFILE_MESSAGE,
    )
    assert not (work / "a").exists()


async def test_harness_flow_like_apply_patch(fs: FileSystemHandler, work: Path) -> None:
    policy = harness_sandbox(work)
    await expect_error(
        fs.get_metadata(params(m.FsGetMetadataParams, path=f"{work}/hello.txt", sandbox=policy)),
        NOT_FOUND,
        ENOENT_TEXT,
    )
    await fs.write_file(
        params(m.FsWriteFileParams, path=f"{work}/hello.txt", dataBase64=b64(b"hi"), sandbox=policy)
    )
    read = await fs.read_file(params(m.FsReadFileParams, path=f"{work}/hello.txt", sandbox=policy))
    assert read.data_base64 == b"hi"
    await expect_error(
        fs.write_file(
            params(m.FsWriteFileParams, path=f"{work}/.git/config", dataBase64="", sandbox=policy)
        ),
        INTERNAL_ERROR,
        EROFS_TEXT,
    )
    # Outside the workspace and /tmp everything is read-only (this parent does not
    # exist, so a missing check would surface as -32004 instead).
    await expect_error(
        fs.write_file(
            params(
                m.FsWriteFileParams,
                path="/usr/exec-server-test-no-such-dir/f",
                dataBase64="",
                sandbox=policy,
            )
        ),
        INTERNAL_ERROR,
        EROFS_TEXT,
    )


async def test_disabled_sandbox_passes_through(fs: FileSystemHandler, work: Path) -> None:
    policy = {"permissions": {"type": "disabled"}, "windowsSandboxLevel": "disabled"}
    await fs.write_file(
        params(m.FsWriteFileParams, path=f"{work}/.git/config", dataBase64="", sandbox=policy)
    )
    assert (work / ".git" / "config").exists()
