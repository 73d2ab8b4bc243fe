"""Today's contract: the real Codex 0.171.0 exec-server vs ours, same scripts.

A 0.171 client speaks ``file://`` URIs; every request here does, so our server
answers in 0.171's shapes and texts (a native path would get 0.133's; see
``test_fs.py`` and friends). Deliberate differences are asserted on both sides
with :meth:`Differ.each`; everything else must be equal after normalization.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import pytest
from codex_binary import CODEX_0171, require_codex_binary
from interop_support import (
    ERA_0171,
    JSON,
    Differ,
    RawClient,
    ScriptContext,
    Target,
    b64,
    interop_mode,
    pids_with_marker,
    read_view_exact,
    read_view_joined,
    result_of,
    summarize_events,
)

pytestmark = pytest.mark.interop

THREAD_ID = "01a24d57-a03f-77a3-aa02-306e172ba445"
ENV = {"PATH": "/usr/bin:/bin"}


def uri(ctx: ScriptContext, *parts: str) -> str:
    return Path(ctx.path(*parts)).as_uri()


def error_message(resp: JSON) -> JSON:
    """The exact error text (recorded as a note, so decoder texts are compared too)."""
    return resp.get("error") if isinstance(resp, dict) and "error" in resp else resp


def start_params(ctx: ScriptContext, process_id: str, script: str, **extra: Any) -> JSON:
    return {
        "processId": process_id,
        "metadata": {"threadId": THREAD_ID, "toolCallId": "call"},
        "argv": ["/bin/sh", "-c", script],
        "cwd": uri(ctx),
        "env": ENV,
        "tty": False,
        "pipeStdin": False,
        "arg0": None,
        "sandbox": None,
        "enforceManagedNetwork": False,
        "managedNetwork": None,
        **extra,
    }


# --- handshake and environment ---------------------------------------------------------


def info_view(info: JSON) -> JSON:
    """An EnvironmentInfo with values that depend on the install reduced to their form."""
    caps = info.get("capabilities", {})
    return {
        "keys": list(info),
        "shell": info.get("shell"),
        "platformOs": info.get("platformOs"),
        "uris": all(
            isinstance(info.get(k), str) and info[k].startswith("file:///")
            for k in ("cwd", "userHomeDir", "tempDir")
        ),
        "providerId form": str(info.get("providerId", "")).startswith("sha256:"),
        "capability keys": sorted(caps),
        "capability values are booleans": all(isinstance(v, bool) for v in caps.values()),
    }


async def test_initialize_environment_info_and_status(differ0171: Differ) -> None:
    async def script(ctx: ScriptContext) -> None:
        c = await ctx.connect()
        for method in ("environment/info", "environment/status", "environmentConfig/read"):
            await c.call(method, None)
        await c.call(
            "initialize",
            {"clientName": "codex-environment", "resumeSessionId": None},
            view=lambda r: {"environmentInfo": info_view(r["result"]["environmentInfo"])},
        )
        await c.call("fs/walk", {"path": uri(ctx), "options": {}})
        await c.notify("initialized", {})
        await c.call("environment/info", None, view=lambda r: info_view(r["result"]))
        await c.call("environment/info", {}, view=lambda r: info_view(r["result"]))
        await c.call("environment/status", None)
        await c.call("environment/status", {})
        for bad in ([], 5):
            resp = await c.call("environment/status", bad, record=False)
            ctx.note(f"environment/status {bad!r}", error_message(resp))
        for method in ("fs/unwatchMissing", "fs/watch", "process/resizePty", "shell/snapshot"):
            await c.call(method, {})

    await differ0171.check(script)


async def test_capability_flags_are_honest(differ0171: Differ) -> None:
    """0.171 claims every feature of its own; ours claims only what it implements."""

    async def script(ctx: ScriptContext) -> None:
        c = await ctx.connect()
        resp = await c.initialize(record=False)
        ctx.note("capabilities", resp["result"]["environmentInfo"]["capabilities"])

    runs = await differ0171.each(script)
    codex_caps = runs["codex"].transcript[0]["value"]
    assert codex_caps["fsWatchMissing"] and codex_caps["networkProxyLaunch"], codex_caps
    if "ours" in runs:
        ours = runs["ours"].transcript[0]["value"]
        assert list(ours) == list(codex_caps)
        assert ours["fsWatchMissing"] and ours["fileWriteStreaming"]
        assert not ours["networkProxyLaunch"] and not ours["credentialMasking"]


async def test_absent_params_name_the_rust_type(differ0171: Differ) -> None:
    """The texts for absent params of the methods 0.171 added (the 0.133 names of the
    older ones are compared in test_protocol.py against 0.133)."""

    async def script(ctx: ScriptContext) -> None:
        c = await ctx.connect()
        for method in (
            "fs/readBlock",
            "fs/writeBlock",
            "fs/close",
            "fs/watchMissing",
            "process/signal",
        ):
            resp = await c.call(method, omit_params=True, record=False)
            ctx.note(f"{method} without params", error_message(resp))
            resp = await c.call(method, None, record=False)
            ctx.note(f"{method} null params", error_message(resp))

    await differ0171.check(script)


# --- paths as URIs ------------------------------------------------------------------------


async def test_uri_paths_and_their_errors(differ0171: Differ) -> None:
    async def script(ctx: ScriptContext) -> None:
        Path(ctx.path("f.txt")).write_text("hello")
        os.mkdir(ctx.path("d"))
        os.symlink(ctx.path("f.txt"), ctx.path("ln"))
        c = await ctx.connect_ready()
        base = uri(ctx)
        for path in [
            base + "/f.txt",
            base + "/d",
            "file:///dev/null",
            "http://x/y",
            "C:/x",
            "file://otherhost/x",
            "file://127.0.0.1/x",
            "file:rel",
            "file:" + ctx.path("f.txt"),
            base + "/f.txt?q=1",
            base + "/f.txt#frag",
            "file://localhost" + ctx.path("f.txt"),
            "FILE://" + ctx.path("f.txt"),
            base + "/f%2etxt",
            base + "/d/../f.txt",
            base + "/f.txt/",
            base + "/nope",
            "file://",
            "file:///a%00b",
        ]:
            resp = await c.call("fs/readFile", {"path": path, "sandbox": None}, record=False)
            ctx.note(f"readFile {path}", error_message(resp) if "error" in resp else resp["result"])
        await c.call("fs/getMetadata", {"path": base + "/f.txt", "sandbox": None})
        await c.call("fs/getMetadata", {"path": base + "/ln", "sandbox": None})
        await c.call("fs/readDirectory", {"path": base + "/f.txt", "sandbox": None})
        await c.call("fs/writeFile", {"path": base + "/d", "dataBase64": b64("x")})
        await c.call("fs/writeFile", {"path": base + "/new.txt", "dataBase64": b64("new")})
        await c.call("fs/createDirectory", {"path": base + "/x/y"})
        await c.call("fs/createDirectory", {"path": base + "/x/z/w", "recursive": False})
        await c.call(
            "fs/copy",
            {"sourcePath": base + "/f.txt", "destinationPath": base + "/g.txt", "recursive": False},
        )
        await c.call("fs/remove", {"path": base + "/g.txt"})
        ctx.note("copied then removed", ctx.exists("g.txt"))

    await differ0171.check(script)


async def test_canonicalize_encodes_like_the_url_crate(differ0171: Differ) -> None:
    names = ["p%c", "h#sh", "q?m", "br{}", "ü", "back\\sl", "sq[]", "car^et", "pi|pe", 'dq"']
    names += ["lt<gt>", "bt`", "sp ace", "semi;co:lon@=&+$,()*'~!"]

    async def script(ctx: ScriptContext) -> None:
        for name in names:
            os.mkdir(ctx.path(name))
        os.symlink(ctx.path("sp ace"), ctx.path("link"))
        c = await ctx.connect_ready()
        for name in [*names, "link", "nope"]:
            await c.call("fs/canonicalize", {"path": Path(ctx.path(name)).as_uri()})
        await c.call("fs/canonicalize", {"path": uri(ctx, "sp ace") + "/../link/"})

    await differ0171.check(script)


# --- streamed files -----------------------------------------------------------------------


async def test_file_handles(differ0171: Differ) -> None:
    async def script(ctx: ScriptContext) -> None:
        Path(ctx.path("f.txt")).write_bytes(b"0123456789" * 10)
        os.mkdir(ctx.path("d"))
        c = await ctx.connect_ready()
        f = uri(ctx, "f.txt")
        await c.call("fs/open", {"handleId": "h1", "path": f})
        await c.call("fs/open", {"handleId": "h1", "path": f})
        await c.call("fs/open", {"handleId": "h2", "path": f, "mode": "read"})
        await c.call("fs/open", {"handleId": "x" * 32, "path": f})
        await c.call("fs/open", {"handleId": "y" * 33, "path": f})
        await c.call("fs/open", {"handleId": "", "path": f})
        await c.call("fs/open", {"handleId": "h4", "path": uri(ctx, "d")})
        await c.call("fs/open", {"handleId": "h5", "path": uri(ctx, "nope")})
        for offset, length in [(0, 4), (96, 4), (98, 4), (100, 4), (1000, 4), (0, 1048576)]:
            await c.call("fs/readBlock", {"handleId": "h1", "offset": offset, "len": length})
        for bad in [{"offset": 0, "len": 0}, {"offset": 0, "len": 1048577}]:
            await c.call("fs/readBlock", {"handleId": "h1", **bad})
        await c.call("fs/readBlock", {"handleId": "nope", "offset": 0, "len": 4})
        await c.call("fs/writeBlock", {"handleId": "h1", "offset": 0, "chunk": b64("hi")})
        out = uri(ctx, "out.txt")
        await c.call("fs/open", {"handleId": "w1", "path": out, "mode": "replace"})
        await c.call("fs/writeBlock", {"handleId": "w1", "offset": 5, "chunk": b64("hi")})
        await c.call("fs/writeBlock", {"handleId": "w1", "offset": 0, "chunk": b64("hi")})
        await c.call("fs/writeBlock", {"handleId": "w1", "offset": 0, "chunk": ""})
        await c.call("fs/readBlock", {"handleId": "w1", "offset": 0, "len": 4})
        ctx.note("written so far", ctx.read_bytes("out.txt"))
        await c.call("fs/close", {"handleId": "w1"})
        await c.call("fs/close", {"handleId": "w1"})
        await c.call("fs/open", {"handleId": "w2", "path": f, "mode": "replace"})
        ctx.note("replace truncates at open", ctx.read_bytes("f.txt"))
        await c.call("fs/open", {"handleId": "w3", "path": uri(ctx, "no/x"), "mode": "replace"})
        await c.call("fs/open", {"handleId": "w4", "path": uri(ctx, "d"), "mode": "replace"})

    await differ0171.check(script)


async def test_file_handle_limit_and_connection_scope(differ0171: Differ) -> None:
    async def script(ctx: ScriptContext) -> None:
        Path(ctx.path("f")).write_bytes(b"f")
        c = await ctx.connect_ready()
        first_error = None
        for i in range(129):
            resp = await c.call(
                "fs/open", {"handleId": f"k{i}", "path": uri(ctx, "f")}, record=False
            )
            if "error" in resp:
                first_error = (i, resp["error"])
                break
        ctx.note("first refused open", first_error)
        other = await ctx.connect_ready()
        await other.call("fs/readBlock", {"handleId": "k0", "offset": 0, "len": 1})
        await other.call("fs/open", {"handleId": "k0", "path": uri(ctx, "f")})

    await differ0171.check(script)


# --- walk ---------------------------------------------------------------------------------


def walk_options(**overrides: Any) -> JSON:
    return {
        "maxDepth": 10,
        "maxDirectories": 100,
        "maxEntries": 100,
        "followDirectorySymlinks": False,
    } | overrides


async def test_walk(differ0171: Differ) -> None:
    async def script(ctx: ScriptContext) -> None:
        w = ctx.path("w")
        os.makedirs(w + "/a/b/c")
        os.makedirs(w + "/.hidden/inner")
        Path(w + "/a/x.txt").write_text("x")
        Path(w + "/top.txt").write_text("t")
        os.symlink(w + "/a", w + "/linkdir")
        os.symlink(w + "/top.txt", w + "/linkfile")
        os.symlink(ctx.path("nope"), w + "/dangling")
        os.mkfifo(w + "/fifo")
        os.makedirs(ctx.path("outside/o"))
        os.symlink(ctx.path("outside"), w + "/linkout")
        c = await ctx.connect_ready()
        root = uri(ctx, "w")
        for overrides in [
            {},
            {"followDirectorySymlinks": True},
            {"maxDepth": 1},
            {"maxDepth": 0},
            {"maxEntries": 2},
            {"maxEntries": 3},
            {"maxDirectories": 1},
            {"maxDirectories": 2},
            {"maxDirectories": 0},
            {"maxEntries": 0},
            {"pruneHiddenDirectories": True},
            {"maxDepth": 65},
            {"maxEntries": 50001},
        ]:
            await c.call("fs/walk", {"path": root, "options": walk_options(**overrides)})
        await c.call("fs/walk", {"path": uri(ctx, "w", "top.txt"), "options": walk_options()})
        await c.call("fs/walk", {"path": uri(ctx, "nope"), "options": walk_options()})
        await c.call("fs/walk", {"path": uri(ctx, "w", "linkdir"), "options": walk_options()})
        await c.call(
            "fs/walk",
            {
                "path": uri(ctx, "w", "linkdir"),
                "options": walk_options(followDirectorySymlinks=True),
            },
        )
        for partial in ({"maxDepth": 1}, {"maxDepth": 1, "maxDirectories": 1}):
            resp = await c.call("fs/walk", {"path": root, "options": partial}, record=False)
            ctx.note(f"options {partial}", error_message(resp))

    await differ0171.check(script)


# --- watchMissing -------------------------------------------------------------------------


async def changes(c: RawClient, expect: int, timeout: float = 10.0) -> list[JSON]:
    """The watch ids of the fs/missingChanged notifications received so far, waiting up
    to ``timeout`` for ``expect`` of them (then a little longer for strays)."""

    def seen() -> list[JSON]:
        return [
            n["params"]["watchId"] for n in c.notifications if n["method"] == "fs/missingChanged"
        ]

    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        if len(seen()) >= expect or asyncio.get_running_loop().time() >= deadline:
            break
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.3)
    return seen()


async def test_watch_missing(differ0171: Differ) -> None:
    async def script(ctx: ScriptContext) -> None:
        w = ctx.path("w")
        os.makedirs(w)
        Path(w + "/e").write_text("e")
        os.makedirs(w + "/pres")
        c = await ctx.connect_ready()

        async def watch(watch_id: Any, missing: list[str], present: str | None = None) -> None:
            await c.call(
                "fs/watchMissing",
                {"watchId": watch_id, "missing": missing, "present": present},
            )

        base = uri(ctx, "w")
        await watch(10, [base + "/deep/a/b"])
        os.mkdir(w + "/unrelated")
        os.mkdir(w + "/deep")
        ctx.note("after mkdir deep", await changes(c, 1))
        await watch(10, [base + "/x"])
        await watch(9, [base + "/x"])
        await watch(11, [])
        await watch(12, [base + "/e"])
        await watch(13, [base + "/e", base + "/x"])
        await watch(14, [base + "/y"], base + "/gone")
        await watch(15, [base + "/y"], base + "/e")
        Path(w + "/e").write_text("changed")
        ctx.note("after writing present", await changes(c, 2))
        await watch(16, [base + "/q"])
        await watch(17, [base + "/r"], base + "/pres")
        Path(w + "/q").write_text("")
        Path(w + "/pres/inside").write_text("")
        ctx.note("replaced watch and a change inside present", await changes(c, 3, 1.0))
        Path(w + "/r").write_text("")
        ctx.note("after r appears", await changes(c, 3))
        await watch(18, [uri(ctx, "w", "f", "g")])
        Path(w + "/f").write_text("")
        ctx.note("after f appears as a file", await changes(c, 4))
        for bad in ({"watchId": -1, "missing": []}, {"watchId": "7", "missing": []}):
            resp = await c.call("fs/watchMissing", bad, record=False)
            ctx.note(f"watchMissing {bad}", "error" in resp and resp["error"]["code"])
        await watch(30, [base + "/n"])
        other = await ctx.connect_ready()
        await other.call("fs/watchMissing", {"watchId": 1, "missing": [base + "/n"]})
        Path(w + "/n").write_text("")
        ctx.note("first connection", await changes(c, 5))
        ctx.note("second connection", await changes(other, 1))

    await differ0171.check(script, timeout=120)


# --- processes ----------------------------------------------------------------------------


async def test_process_shapes(differ0171: Differ) -> None:
    async def script(ctx: ScriptContext) -> None:
        c = await ctx.connect_ready()
        await c.call("process/start", start_params(ctx, "a", "echo a; sleep .1; echo b; exit 3"))
        await c.wait_closed("a")
        ctx.note("a", summarize_events(c.events("a"), with_seq=True))
        await c.call("process/read", {"processId": "a"}, view=read_view_exact)
        for after in (1, 2, 3, 99):
            await c.call("process/read", {"processId": "a", "afterSeq": after})
        await c.call("process/read", {"processId": "a", "maxBytes": 1}, view=read_view_exact)
        await c.call(
            "process/read", {"processId": "a", "afterSeq": 1, "maxBytes": 1}, view=read_view_exact
        )
        for pid, script_text in (("k1", "kill -TERM $$"), ("k2", "kill -KILL $$")):
            await c.call("process/start", start_params(ctx, pid, script_text))
            await c.wait_closed(pid)
            ctx.note(pid, summarize_events(c.events(pid), with_seq=True))
        await c.call("process/start", start_params(ctx, "s", "sleep 30"))
        await c.call("process/terminate", {"processId": "s"})
        await c.wait_closed("s")
        ctx.note("terminated", summarize_events(c.events("s")))
        # The output comes 0.2 s before the exit: Codex numbers output and exit in the
        # order it sees them, and an echo racing the exit made that order (and the seqs)
        # vary from run to run.
        await c.call("process/start", start_params(ctx, "g", "echo x; sleep 0.2; sleep 1 & exit 0"))
        await c.wait_output("g", b"x")
        deadline = asyncio.get_running_loop().time() + 10.0
        while not any(e["method"] == "process/exited" for e in c.events("g")):
            assert asyncio.get_running_loop().time() < deadline, "no process/exited"
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.1)
        await c.call("process/read", {"processId": "g"}, view=read_view_exact)
        await c.wait_closed("g")
        await c.call("process/read", {"processId": "g"}, view=read_view_exact)

    await differ0171.check(script)


async def test_process_start_validation(differ0171: Differ) -> None:
    thread_ids = [
        "nope",
        "",
        "abc",
        "01a24d57-a03f-77a3-aa02-306e172ba44",
        "{01a24d57-a03f-77a3-aa02-306e172ba445}",
        "01a24d57-a03f-77a3-aa02-306e172ba445x",
        "01a24d57-a03f-77a3-aa02306e172ba445",
        "urn:uuid:01a24d57a03f77a3aa02306e172ba445",
        "urn:uuid:01a24d57-a03f-77a3-aa02-306e172ba445",
        "01A24D57A03F77A3AA02306E172BA445",
        "0-0-0-0-0",
        "01a24d57-a03f-77a3-aa02-306e172ba4é5",
    ]

    async def script(ctx: ScriptContext) -> None:
        c = await ctx.connect_ready()
        for i, thread_id in enumerate(thread_ids):
            params = start_params(ctx, f"m{i}", "true", metadata={"threadId": thread_id})
            resp = await c.call("process/start", params, record=False)
            ctx.note(f"threadId {thread_id!r}", error_message(resp) if "error" in resp else "ok")
        for i, metadata in enumerate([None, {}, {"toolCallId": "x"}, {"threadId": None}]):
            await c.call("process/start", start_params(ctx, f"n{i}", "true", metadata=metadata))
        await c.call("process/start", start_params(ctx, "s1", "true", sandbox={}))
        await c.call("process/start", start_params(ctx, "s2", "true", managedNetwork={}))
        await c.call("process/start", {**start_params(ctx, "e1", "true"), "argv": ["/nonexist"]})
        await c.call("process/start", {**start_params(ctx, "e2", "true"), "argv": [ctx.path()]})
        await c.call("process/start", start_params(ctx, "e3", "true", cwd=uri(ctx, "nope")))
        await c.call("process/start", {**start_params(ctx, "e4", "true"), "argv": []})
        await c.call("process/start", start_params(ctx, "e5", "true", cwd="http://x/"))
        for pid in ("m4", "n0", "n1", "n2", "n3", "s2"):
            await c.wait_closed(pid)

    await differ0171.check(script)


async def test_write_ids_and_signals(differ0171: Differ) -> None:
    async def script(ctx: ScriptContext) -> None:
        c = await ctx.connect_ready()
        await c.call("process/start", start_params(ctx, "w", "cat", pipeStdin=True))
        for write_id, data in [("1", "a\n"), ("1", "a\n"), ("2", "b\n"), ("0", "c\n")]:
            params = {"processId": "w", "chunk": b64(data), "writeId": write_id}
            await c.call("process/write", params)
        await c.call("process/write", {"processId": "w", "chunk": b64("x"), "writeId": "1"})
        await c.call("process/write", {"processId": "w", "chunk": b64("x"), "writeId": ""})
        await c.call("process/write", {"processId": "w", "chunk": b64("x")})
        await c.call("process/write", {"processId": "nope", "chunk": b64("x"), "writeId": "9"})
        await c.wait_output("w", b"a\nb\nc\n")
        await asyncio.sleep(0.2)
        for signal in ("terminate", "kill", "bogus"):
            await c.call("process/signal", {"processId": "w", "signal": signal})
        await c.call("process/signal", {"processId": "nope", "signal": "interrupt"})
        await c.call("process/signal", {"processId": "w", "signal": "interrupt"})
        await c.wait_closed("w")
        ctx.note("w", summarize_events(c.events("w")))
        await c.call("process/signal", {"processId": "w", "signal": "interrupt"})

    await differ0171.check(script)


async def test_tty_process_and_write(differ0171: Differ) -> None:
    async def script(ctx: ScriptContext) -> None:
        c = await ctx.connect_ready()
        # The trailing sleep keeps 0.171's own race out of the comparison: on a loaded
        # machine its PTY reader can miss what the child wrote just before it exited
        # (CI once saw codex report only the echoed "abc"); ours drains the PTY first.
        params = start_params(ctx, "t", "read line; echo got:$line; sleep 0.5", tty=True)
        await c.call("process/start", params)
        await asyncio.sleep(0.3)
        await c.call("process/write", {"processId": "t", "chunk": b64("abc\n"), "writeId": "1"})
        await c.wait_closed("t")
        ctx.note("t", summarize_events(c.events("t")))

    await differ0171.check(script)


async def test_signal_exit_codes_of_a_pty(differ0171: Differ) -> None:
    """A PTY child killed by a signal: 0.171 reports 1 (its PTY layer has no signal
    number); we report 128 + N, as for pipes and as a shell does."""

    async def script(ctx: ScriptContext) -> None:
        c = await ctx.connect_ready()
        await c.call("process/start", start_params(ctx, "p", "sleep 30", tty=True), record=False)
        await asyncio.sleep(0.3)
        await c.call("process/terminate", {"processId": "p"}, record=False)
        await c.wait_closed("p")
        ctx.note("exit", [e["exitCode"] for e in c.events("p") if "exitCode" in e])

    runs = await differ0171.each(script)
    assert runs["codex"].transcript[0]["value"] == [1], runs["codex"].transcript
    if "ours" in runs:
        assert runs["ours"].transcript[0]["value"] == [137], runs["ours"].transcript


async def test_resume_keeps_processes_not_handles(differ0171: Differ) -> None:
    """A reconnecting 0.171 harness resumes its session: its processes (and their
    output) are there, its file handles and its watch were the old connection's."""

    async def script(ctx: ScriptContext) -> None:
        Path(ctx.path("f")).write_text("f")
        c = await ctx.connect()
        session = result_of(await c.initialize(record=False))["sessionId"]
        await c.notify("initialized", {}, record=False)
        await c.call("fs/open", {"handleId": "h", "path": uri(ctx, "f")})
        await c.call("process/start", start_params(ctx, "p", "echo before; sleep 1; echo after"))
        await c.wait_output("p", b"before")
        await c.abort()
        c2 = await ctx.connect()
        await c2.call(
            "initialize",
            {"clientName": "codex-environment", "resumeSessionId": session},
            view=lambda r: {"resumed": r["result"]["sessionId"] == session},
        )
        await c2.notify("initialized", {}, record=False)
        await c2.call("fs/readBlock", {"handleId": "h", "offset": 0, "len": 1})
        # "after" and the exit happen while nobody is attached; poll until closed.
        deadline = asyncio.get_running_loop().time() + 15
        while True:
            resp = await c2.call("process/read", {"processId": "p"}, record=False)
            if result_of(resp).get("closed") or asyncio.get_running_loop().time() > deadline:
                break
            await asyncio.sleep(0.2)
        # Joined, not per chunk: under load Codex may cut the output into more chunks.
        ctx.note("resumed read", read_view_joined(resp).get("result"))

    await differ0171.check(script)


