"""Our SDK driving the real Codex exec-server, 0.133 and 0.171, with the same code.

0.171 writes paths as ``file://`` URIs (in the ``environmentInfo`` of its initialize
result) and refuses plain paths; 0.133 has no environment info and refuses URIs. The
SDK's defaults and path handling must make both work without the caller knowing.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from codex_binary import CODEX_0133, CODEX_0171, require_codex_binary

from exec_server.client import ExecServerClient, ServerError

pytestmark = pytest.mark.interop

START_TIMEOUT_S = 30.0


@contextlib.asynccontextmanager
async def codex_exec_server(version: str) -> AsyncIterator[str]:
    binary = require_codex_binary(version)
    proc = await asyncio.create_subprocess_exec(
        binary,
        "exec-server",
        "--listen",
        "ws://127.0.0.1:0",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), START_TIMEOUT_S)
        yield line.decode().strip()
    finally:
        if proc.returncode is None:
            proc.terminate()
        await proc.wait()


@pytest.mark.parametrize("version", [CODEX_0133, CODEX_0171])
async def test_run_and_files_with_plain_paths(version: str, tmp_path: Path) -> None:
    async with (
        codex_exec_server(version) as url,
        ExecServerClient.connect(url) as client,
    ):
        result = await client.run(["sh", "-c", "echo hi; exit 3"])
        assert (result.stdout, result.exit_code) == (b"hi\n", 3)
        info = await client.environment_info()
        if version == CODEX_0171:
            assert info.cwd is not None and info.cwd.startswith("file:///")
            assert info.executor_version == CODEX_0171
        else:
            assert info.cwd is None  # 0.133 has no environment/info
        assert (await client.run(["pwd"], cwd=str(tmp_path))).stdout == f"{tmp_path}\n".encode()
        # stdin: 0.171 requires a writeId on every process/write; 0.133 takes none.
        # (Closing stdin is our extension: Codex never sends EOF, so `head` stops itself.)
        proc = await client.start_process(["head", "-n", "2"], pipe_stdin=True)
        for line in (b"one\n", b"two\n"):
            assert await proc.write(line) == "accepted"
        assert (await proc.collect()).stdout == b"one\ntwo\n"
        target = tmp_path / "a file.txt"
        await client.fs.write_file(str(target), b"payload")
        assert target.read_bytes() == b"payload"
        assert await client.fs.read_file(str(target)) == b"payload"
        assert [e.file_name for e in await client.fs.read_directory(str(tmp_path))] == [
            "a file.txt"
        ]
        with pytest.raises(ServerError) as refused:
            await client.fs.read_file(str(tmp_path / "missing"))
        assert refused.value.method == "fs/readFile"
