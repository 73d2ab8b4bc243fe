"""``--listen stdio``: newline-delimited JSON-RPC on stdin/stdout, Codex 0.133.0 vs ours."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import pytest
from interop_support import Differ, Normalizer, Target, diff_transcripts_plain

pytestmark = pytest.mark.interop

LINES = [
    '{"id":1,"method":"fs/getMetadata","params":{"path":"/"}}',
    '{"id":2,"method":"initialize","params":{"clientName":"stdio"}}',
    "",
    "   ",
    "not json",
    '{"method":"initialized","params":{}}',
    '{"id":3,"method":"fs/getMetadata","params":{"path":"/"}}',
    "[]",
    '{"id":4,"method":"test/unknown","params":{}}',
    '{"id":"s","method":"process/start","params":{"processId":"p","argv":["/bin/echo","hi"],'
    '"cwd":"/","env":{},"tty":false}}',
]


def stdio_argv(target: Target) -> list[str]:
    argv = list(target.argv)
    if not argv or not argv[-1].startswith("ws://"):
        pytest.skip(f"cannot derive a stdio command from {argv}")
    return [*argv[:-1], "stdio"]


def _session_done(lines: list[str]) -> bool:
    """The echo process has closed and the start request has its response."""
    return any('"process/closed"' in x for x in lines) and any(
        '"id":"s"' in x.replace(" ", "") for x in lines
    )


async def run_stdio(argv: list[str], *, stdout_file: bool) -> list[Any]:
    """Feed LINES, wait for the echo process to close, then close stdin."""
    with tempfile.TemporaryDirectory(prefix="interop-stdio-") as tmp:
        out_path = Path(tmp) / "stdout"
        out_fd = os.open(out_path, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.PIPE,
                stdout=out_fd if stdout_file else asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.DEVNULL,
                start_new_session=True,
            )
        finally:
            os.close(out_fd)
        assert proc.stdin is not None
        for line in LINES:
            proc.stdin.write(line.encode() + b"\n")
        await proc.stdin.drain()
        lines: list[str] = []
        if stdout_file:
            # Wait for the server to write the echo's whole session to the file (a fixed
            # sleep was too short under load); give up after a generous deadline.
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 30.0
            while not _session_done(out_path.read_text().splitlines()):
                if loop.time() > deadline or proc.returncode is not None:
                    break
                await asyncio.sleep(0.05)
        else:
            assert proc.stdout is not None
            # One generous deadline for the whole session, not per line: a server that
            # starts slowly under load (imports) must not read as a silent one.
            deadline = asyncio.get_running_loop().time() + 30.0
            with contextlib.suppress(TimeoutError):
                # 0.133 may write the echo's notifications before the start response.
                while not _session_done(lines):
                    remaining = deadline - asyncio.get_running_loop().time()
                    raw = await asyncio.wait_for(proc.stdout.readline(), max(remaining, 0.0))
                    if not raw:
                        break
                    lines.append(raw.decode())
        proc.stdin.close()
        try:
            code: int | None = await asyncio.wait_for(proc.wait(), 5.0)
        except TimeoutError:
            code = None
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, 9)
            await proc.wait()
        if stdout_file:
            lines = out_path.read_text().splitlines(keepends=True)
    messages = [json.loads(x) for x in lines if x.strip()]
    # Notifications may interleave differently with the responses; keep them apart.
    return [
        *({"response": m} for m in messages if "id" in m),
        {
            "note": "notifications",
            "value": sorted(m["method"] for m in messages if "id" not in m),
        },
        {"note": "exit code after stdin EOF", "value": code},
        {
            "note": "every line is one JSON object",
            "value": all(x.endswith("\n") and "\n" not in x[:-1] for x in lines),
        },
    ]


@pytest.mark.parametrize("stdout_file", [False, True], ids=["stdout-pipe", "stdout-file"])
async def test_stdio_session(differ: Differ, stdout_file: bool) -> None:
    codex = await run_stdio(stdio_argv(differ.reference), stdout_file=stdout_file)
    cand = await run_stdio(stdio_argv(differ.candidate), stdout_file=stdout_file)
    problem = diff_transcripts_plain(
        differ.reference.name,
        Normalizer([]).value(codex),
        differ.candidate.name,
        Normalizer([]).value(cand),
    )
    if problem:
        pytest.fail(problem, pytrace=False)
