"""The methods and shapes Codex 0.171 added, through the connection processor.

Every expected text here is what the real 0.171 binary answered to the same request
(probed side by side; ``tests/interop/test_codex0171.py`` repeats the comparisons
against the binary itself when it is installed)."""

from __future__ import annotations

import asyncio
import base64
import os
from pathlib import Path
from typing import Any

import pytest
from inprocess import InProcessServer, RawConnection

from exec_server.environment.file_handles import MAX_OPEN_HANDLES
from exec_server.environment.sandbox.kernel import probe_kernel_support


def uri(path: Path | str) -> str:
    return Path(path).as_uri()


async def ready(server: InProcessServer) -> RawConnection:
    conn = server.connect()
    await conn.initialize()
    return conn


def error(reply: dict[str, Any]) -> tuple[int, str]:
    return reply["error"]["code"], reply["error"]["message"]


async def test_initialize_carries_environment_info(server: InProcessServer) -> None:
    conn = server.connect()
    reply = await conn.request("initialize", {"clientName": "t", "resumeSessionId": None})
    info = reply["result"]["environmentInfo"]
    assert list(info) == [
        "shell",
        "executorVersion",
        "providerId",
        "cwd",
        "userHomeDir",
        "platformOs",
        "prependPathDirs",
        "temporaryDirectories",
        "tempDir",
        "capabilities",
    ]
    assert info["cwd"] == uri(os.getcwd()) and info["userHomeDir"].startswith("file:///")
    assert info["providerId"].startswith("sha256:") and len(info["providerId"]) == 71
    assert info["platformOs"] == "linux" and info["tempDir"].startswith("file:///")
    caps = info["capabilities"]
    assert len(caps) == 16 and all(isinstance(v, bool) for v in caps.values())
    assert caps["fsWatchMissing"] and caps["fileWriteStreaming"]
    assert not caps["networkProxyLaunch"] and not caps["windowsMxc"]
    await conn.send({"method": "initialized", "params": {}})
    same = await conn.request("environment/info", None)
    assert same["result"] == info
    assert (await conn.request("environment/info", {}))["result"] == info
    assert (await conn.request("environment/status", None))["result"] == {"status": "ready"}
    assert error(await conn.request("environment/status", [])) == (
        -32602,
        "invalid type: sequence, expected unit",
    )


async def test_new_families_are_gated(server: InProcessServer) -> None:
    conn = server.connect()
    reply = await conn.request("environment/status", None)
    assert error(reply) == (
        -32600,
        "client must call initialize before using environment status methods",
    )
    reply = await conn.request("fs/close", {"handleId": "h"})
    assert error(reply)[1] == "client must call initialize before using filesystem methods"


async def test_file_uris_in_and_out(server: InProcessServer, tmp_path: Path) -> None:
    conn = await ready(server)
    (tmp_path / "real dir").mkdir()
    os.symlink(tmp_path / "real dir", tmp_path / "link")
    reply = await conn.request("fs/canonicalize", {"path": uri(tmp_path / "link")})
    assert reply["result"] == {"path": uri(tmp_path / "real dir")}
    assert "%20" in reply["result"]["path"]
    reply = await conn.request("fs/canonicalize", {"path": str(tmp_path / "link")})
    assert reply["result"] == {"path": str(tmp_path / "real dir")}
    reply = await conn.request("fs/canonicalize", {"path": uri(tmp_path / "nope")})
    assert error(reply) == (-32004, "No such file or directory (os error 2)")
    # A directory read: 0.171's text for a URI, 0.133's for a native path.
    reply = await conn.request("fs/readFile", {"path": uri(tmp_path)})
    assert error(reply) == (-32600, f"path `{tmp_path}` is not a file")
    reply = await conn.request("fs/readFile", {"path": str(tmp_path)})
    assert error(reply) == (-32603, "Is a directory (os error 21)")
    reply = await conn.request("fs/readFile", {"path": "file:///dev/null"})
    assert error(reply) == (-32600, "path `/dev/null` is not a file")
    reply = await conn.request("fs/readFile", {"path": "http://x/y"})
    assert error(reply) == (-32602, "unsupported path URI scheme `http`")
    reply = await conn.request("fs/getMetadata", {"path": uri(tmp_path / "real dir")})
    assert reply["result"]["isDirectory"] and "size" in reply["result"]