# --- http ---------------------------------------------------------------------------------


async def test_http_redirect_policy(differ0171: Differ) -> None:
    from aiohttp import web

    async def script(ctx: ScriptContext) -> None:
        app = web.Application()

        async def redirect(request: web.Request) -> web.Response:
            raise web.HTTPFound("/final")

        async def final(request: web.Request) -> web.Response:
            return web.Response(text="final")

        app.router.add_get("/start", redirect)
        app.router.add_get("/final", final)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        try:
            c = await ctx.connect_ready()
            url = f"http://127.0.0.1:{port}/start"
            shown = ("status", "bodyBase64")
            for i, policy in enumerate(["follow", "stop", None, "bogus"]):
                params: dict[str, JSON] = {"method": "GET", "url": url, "requestId": f"r{i}"}
                if policy is not None:
                    params["redirectPolicy"] = policy
                await c.call(
                    "http/request",
                    params,
                    view=lambda r: {k: r["result"][k] for k in shown},
                )
        finally:
            await runner.cleanup()

    await differ0171.check(script)


# --- environment config -------------------------------------------------------------------

USER_CONFIG = """model = "x"
[mcp_servers.foo]
command = "echo"
args = ["a", "b"]
env = { A = "1", B = "two" }
startup_timeout_sec = 10
enabled = true
ratio = 1.5
quote = 'say "hi"'
[mcp_servers.bar]
url = "http://x"
headers = {"X-Key" = "v", "needs quoting" = "w\\n"}
[[mcp_servers.bar.items]]
n = 1
[[mcp_servers.bar.items]]
n = 2
"""


