"""cp's pipelined transfers own their in-flight chunk requests: when one fails, every
other request of the window is cancelled and awaited, whatever it ended with."""

from __future__ import annotations

import asyncio
import hashlib
import io
from typing import Any, cast

import pytest

from exec_server.cli import cp_cmd
from exec_server.client import ExecServerClient, TransportClosed


class _FailingFs:
    """``read_file`` fails at once for the first two chunks; the others never answer."""

    def __init__(self) -> None:
        self.cancelled = 0

    async def read_file(self, path: str, *, offset: int, length: int) -> bytes:
        if offset < 2 * cp_cmd.CP_CHUNK_BYTES:
            raise TransportClosed("the connection dropped")
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        return b""


async def test_a_failed_download_leaves_no_chunk_request_running() -> None:
    fs = _FailingFs()
    client = cast(ExecServerClient, type("Client", (), {"fs": fs})())
    before = asyncio.all_tasks()
    total = 10 * cp_cmd.CP_CHUNK_BYTES
    progress = cp_cmd._Progress("test", total)
    with pytest.raises(TransportClosed):
        await cp_cmd._receive_chunks(
            client, "/remote", total, io.BytesIO(), hashlib.sha256(), progress
        )
    left: set[asyncio.Task[Any]] = {t for t in asyncio.all_tasks() - before if not t.done()}
    assert left == set()
    assert fs.cancelled == cp_cmd.CP_PIPELINE_DEPTH - 2