async def test_file_handles(server: InProcessServer, tmp_path: Path) -> None:
    conn = await ready(server)
    data = b"0123456789" * 10
    (tmp_path / "f.txt").write_bytes(data)
    f_uri = uri(tmp_path / "f.txt")

    async def call(method: str, **params: Any) -> dict[str, Any]:
        return await conn.request(method, params)

    assert (await call("fs/open", handleId="h1", path=f_uri))["result"] == {"handleId": "h1"}
    assert error(await call("fs/open", handleId="h1", path=f_uri)) == (
        -32600,
        "file handle `h1` already exists",
    )
    assert error(await call("fs/open", handleId="y" * 33, path=f_uri)) == (
        -32600,
        "file handle ID must not exceed 32 bytes",
    )
    assert error(await call("fs/open", handleId="d", path=uri(tmp_path))) == (
        -32600,
        f"path `{tmp_path}` is not a file",
    )
    assert error(await call("fs/open", handleId="m", path=uri(tmp_path / "nope")))[0] == -32004
    block = (await call("fs/readBlock", handleId="h1", offset=96, len=4))["result"]
    assert block == {"chunk": base64.b64encode(b"6789").decode(), "eof": False}
    block = (await call("fs/readBlock", handleId="h1", offset=98, len=4))["result"]
    assert block == {"chunk": base64.b64encode(b"89").decode(), "eof": True}
    block = (await call("fs/readBlock", handleId="h1", offset=1000, len=4))["result"]
    assert block == {"chunk": "", "eof": True}
    for bad_len in (0, 1024 * 1024 + 1):
        assert error(await call("fs/readBlock", handleId="h1", offset=0, len=bad_len)) == (
            -32600,
            "file read block length must be between 1 and 1048576",
        )
    assert error(await call("fs/readBlock", handleId="nope", offset=0, len=1)) == (
        -32004,
        "unknown file handle `nope`",
    )
    assert error(await call("fs/writeBlock", handleId="h1", offset=0, chunk="aGk=")) == (
        -32603,
        "Bad file descriptor (os error 9)",
    )
    out = tmp_path / "out.bin"
    assert (await call("fs/open", handleId="w", path=uri(out), mode="replace"))["result"]
    assert (await call("fs/writeBlock", handleId="w", offset=5, chunk="aGk="))["result"] == {}
    assert (await call("fs/writeBlock", handleId="w", offset=0, chunk="aGk="))["result"] == {}
    assert error(await call("fs/writeBlock", handleId="w", offset=0, chunk="")) == (
        -32600,
        "file write block length must be between 1 and 1048576",
    )
    assert out.read_bytes() == b"hi\x00\x00\x00hi"
    assert (await call("fs/close", handleId="w"))["result"] == {}
    assert (await call("fs/close", handleId="w"))["result"] == {}
    # replace truncates in place at open
    assert (await call("fs/open", handleId="t", path=f_uri, mode="replace"))["result"]
    assert (tmp_path / "f.txt").read_bytes() == b""
    assert error(await call("fs/open", handleId="x", path=f_uri, mode="write"))[0] == -32602


async def test_file_handle_limit_and_cleanup(server: InProcessServer, tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"x")
    conn = await ready(server)
    fds_before = len(os.listdir("/proc/self/fd"))
    for i in range(MAX_OPEN_HANDLES):
        reply = await conn.request("fs/open", {"handleId": f"k{i}", "path": uri(tmp_path / "f")})
        assert "result" in reply
    reply = await conn.request("fs/open", {"handleId": "one-more", "path": uri(tmp_path / "f")})
    assert error(reply) == (-32600, "at most 128 file handles may be open per connection")
    await conn.close()
    assert len(os.listdir("/proc/self/fd")) <= fds_before


def walk_options(**overrides: Any) -> dict[str, Any]:
    options = {
        "maxDepth": 10,
        "maxDirectories": 100,
        "maxEntries": 100,
        "followDirectorySymlinks": False,
    }
    return options | overrides


@pytest.fixture
def walk_tree(tmp_path: Path) -> Path:
    w = tmp_path / "w"
    (w / "a" / "b" / "c").mkdir(parents=True)
    (w / "a" / "x.txt").write_text("x")
    (w / "top.txt").write_text("t")
    os.symlink(w / "a", w / "linkdir")
    os.symlink(w / "top.txt", w / "linkfile")
    os.symlink(tmp_path / "nope", w / "dangling")
    os.mkfifo(w / "fifo")
    return w