async def test_environment_config_read(differ0171: Differ, codex_home_0171: Path) -> None:
    async def script(ctx: ScriptContext) -> None:
        config = codex_home_0171 / "config.toml"
        w = ctx.path("w")
        os.makedirs(w + "/.codex")
        os.makedirs(w + "/sub")
        Path(w + "/.codex/config.toml").write_text('[mcp_servers.proj]\ncommand = "p"\n')
        c = await ctx.connect_ready()

        async def read(paths: list[list[str]], requirements: JSON = (), cwd: str = w) -> None:
            params = {
                "cwd": Path(cwd).as_uri(),
                "configPaths": paths,
                "requirementsPaths": list(requirements),
            }
            await c.call("environmentConfig/read", params)

        try:
            config.unlink(missing_ok=True)
            await read([["mcp_servers"]])
            config.write_text('model = "x"\n')
            await read([["mcp_servers"]])
            await read([["model"]])
            config.write_text(USER_CONFIG + f'[projects."{w}"]\ntrust_level = "trusted"\n')
            for paths in (
                [["mcp_servers"]],
                [["mcp_servers", "foo"]],
                [["mcp_servers", "foo", "args"]],
                [["model"], ["mcp_servers", "bar"]],
                [["nope"]],
                [["model", "deeper"]],
            ):
                await read(paths)
            await read([], [["mcp_servers"]])
            await read([])
            await read([["mcp_servers"], []])
            await read([["mcp_servers"]], cwd=ctx.path("nonexistent"))
            await read([["mcp_servers"]], cwd=w + "/sub")
        finally:
            config.unlink(missing_ok=True)

    await differ0171.check(script)


