"""The fs/* surface, including every error case: Codex 0.133.0 vs ours."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from interop_support import Differ, RawClient, ScriptContext, b64, read_file_view, result_of

pytestmark = pytest.mark.interop


def fixture_tree(root: Path) -> None:
    """A small tree created on disk directly (not through the server under test)."""
    (root / "dir" / "sub").mkdir(parents=True)
    (root / "dir" / "a.txt").write_text("alpha")
    (root / "dir" / "sub" / "b.txt").write_text("beta")
    (root / "file.txt").write_text("hello")
    (root / "empty").mkdir()
    os.symlink(root / "file.txt", root / "link-to-file")
    os.symlink(root / "dir", root / "link-to-dir")
    os.symlink(root / "missing-target", root / "broken-link")


async def meta(c: RawClient, path: str) -> Any:
    return await c.call("fs/getMetadata", {"path": path})


async def test_write_read_roundtrip(differ: Differ) -> None:
    async def script(ctx: ScriptContext) -> None:
        c = await ctx.connect_ready()
        await c.call("fs/writeFile", {"path": ctx.path("new.txt"), "dataBase64": b64("hi\n")})
        await c.call("fs/readFile", {"path": ctx.path("new.txt")})
        await c.call("fs/writeFile", {"path": ctx.path("new.txt"), "dataBase64": b64("x")})
        await c.call("fs/readFile", {"path": ctx.path("new.txt")}, view=read_file_view)
        await c.call("fs/writeFile", {"path": ctx.path("empty.bin"), "dataBase64": ""})
        await c.call("fs/readFile", {"path": ctx.path("empty.bin")})
        binary = bytes(range(256)) * 17
        await c.call(
            "fs/writeFile", {"path": ctx.path("bin"), "dataBase64": b64(binary)}, view=lambda r: r
        )
        resp = await c.call("fs/readFile", {"path": ctx.path("bin")}, record=False)
        ctx.note("binary round trip intact", result_of(resp).get("dataBase64") == b64(binary))
        ctx.note("written file on disk", ctx.read_bytes("bin") == binary)
        # Unicode and spaces in names.
        name = ctx.path("spaced näme ✓.txt")
        await c.call("fs/writeFile", {"path": name, "dataBase64": b64("ü")})
        await c.call("fs/readFile", {"path": name}, view=read_file_view)
        # Extra fields and an explicit null sandbox are fine.
        await c.call(
            "fs/readFile", {"path": name, "sandbox": None, "unknown": 1}, view=read_file_view
        )

    await differ.check(script)


async def test_write_file_mode_and_overwrite_through_symlink(differ: Differ) -> None:
    async def script(ctx: ScriptContext) -> None:
        fixture_tree(ctx.tmp)
        c = await ctx.connect_ready()
        await c.call("fs/writeFile", {"path": ctx.path("m.txt"), "dataBase64": b64("m")})
        ctx.note("new file mode", ctx.mode("m.txt"))
        os.chmod(ctx.path("file.txt"), 0o600)
        await c.call("fs/writeFile", {"path": ctx.path("link-to-file"), "dataBase64": b64("via")})
        ctx.note("symlink still a symlink", ctx.islink("link-to-file"))
        ctx.note("target content", ctx.read_text("file.txt"))
        ctx.note("existing mode kept", ctx.mode("file.txt"))
        await c.call("fs/writeFile", {"path": ctx.path("broken-link"), "dataBase64": b64("b")})
        ctx.note("broken link target created", ctx.exists("missing-target"))

    await differ.check(script)


async def test_read_write_errors(differ: Differ) -> None:
    async def script(ctx: ScriptContext) -> None:
        fixture_tree(ctx.tmp)
        os.mkfifo(ctx.path("fifo"))
        c = await ctx.connect_ready()
        await c.call("fs/readFile", {"path": ctx.path("missing.txt")})
        await c.call("fs/readFile", {"path": ctx.path("no-dir", "x.txt")})
        await c.call("fs/readFile", {"path": ctx.path("dir")})
        await c.call("fs/readFile", {"path": ctx.path("file.txt", "child")})
        await c.call("fs/readFile", {"path": ctx.path("broken-link")})
        await c.call("fs/readFile", {"path": ctx.path("link-to-file")}, view=read_file_view)
        await c.call("fs/readFile", {"path": "relative.txt"})
        await c.call("fs/readFile", {"path": ""})
        await c.call("fs/readFile", {"path": "~/x"})
        await c.call(
            "fs/readFile", {"path": ctx.path("dir", "..", "file.txt")}, view=read_file_view
        )
        await c.call("fs/readFile", {})
        await c.call("fs/readFile", {"path": 5})
        await c.call(
            "fs/readFile", {"path": ctx.path("file.txt"), "sandbox": "yes"}, view=read_file_view
        )
        await c.call("fs/writeFile", {"path": ctx.path("no-dir", "x.txt"), "dataBase64": b64("x")})
        await c.call("fs/writeFile", {"path": ctx.path("dir"), "dataBase64": b64("x")})
        await c.call(
            "fs/writeFile", {"path": ctx.path("file.txt", "child"), "dataBase64": b64("x")}
        )
        await c.call("fs/writeFile", {"path": ctx.path("bad.txt"), "dataBase64": "***"})
        await c.call("fs/writeFile", {"path": ctx.path("bad.txt"), "dataBase64": "aGk"})
        await c.call("fs/writeFile", {"path": ctx.path("bad.txt"), "dataBase64": "aG k="})
        ctx.note("bad.txt created by a failed write", ctx.exists("bad.txt"))
        await c.call("fs/writeFile", {"path": ctx.path("bad.txt"), "dataBase64": 5})
        await c.call("fs/writeFile", {"path": ctx.path("bad.txt")})
        await c.call("fs/writeFile", {"path": "rel.txt", "dataBase64": b64("x")})
        await c.call("fs/writeFile", {"path": "/proc/version", "dataBase64": b64("x")})
        await c.call("fs/writeFile", {"path": "/", "dataBase64": b64("x")})

    await differ.check(script)


async def test_read_file_max_bytes(differ: Differ) -> None:
    """0.133 ignores ``maxBytes`` on fs/readFile; we enforce it like later Codex versions
    (-32600 "file is too large to read: limit is N bytes")."""

    async def script(ctx: ScriptContext) -> None:
        fixture_tree(ctx.tmp)
        c = await ctx.connect_ready()
        await c.call(
            "fs/readFile", {"path": ctx.path("file.txt"), "maxBytes": 3}, view=read_file_view
        )
        await c.call(
            "fs/readFile", {"path": ctx.path("file.txt"), "maxBytes": 5}, view=read_file_view
        )

    runs = await differ.each(script)
    codex = [e["recv"] for e in runs["codex"].normalized(strict=True)]
    assert codex == [{"id": 2, "result": {"data": "hello"}}, {"id": 3, "result": {"data": "hello"}}]
    if "ours" in runs:
        ours = [e["recv"] for e in runs["ours"].normalized(strict=True)]
        assert ours == [
            {
                "error": {"code": -32600, "message": "file is too large to read: limit is 3 bytes"},
                "id": 2,
            },
            {"id": 3, "result": {"data": "hello"}},
        ], ours


async def test_get_metadata(differ: Differ) -> None:
    async def script(ctx: ScriptContext) -> None:
        fixture_tree(ctx.tmp)
        c = await ctx.connect_ready()
        for name in ("file.txt", "dir", "empty", "link-to-file", "link-to-dir", "broken-link"):
            await meta(c, ctx.path(name))
        await meta(c, ctx.path("missing"))
        await meta(c, ctx.path("file.txt", "child"))
        await meta(c, "/dev/null")
        await meta(c, "/")
        await meta(c, "relative")
        await meta(c, ctx.path("dir") + "/")
        await meta(c, ctx.path("dir", ".", "sub", ".."))
        await c.call("fs/getMetadata", {})
        # createdAtMs is 0 in 0.133 (no birth time through its stat); modifiedAtMs is real.
        resp = await meta(c, ctx.path("file.txt"))
        result = result_of(resp)
        mtime_ms = ctx.mtime_ms("file.txt")
        ctx.note(
            "modifiedAtMs matches st_mtime", abs(result.get("modifiedAtMs", 0) - mtime_ms) <= 1
        )
        # 0.133 reports 0 (no birth time); a real birth time is fine too.
        ctx.note("createdAtMs is zero", result.get("createdAtMs") == 0, strict_only=True)

    await differ.check(script)


async def test_read_directory(differ: Differ) -> None:
    async def script(ctx: ScriptContext) -> None:
        fixture_tree(ctx.tmp)

        def sorted_view(resp: Any) -> Any:
            if isinstance(resp, dict) and "result" in resp:
                entries = resp["result"]["entries"]
                return {"sorted entries": sorted(entries, key=lambda e: e["fileName"])}
            return resp

        c = await ctx.connect_ready()
        await c.call("fs/readDirectory", {"path": ctx.path()}, view=sorted_view)
        await c.call("fs/readDirectory", {"path": ctx.path("dir")}, view=sorted_view)
        await c.call("fs/readDirectory", {"path": ctx.path("empty")})
        await c.call("fs/readDirectory", {"path": ctx.path("link-to-dir")}, view=sorted_view)
        await c.call("fs/readDirectory", {"path": ctx.path("missing")})
        await c.call("fs/readDirectory", {"path": ctx.path("file.txt")})
        await c.call("fs/readDirectory", {"path": ctx.path("broken-link")})
        await c.call("fs/readDirectory", {"path": "rel"})

    await differ.check(script)


async def test_read_directory_order(differ: Differ) -> None:
    """Intentional difference: 0.133 lists entries in readdir order; ours sorts by name."""

    async def script(ctx: ScriptContext) -> None:
        for name in ("n3", "b", "n1", "zz", "a", "n2", "m", "c0", "y", "c1"):
            ctx.write_text("", name)
        c = await ctx.connect_ready()
        resp = await c.call("fs/readDirectory", {"path": ctx.path()}, record=False)
        ctx.note("names", [e["fileName"] for e in result_of(resp).get("entries", [])])
        ctx.note("readdir order", os.listdir(ctx.path()))

    runs = await differ.each(script)
    codex = {e["note"]: e["value"] for e in runs["codex"].normalized()}
    assert codex["names"] == codex["readdir order"], codex
    if "ours" in runs:
        ours = {e["note"]: e["value"] for e in runs["ours"].normalized()}
        assert ours["names"] == sorted(ours["readdir order"]), ours


async def test_create_directory(differ: Differ) -> None:
    async def script(ctx: ScriptContext) -> None:
        fixture_tree(ctx.tmp)
        c = await ctx.connect_ready()
        await c.call("fs/createDirectory", {"path": ctx.path("a", "b", "c")})
        await meta(c, ctx.path("a", "b", "c"))
        await c.call("fs/createDirectory", {"path": ctx.path("a", "b", "c")})
        await c.call("fs/createDirectory", {"path": ctx.path("x", "y"), "recursive": False})
        await c.call("fs/createDirectory", {"path": ctx.path("x"), "recursive": False})
        await c.call("fs/createDirectory", {"path": ctx.path("x"), "recursive": False})
        await c.call("fs/createDirectory", {"path": ctx.path("x"), "recursive": True})
        await c.call("fs/createDirectory", {"path": ctx.path("file.txt")})
        await c.call("fs/createDirectory", {"path": ctx.path("file.txt"), "recursive": False})
        await c.call("fs/createDirectory", {"path": ctx.path("file.txt", "sub")})
        await c.call("fs/createDirectory", {"path": ctx.path("link-to-dir")})
        await c.call("fs/createDirectory", {"path": ctx.path("broken-link")})
        await c.call("fs/createDirectory", {"path": "rel/dir"})
        await c.call("fs/createDirectory", {"path": ctx.path("q"), "recursive": "yes"})
        await c.call("fs/createDirectory", {"path": "/proc/nope"})
        ctx.note("new dir mode", ctx.mode("x"))

    await differ.check(script)


async def test_remove(differ: Differ) -> None:
    async def script(ctx: ScriptContext) -> None:
        fixture_tree(ctx.tmp)
        c = await ctx.connect_ready()
        await c.call("fs/remove", {"path": ctx.path("dir"), "recursive": False})
        await c.call("fs/remove", {"path": ctx.path("empty"), "recursive": False})
        await meta(c, ctx.path("empty"))
        await c.call("fs/remove", {"path": ctx.path("missing")})
        await c.call("fs/remove", {"path": ctx.path("missing"), "force": False})
        await c.call("fs/remove", {"path": ctx.path("missing", "deeper"), "force": False})
        await c.call("fs/remove", {"path": ctx.path("link-to-dir")})
        ctx.note("link removed, target kept", [ctx.lexists("link-to-dir"), ctx.isdir("dir")])
        await c.call("fs/remove", {"path": ctx.path("broken-link"), "force": False})
        await c.call(
            "fs/remove", {"path": ctx.path("file.txt"), "recursive": False, "force": False}
        )
        await c.call("fs/remove", {"path": ctx.path("dir")})
        ctx.note("dir gone", ctx.lexists("dir"))
        await c.call("fs/remove", {"path": "rel"})
        await c.call("fs/remove", {"path": ctx.path("x"), "force": "no"})
        await c.call("fs/remove", {})

    await differ.check(script)


async def test_remove_permission_denied(differ: Differ) -> None:
    """A read-only parent (meaningful only when not running as root)."""

    async def script(ctx: ScriptContext) -> None:
        fixture_tree(ctx.tmp)
        os.chmod(ctx.path("dir"), 0o500)
        try:
            c = await ctx.connect_ready()
            await c.call("fs/remove", {"path": ctx.path("dir", "a.txt")})
            await c.call("fs/writeFile", {"path": ctx.path("dir", "new"), "dataBase64": ""})
            await c.call("fs/remove", {"path": "/proc/version"})
        finally:
            os.chmod(ctx.path("dir"), 0o700)

    await differ.check(script)


async def test_copy(differ: Differ) -> None:
    async def script(ctx: ScriptContext) -> None:
        fixture_tree(ctx.tmp)
        c = await ctx.connect_ready()

        async def copy(src: str, dst: str, recursive: Any = False, **kw: Any) -> Any:
            return await c.call(
                "fs/copy", {"sourcePath": src, "destinationPath": dst, "recursive": recursive, **kw}
            )

        await copy(ctx.path("file.txt"), ctx.path("copy.txt"))
        await c.call("fs/readFile", {"path": ctx.path("copy.txt")}, view=read_file_view)
        await copy(ctx.path("file.txt"), ctx.path("copy.txt"))  # overwrite existing file
        await copy(ctx.path("file.txt"), ctx.path("copy2.txt"), True)
        await copy(ctx.path("dir"), ctx.path("dir-copy"))
        await copy(ctx.path("dir"), ctx.path("dir-copy"), True)
        await c.call(
            "fs/readFile", {"path": ctx.path("dir-copy", "sub", "b.txt")}, view=read_file_view
        )
        await copy(ctx.path("dir"), ctx.path("dir-copy"), True)  # into an existing dir?
        resp = await c.call("fs/readDirectory", {"path": ctx.path("dir-copy")}, record=False)
        ctx.note(
            "dir-copy entries after second copy",
            sorted(e["fileName"] for e in result_of(resp).get("entries", [])),
        )
        await copy(ctx.path("missing"), ctx.path("m2"))
        await copy(ctx.path("missing"), ctx.path("m2"), True)
        await copy(ctx.path("file.txt"), ctx.path("no-dir", "x"))
        await copy(ctx.path("file.txt"), ctx.path("dir"))  # onto a directory
        await copy(ctx.path("dir"), ctx.path("file.txt"), True)  # dir onto a file
        await copy(ctx.path("dir"), ctx.path("dir", "sub", "inside"), True)  # into itself
        ctx.note("copy into itself created", ctx.exists("dir", "sub", "inside"))
        await copy(ctx.path("link-to-file"), ctx.path("link-copy"))
        ctx.note("copied symlink is a symlink", ctx.islink("link-copy"))
        await copy(ctx.path("link-to-dir"), ctx.path("linkdir-copy"))
        await copy(ctx.path("link-to-dir"), ctx.path("linkdir-copy2"), True)
        ctx.note("copied dir symlink is a symlink", ctx.islink("linkdir-copy2"))
        await copy(ctx.path("broken-link"), ctx.path("broken-copy"))
        ctx.note("copied broken link is a symlink", ctx.islink("broken-copy"))
        await copy("rel", ctx.path("x"))
        await copy(ctx.path("file.txt"), "rel")
        await c.call(
            "fs/copy", {"sourcePath": ctx.path("file.txt"), "destinationPath": ctx.path("nr")}
        )
        await copy(ctx.path("file.txt"), ctx.path("x"), "yes")

    await differ.check(script)


async def test_copy_file_onto_itself(differ: Differ) -> None:
    """0.133 answers {} and truncates the file to 0 bytes: data loss we do not copy.

    Both answer the same; only the file content afterwards differs on purpose.
    """

    async def script(ctx: ScriptContext) -> None:
        fixture_tree(ctx.tmp)
        c = await ctx.connect_ready()
        for src, dst in [("file.txt", "file.txt"), ("link-to-file", "file.txt"), ("dir", "dir")]:
            await c.call(
                "fs/copy",
                {"sourcePath": ctx.path(src), "destinationPath": ctx.path(dst), "recursive": True},
            )
        ctx.note("file.txt afterwards", ctx.read_text("file.txt"))
        ctx.note("dir/a.txt afterwards", ctx.read_text("dir", "a.txt"))

    runs = await differ.each(script)
    codex = runs["codex"].normalized(strict=True)
    assert codex[-2]["value"] == "", codex  # truncated by 0.133
    if "ours" in runs:
        ours = runs["ours"].normalized(strict=True)
        replies = [e["recv"] for e in codex[:-2]], [e["recv"] for e in ours[:-2]]
        assert replies[0] == replies[1], replies
        assert ours[-2]["value"] == "hello", ours
        assert ours[-1] == codex[-1], (ours, codex)


async def test_copy_preserves_mode_and_nested_links(differ: Differ) -> None:
    async def script(ctx: ScriptContext) -> None:
        fixture_tree(ctx.tmp)
        os.chmod(ctx.path("file.txt"), 0o751)
        os.symlink("a.txt", ctx.path("dir", "rel-link"))
        c = await ctx.connect_ready()
        await c.call(
            "fs/copy",
            {
                "sourcePath": ctx.path("file.txt"),
                "destinationPath": ctx.path("mode.txt"),
                "recursive": False,
            },
        )
        ctx.note("copied mode", ctx.mode("mode.txt"))
        await c.call(
            "fs/copy",
            {"sourcePath": ctx.path("dir"), "destinationPath": ctx.path("d2"), "recursive": True},
        )
        ctx.note(
            "nested relative link kept as link",
            [ctx.islink("d2", "rel-link"), ctx.readlink("d2", "rel-link")],
        )

    await differ.check(script)


async def test_large_file_roundtrip(differ: Differ) -> None:
    """10 MiB through writeFile/readFile (a ~14 MB websocket frame each way)."""
    data = os.urandom(10 * 1024 * 1024)

    async def script(ctx: ScriptContext) -> None:
        c = await ctx.connect_ready()
        await c.call("fs/writeFile", {"path": ctx.path("big"), "dataBase64": b64(data)}, timeout=60)
        resp = await c.call("fs/readFile", {"path": ctx.path("big")}, record=False, timeout=60)
        ctx.note("10 MiB round trip intact", result_of(resp).get("dataBase64") == b64(data))

    await differ.check(script)


async def test_file_uri_paths(differ: Differ) -> None:
    """0.133 rejects ``file://`` URIs with -32602; we accept them (0.142+ harness form)."""

    async def script(ctx: ScriptContext) -> None:
        fixture_tree(ctx.tmp)
        c = await ctx.connect_ready()
        uri = "file://" + ctx.path("file.txt")
        await c.call("fs/getMetadata", {"path": uri})
        await c.call("fs/readFile", {"path": uri}, view=read_file_view)
        await c.call(
            "fs/writeFile", {"path": "file://" + ctx.path("u.txt"), "dataBase64": b64("u")}
        )
        await c.call("fs/readDirectory", {"path": "file://" + ctx.path("empty")})
        await c.call(
            "process/start",
            {
                "processId": "u",
                "argv": ["/bin/pwd"],
                "cwd": "file://" + ctx.path(),
                "env": {},
                "tty": False,
            },
        )
        await c.wait_closed("u", timeout=5)

    runs = await differ.each(script)
    codex = runs["codex"].normalized(strict=True)
    errors = [e["recv"].get("error", {}).get("code") for e in codex if "recv" in e]
    assert errors[:4] == [-32602] * 4, codex
    assert codex[0]["recv"]["error"]["message"] == (
        "AbsolutePathBuf deserialized without a base path"
    ), codex
    assert errors[4] == -32603, codex  # process/start with a file:// cwd
    if "ours" in runs:
        ours = runs["ours"].normalized(strict=True)
        assert all("result" in e["recv"] for e in ours if "recv" in e), ours