async def test_walk_as_0171(server: InProcessServer, walk_tree: Path) -> None:
    conn = await ready(server)
    w = walk_tree

    async def walk(**overrides: Any) -> Any:
        reply = await conn.request(
            "fs/walk", {"path": uri(w), "options": walk_options(**overrides)}
        )
        if "error" in reply:
            return error(reply)
        result = reply["result"]
        shown = [(e["path"].removeprefix(uri(w) + "/"), e["kind"]) for e in result["entries"]]
        return shown, result["errors"], result["truncated"]

    full = [
        ("a", "directory"),
        ("top.txt", "file"),
        ("a/b", "directory"),
        ("a/x.txt", "file"),
        ("a/b/c", "directory"),
    ]
    assert await walk() == (full, [], False)
    followed = [*full[:1], ("linkdir", "directory"), *full[1:]]
    assert await walk(followDirectorySymlinks=True) == (followed, [], False)
    assert await walk(maxDepth=1) == (full[:4], [], False)
    assert await walk(maxDepth=0) == (full[:2], [], False)
    assert await walk(maxEntries=2) == (full[:1], [], True)
    assert await walk(maxDirectories=1) == (full[:2], [], True)
    assert await walk(maxDirectories=0) == (
        -32600,
        "filesystem walk limits must be greater than zero",
    )
    assert await walk(maxDepth=65) == (
        -32600,
        "filesystem walk limits exceed maximums: depth=64, directories=10000, entries=50000",
    )
    reply = await conn.request("fs/walk", {"path": uri(w / "top.txt"), "options": walk_options()})
    assert reply["result"] == {"entries": [], "errors": [], "truncated": False}
    reply = await conn.request("fs/walk", {"path": uri(w / "nope"), "options": walk_options()})
    assert error(reply)[0] == -32004
    reply = await conn.request("fs/walk", {"path": uri(w), "options": {"maxDepth": 1}})
    assert error(reply) == (-32602, "missing field `maxDirectories`")


async def test_watch_missing(server: InProcessServer, tmp_path: Path) -> None:
    conn = await ready(server)
    w = tmp_path / "w"
    w.mkdir()

    async def watch(watch_id: int, missing: list[Path], present: Path | None = None) -> bool:
        reply = await conn.request(
            "fs/watchMissing",
            {
                "watchId": watch_id,
                "missing": [uri(p) for p in missing],
                "present": None if present is None else uri(present),
            },
        )
        watching: bool = reply["result"]["watching"]
        return watching

    async def next_change() -> int:
        while not conn.notifications:
            conn.notifications.append(await conn.recv(timeout=10))
        note = conn.notifications.pop(0)
        assert note["method"] == "fs/missingChanged"
        watch_id: int = note["params"]["watchId"]
        return watch_id

    assert await watch(10, [w / "deep" / "a" / "b"])
    (w / "unrelated").mkdir()
    (w / "deep").mkdir()  # the first missing component appearing is the change
    assert await next_change() == 10
    assert not await watch(10, [w / "x"])  # stale id
    assert not await watch(11, [])  # nothing to wait for
    assert not await watch(12, [w / "deep"])  # already there
    assert not await watch(13, [w / "y"], present=w / "gone")  # premise already false
    (w / "e").write_text("e")
    assert await watch(14, [w / "z"], present=w / "e")
    (w / "e").write_text("changed")
    assert await next_change() == 14
    assert await watch(15, [w / "q"])
    assert await watch(16, [w / "r"])  # replaces 15
    (w / "q").write_text("")
    (w / "r").write_text("")
    assert await next_change() == 16
    await asyncio.sleep(0.2)
    assert conn.notifications == []


# --- processes: each client in its own era ----------------------------------------------

ENV = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}


def start(process_id: str, script: str, cwd: str, **extra: Any) -> dict[str, Any]:
    return {
        "processId": process_id,
        "argv": ["/bin/sh", "-c", script],
        "cwd": cwd,
        "env": ENV,
        "tty": False,
        **extra,
    }


async def closed_read(conn: RawConnection, process_id: str, **params: Any) -> dict[str, Any]:
    while True:
        reply = await conn.request(
            "process/read", {"processId": process_id, "waitMs": 2000, **params}
        )
        result: dict[str, Any] = reply["result"]
        if result["closed"]:
            return result