# --- capability discovery ------------------------------------------------------------------

SKILL_FIXTURES = {
    # standalone skills in CODEX_HOME/skills
    "ch/skills/alpha/SKILL.md": "---\nname: alpha\ndescription: Alpha does things\n---\n# A\n",
    "ch/skills/no name/SKILL.md": "---\ndescription: named after   its directory\n---\n",
    "ch/skills/colon/SKILL.md": "---\nname: colon\ndescription: Build for AWS: ECS\n---\n",
    "ch/skills/block/SKILL.md": "---\nname: block\ndescription: |\n  one\n  two\n---\n",
    "ch/skills/short/SKILL.md": (
        "---\nname: short\ndescription: 0x10\nmetadata:\n  short-description: s d\n---\n"
    ),
    "ch/skills/crlf/SKILL.md": "---\r\nname: crlf\r\ndescription: crlf\r\n---\r\n",
    "ch/skills/nodesc/SKILL.md": "---\nname: nodesc\n---\n",
    "ch/skills/nofront/SKILL.md": "# no front matter\n",
    "ch/skills/dup/SKILL.md": "---\nname: a\ndescription: d\nname: b\n---\n",
    "ch/skills/meta/SKILL.md": "---\nname: meta\ndescription: meta\n---\n",
    "ch/skills/meta/agents/openai.yaml": (
        "dependencies:\n  tools:\n    - type: env_var\n      value: GITHUB_TOKEN\n"
        "      description: '  a  token '\n    - value: no-type\npolicy:\n"
        "  allow_implicit_invocation: false\n  products: [codex]\n"
    ),
    "ch/skills/badmeta/SKILL.md": "---\nname: badmeta\ndescription: d\n---\n",
    "ch/skills/badmeta/agents/openai.yaml": "policy:\n  allow_implicit_invocation: maybe\n",
    "ch/skills/ns/.codex-plugin/plugin.json": '{"name":"nsp"}',
    "ch/skills/ns/skills/inner/SKILL.md": "---\nname: inner\ndescription: inner\n---\n",
    "ch/skills/a/b/c/d/e/f/SKILL.md": "---\nname: depth6\ndescription: d\n---\n",
    "ch/skills/a/b/c/d/e/f/g/SKILL.md": "---\nname: depth7\ndescription: d\n---\n",
    # ~/.agents/skills
    "home/.agents/skills/user/SKILL.md": "---\nname: user\ndescription: user skill\n---\n",
    # installed plugins
    "ch/plugins/cache/mkt/plug/1.9.0/.codex-plugin/plugin.json": '{"name":"plug"}',
    "ch/plugins/cache/mkt/plug/1.10.0/.codex-plugin/plugin.json": (
        '{"name":"plug","interface":{"displayName":"Plug In"},"mcpServers":{"z":{},"a":{}}}'
    ),
    "ch/plugins/cache/mkt/plug/1.10.0/skills/x/SKILL.md": "---\nname: x\ndescription: x\n---\n",
    "ch/plugins/cache/mkt/plug/.codex-remote-plugin-install.json": (
        '{"schema_version":1,"remote_plugin_id":" rp-1 "}'
    ),
    "ch/plugins/cache/mkt/loc/2.0.0/.claude-plugin/plugin.json": '{"name":"loc"}',
    "ch/plugins/cache/mkt/loc/local/.claude-plugin/plugin.json": '{"name":"  "}',
    "ch/plugins/cache/mkt/loc/local/skills/s/SKILL.md": "---\nname: s\ndescription: s\n---\n",
    "ch/plugins/cache/mkt/decl/1.0.0/.codex-plugin/plugin.json": (
        '{"name":"decl","mcpServers":"./m.json","apps":"apps.json"}'
    ),
    "ch/plugins/cache/mkt/decl/1.0.0/m.json": "{}",
    "ch/plugins/cache/mkt/decl/1.0.0/.app.json": '{"apps":1}',
    "ch/plugins/cache/mkt/broken/1.0.0/.codex-plugin/plugin.json": "{not json",
    "ch/plugins/cache/mkt/nomanifest/1.0.0/skills/s/SKILL.md": "---\nname: s\n---\n",
    "ch/plugins/cache/mkt/bad name/1.0.0/.codex-plugin/plugin.json": '{"name":"bad"}',
}


