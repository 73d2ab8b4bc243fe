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