async def test_0171_process_shapes(server: InProcessServer, tmp_path: Path) -> None:
    conn = await ready(server)
    cwd = uri(tmp_path)
    reply = await conn.request("process/start", start("a", "echo hi; exit 3", cwd))
    assert reply["result"] == {"processId": "a", "sandboxType": "none"}
    result = await closed_read(conn, "a")
    # 0.171 counts the exit and close events in nextSeq (0.133: after the last chunk).
    assert (result["nextSeq"], result["exitCode"], result["sandboxDenied"]) == (4, 3, False)
    limited = (await conn.request("process/read", {"processId": "a", "maxBytes": 1}))["result"]
    assert limited["nextSeq"] == 2
    exited = [n for n in conn.notifications if n["method"] == "process/exited"]
    assert exited[0]["params"] == {
        "processId": "a",
        "seq": 2,
        "exitCode": 3,
        "sandboxDenied": False,
    }
    # A death by signal is 128 + N.
    await conn.request("process/start", start("k", "kill -TERM $$", cwd))
    assert (await closed_read(conn, "k"))["exitCode"] == 143


async def test_0133_process_shapes_unchanged(server: InProcessServer, tmp_path: Path) -> None:
    conn = await ready(server)
    reply = await conn.request("process/start", start("a", "echo hi; exit 3", str(tmp_path)))
    assert reply["result"] == {"processId": "a"}
    result = await closed_read(conn, "a")
    assert "sandboxDenied" not in result and result["nextSeq"] == 2
    await conn.request("process/start", start("k", "kill -TERM $$", str(tmp_path)))
    assert (await closed_read(conn, "k"))["exitCode"] == -1


async def test_0171_process_errors(server: InProcessServer, tmp_path: Path) -> None:
    conn = await ready(server)
    cwd = uri(tmp_path)
    reply = await conn.request(
        "process/start", start("m", "true", cwd, metadata={"threadId": "nope", "toolCallId": "x"})
    )
    assert error(reply) == (
        -32602,
        "invalid character: expected an optional prefix of `urn:uuid:` followed by "
        "[0-9a-fA-F-], found `n` at 1",
    )
    ok = {"threadId": "01a24d57-a03f-77a3-aa02-306e172ba445", "toolCallId": "call"}
    assert "result" in await conn.request("process/start", start("m2", "true", cwd, metadata=ok))
    reply = await conn.request("process/start", start("s", "true", cwd, sandbox={}))
    assert error(reply) == (-32602, "missing field `permissions`")
    reply = await conn.request(
        "process/start",
        {**start("e", "true", cwd), "argv": [str(tmp_path / "nonexistent")]},
    )
    assert reply["error"] == {
        "code": -32603,
        "message": "No such file or directory (os error 2)",
        "data": {"kind": "spawnNotFound"},
    }
    reply = await conn.request(
        "process/start", {**start("d", "true", cwd), "argv": [str(tmp_path)]}
    )
    assert reply["error"]["data"] == {"kind": "spawnPermissionDenied"}
    # 0.133 requests keep 0.133's error shape.
    reply = await conn.request(
        "process/start", {**start("e2", "true", str(tmp_path)), "argv": ["/nonexistent"]}
    )
    assert "data" not in reply["error"]