@pytest.fixture
def discovery_differ(tmp_path: Path, request: pytest.FixtureRequest) -> tuple[Differ, Path]:
    """Both servers with one CODEX_HOME and HOME full of skills and plugins."""
    for relative, text in SKILL_FIXTURES.items():
        path = tmp_path / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    env = {"CODEX_HOME": str(tmp_path / "ch"), "HOME": str(tmp_path / "home")}
    reference = Target.codex(Path(require_codex_binary(CODEX_0171)), env)
    candidate = Target.ours(env) if interop_mode() == "diff" else reference
    return Differ(reference, candidate, request.node.name, era=ERA_0171), tmp_path


def restricted(entries: list[JSON]) -> JSON:
    """A 0.171 sandbox context reading only what ``entries`` grant."""
    return {
        "permissions": {
            "type": "managed",
            "file_system": {"type": "restricted", "entries": entries},
            "network": "restricted",
        },
        "cwd": "file:///tmp",
        "workspaceRoots": ["file:///tmp"],
        "windowsSandboxLevel": "disabled",
        "useLegacyLandlock": False,
    }


def entry(path: Path | str, access: str) -> JSON:
    return {"path": {"type": "path", "path": Path(path).as_uri()}, "access": access}


ROOT_READ = {"path": {"type": "special", "value": {"kind": "root"}}, "access": "read"}


async def test_capabilities_discover_v2(discovery_differ: tuple[Differ, Path]) -> None:
    """The installed plugins and skills, their metadata, and 0.171's coarse warnings."""
    differ, fixtures = discovery_differ

    async def script(ctx: ScriptContext) -> None:
        c = await ctx.connect()
        await c.call("capabilities/discoverV2", {"cwd": uri(ctx)})
        await c.initialize(record=False)
        await c.notify("initialized", {})
        await c.call("capabilities/discoverV2", {"cwd": uri(ctx)})
        await c.call("capabilities/discoverV2", {"cwd": "file:///no/such/dir", "sandbox": None})
        hide_home_skills = restricted([ROOT_READ, entry(fixtures / "ch" / "skills", "none")])
        await c.call("capabilities/discoverV2", {"cwd": uri(ctx), "sandbox": hide_home_skills})
        only_home = restricted([entry(fixtures / "home", "read")])
        await c.call("capabilities/discoverV2", {"cwd": uri(ctx), "sandbox": only_home})
        for bad in (
            {},
            None,
            {"cwd": "/tmp"},
            {"cwd": "http://x/"},
            {"cwd": uri(ctx), "sandbox": {}},
        ):
            await c.call("capabilities/discoverV2", bad)

    await differ.check(script)