@pytest.mark.skipif(
    probe_kernel_support().landlock_problem is not None,
    reason="no Landlock here: tests/environment/test_sandbox_confinement.py covers the refusal",
)
async def test_sandbox_is_enforced_never_ignored(server: InProcessServer, tmp_path: Path) -> None:
    conn = await ready(server)
    work = tmp_path / "work"
    work.mkdir()
    outside = tmp_path / "outside"
    workspace_write = {
        "permissions": {
            "type": "managed",
            "file_system": {
                "type": "restricted",
                "entries": [
                    {"path": {"type": "special", "value": {"kind": "root"}}, "access": "read"},
                    {
                        "path": {"type": "special", "value": {"kind": "project_roots"}},
                        "access": "write",
                    },
                ],
            },
            "network": "restricted",
        },
        "cwd": uri(work),
        "windowsSandboxLevel": "disabled",
    }
    script = f"touch {work}/inside; touch {outside}"
    reply = await conn.request(
        "process/start", start("w", script, uri(work), sandbox=workspace_write)
    )
    assert reply["result"]["sandboxType"] == "linuxSeccomp", reply
    await closed_read(conn, "w")
    assert (work / "inside").exists()
    assert not outside.exists()
    # Network restricted alone is confinement too.
    net_only = {
        "permissions": {
            "type": "managed",
            "file_system": {"type": "unrestricted"},
            "network": "restricted",
        },
        "windowsSandboxLevel": "disabled",
    }
    reply = await conn.request("process/start", start("n", "true", uri(work), sandbox=net_only))
    assert reply["result"]["sandboxType"] == "linuxSeccomp", reply
    # A profile that confines nothing runs as is.
    disabled = {"permissions": {"type": "disabled"}, "windowsSandboxLevel": "disabled"}
    reply = await conn.request("process/start", start("d", "true", uri(work), sandbox=disabled))
    assert reply["result"]["sandboxType"] == "none"


async def test_write_ids_and_signals(server: InProcessServer, tmp_path: Path) -> None:
    conn = await ready(server)
    cwd = uri(tmp_path)
    await conn.request("process/start", start("w", "cat", cwd, pipeStdin=True))

    async def write(chunk: bytes, **extra: Any) -> dict[str, Any]:
        params = {"processId": "w", "chunk": base64.b64encode(chunk).decode(), **extra}
        return await conn.request("process/write", params)

    assert (await write(b"a\n", writeId="1"))["result"] == {"status": "accepted"}
    assert (await write(b"a\n", writeId="1"))["result"] == {"status": "accepted"}  # a retry
    assert (await write(b"b\n", writeId="2"))["result"] == {"status": "accepted"}
    assert (await write(b"c\n", writeId="1"))["result"] == {"status": "accepted"}  # seen id
    assert error(await write(b"x")) == (-32602, "missing field `writeId`")
    assert error(await write(b"x", writeId="")) == (-32602, "writeId must not be empty")
    output = b""
    while output != b"a\nb\n":  # what cat echoed: each write once
        read = await conn.request("process/read", {"processId": "w", "waitMs": 2000})
        output = b"".join(base64.b64decode(c["chunk"]) for c in read["result"]["chunks"])
        assert len(output) <= 4, output
    reply = await conn.request("process/signal", {"processId": "w", "signal": "terminate"})
    assert error(reply) == (-32602, "unknown variant `terminate`, expected `interrupt`")
    reply = await conn.request("process/signal", {"processId": "nope", "signal": "interrupt"})
    assert reply["result"] == {}
    reply = await conn.request("process/signal", {"processId": "w", "signal": "interrupt"})
    assert reply["result"] == {}
    assert (await closed_read(conn, "w"))["exitCode"] == 130
    # A 0.133 process keeps the extension's signals and needs no writeId.
    await conn.request("process/start", start("o", "cat", str(tmp_path), pipeStdin=True))
    reply = await conn.request("process/write", {"processId": "o", "chunk": "eAo="})
    assert reply["result"] == {"status": "accepted"}
    reply = await conn.request("process/signal", {"processId": "o", "signal": "terminate"})
    assert reply["result"] == {}
    assert (await closed_read(conn, "o"))["exitCode"] == -1


async def test_a_0171_session_is_kept_as_long_as_0171_keeps_it(tmp_path: Path) -> None:
    from exec_server.environment.server import ExecServer, ServerConfig
    from exec_server.environment.session import SessionConfig

    config = SessionConfig(detached_ttl_s=0.2, detached_ttl_0171_s=30)
    holder = InProcessServer(ExecServer(ServerConfig(session=config)))
    try:
        sessions = {}
        for era, path in (("0.133", str(tmp_path)), ("0.171", uri(tmp_path))):
            conn = holder.connect()
            sessions[era] = await conn.initialize()
            assert "result" in await conn.request("fs/getMetadata", {"path": path})
            await conn.close()
        await asyncio.sleep(0.6)
        for era, expected in (("0.133", "error"), ("0.171", "result")):
            conn = holder.connect()
            reply = await conn.request(
                "initialize", {"clientName": "t", "resumeSessionId": sessions[era]}
            )
            assert expected in reply, (era, reply)
    finally:
        for conn in holder.connections:
            await conn.close()
        await holder.server.close()