async def test_capabilities_discover_v2_codex_home_must_exist(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    async def script(ctx: ScriptContext) -> None:
        c = await ctx.connect_ready()
        await c.call("capabilities/discoverV2", {"cwd": uri(ctx)})

    binary = Path(require_codex_binary(CODEX_0171))
    (tmp_path / "file").write_text("")
    for codex_home in (tmp_path / "missing", tmp_path / "file"):
        env = {"CODEX_HOME": str(codex_home), "HOME": str(tmp_path)}
        reference = Target.codex(binary, env)
        candidate = Target.ours(env) if interop_mode() == "diff" else reference
        await Differ(reference, candidate, request.node.name, era=ERA_0171).check(script)


async def test_capability_roots_discover_v1(discovery_differ: tuple[Differ, Path]) -> None:
    """Raw capability files under the roots a client names, each through its sandbox."""
    differ, fixtures = discovery_differ
    skills = fixtures / "ch" / "skills"
    plugin = fixtures / "ch" / "plugins" / "cache" / "mkt" / "plug" / "1.10.0"

    async def script(ctx: ScriptContext) -> None:
        Path(ctx.path("p", ".codex-plugin")).mkdir(parents=True)
        ctx.write_text('{"name":"p"}', "p", ".codex-plugin", "plugin.json")
        ctx.write_text('{"apps":[]}', "p", ".app.json")
        Path(ctx.path("p", "s", "big")).mkdir(parents=True)
        ctx.write_text("---\nname: big\n---\n" + "x" * (1024 * 1024), "p", "s", "big", "SKILL.md")
        Path(ctx.path("p", "s", "bin")).mkdir()
        Path(ctx.path("p", "s", "bin", "SKILL.md")).write_bytes(b"---\nname: \xff\n---\n")
        c = await ctx.connect_ready()
        roots: list[JSON] = [
            {"id": "skills", "path": skills.as_uri()},
            {"id": "plugin", "path": plugin.as_uri()},
            {"id": "plugin skills", "path": (plugin / "skills").as_uri()},
            {"id": "mine", "path": uri(ctx, "p")},
            {"id": "missing", "path": uri(ctx, "missing")},
            {"id": "file", "path": uri(ctx, "p", ".app.json")},
            {"id": "", "path": skills.as_uri(), "sandbox": None},
            {
                "id": "hidden file",
                "path": (skills / "alpha").as_uri(),
                "sandbox": restricted([ROOT_READ, entry(skills / "alpha" / "SKILL.md", "none")]),
            },
            {
                "id": "hidden dir",
                "path": (skills / "meta").as_uri(),
                "sandbox": restricted([ROOT_READ, entry(skills / "meta" / "agents", "none")]),
            },
            {
                "id": "invisible root",
                "path": skills.as_uri(),
                "sandbox": restricted([entry(fixtures / "home", "read")]),
            },
        ]
        await c.call("capabilityRoots/discoverV1", {"roots": roots})
        await c.call("capabilityRoots/discoverV1", {"roots": []})
        too_many = [{"id": str(i), "path": uri(ctx)} for i in range(129)]
        resp = await c.call("capabilityRoots/discoverV1", {"roots": too_many}, record=False)
        ctx.note("129 roots", error_message(resp))
        for bad in (
            None,
            {},
            {"roots": {}},
            {"roots": [{"id": "a"}]},
            {"roots": [{"path": uri(ctx)}]},
        ):
            await c.call("capabilityRoots/discoverV1", bad)
        await c.call("capabilityRoots/discoverV1", {"roots": [{"id": "a", "path": "/tmp"}]})

    await differ.check(script)


async def test_sandboxed_file_streaming(differ0171: Differ) -> None:
    """``fs/open``/``readBlock``/``writeBlock`` under a sandbox honour its policy, as
    0.171 (which claims ``sandboxedFileStreaming``) does."""

    async def script(ctx: ScriptContext) -> None:
        for name in ("rw", "ro", "hidden"):
            os.mkdir(ctx.path(name))
            ctx.write_text(f"{name} data", name, "f.txt")
        ctx.write_text("secret", "ro", "hidden.txt")
        sandbox = restricted(
            [
                entry(ctx.path("ro"), "read"),
                entry(ctx.path("rw"), "write"),
                entry(ctx.path("ro", "hidden.txt"), "none"),
            ]
        )
        c = await ctx.connect_ready()

        async def open_(handle: str, *parts: str, mode: str | None = None) -> None:
            params: JSON = {"handleId": handle, "path": uri(ctx, *parts), "sandbox": sandbox}
            if mode is not None:
                params["mode"] = mode
            await c.call("fs/open", params)

        await open_("r1", "ro", "f.txt")
        await c.call("fs/readBlock", {"handleId": "r1", "offset": 0, "len": 64})
        await open_("r2", "ro", "hidden.txt")
        await open_("r3", "hidden", "f.txt")
        await open_("w1", "ro", "new.txt", mode="replace")
        await open_("w2", "ro", "f.txt", mode="replace")
        await open_("w3", "hidden", "new.txt", mode="replace")
        await open_("w4", "rw", "new.txt", mode="replace")
        await c.call("fs/writeBlock", {"handleId": "w4", "offset": 0, "chunk": b64("streamed")})
        await c.call("fs/close", {"handleId": "w4"})
        await open_("r4", "rw", "new.txt")
        await c.call("fs/readBlock", {"handleId": "r4", "offset": 0, "len": 64})
        ctx.note("ro/f.txt untouched", ctx.read_text("ro", "f.txt"))
        ctx.note("ro/new.txt", ctx.exists("ro", "new.txt"))
        ctx.note("hidden/new.txt", ctx.exists("hidden", "new.txt"))
        ctx.note("rw/new.txt", ctx.read_text("rw", "new.txt"))

    await differ0171.check(script)


async def test_sandboxed_command_takes_its_background_jobs_along(differ0171: Differ) -> None:
    """0.171 runs a sandboxed command as the init of its own pid namespace: when it
    exits, what it started in the background is killed and the process closes."""
    marker = "97.125"

    async def script(ctx: ScriptContext) -> None:
        c = await ctx.connect_ready()
        sandbox = restricted([ROOT_READ, entry(ctx.path(), "write")])
        params = start_params(ctx, "bg", f"sleep {marker} & echo started", sandbox=sandbox)
        await c.call("process/start", params, view=lambda r: sorted(result_of(r)))
        try:
            ctx.note("closed", await c.wait_closed("bg", timeout=30))
            ctx.note("left running", pids_with_marker(marker))
        finally:
            for pid in pids_with_marker(marker):
                os.kill(pid, 9)

    await differ0171.check(script)


async def test_spawn_errors_read_like_fs_errors(differ0171: Differ) -> None:
    """One errno, one text: Codex's musl build words ELOOP "Symbolic link loop" for
    ``process/start`` as for ``fs/*``."""

    async def script(ctx: ScriptContext) -> None:
        os.symlink("a", ctx.path("b"))
        os.symlink("b", ctx.path("a"))
        c = await ctx.connect_ready()
        params = start_params(ctx, "cwd-loop", "true")
        params["cwd"] = uri(ctx, "a")
        await c.call("process/start", params)
        params = start_params(ctx, "exe-loop", "true")
        params["argv"] = [ctx.path("a")]
        await c.call("process/start", params)
        await c.call("fs/readFile", {"path": uri(ctx, "a")})

    await differ0171.check(script)
