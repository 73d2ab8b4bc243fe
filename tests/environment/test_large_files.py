"""256 MiB files through the websocket: the connection survives, memory stays bounded."""

from __future__ import annotations

import asyncio
import hashlib
import signal
import sys
from pathlib import Path

import pytest

from exec_server.client import ExecServerClient

SIZE = 256 * 1024 * 1024
#: The issue's bound: a transfer must not need 10x its size in server memory.
MAX_PEAK_FACTOR = 10


def _peak_rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM in /proc status")


@pytest.mark.slow
@pytest.mark.timeout(300)
async def test_256_mib_write_and_read_round_trip(tmp_path: Path) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "exec_server", "serve", stdout=asyncio.subprocess.PIPE
    )
    assert proc.stdout is not None
    try:
        url = (await asyncio.wait_for(proc.stdout.readline(), 15)).decode().strip()
        baseline = _peak_rss_bytes(proc.pid)
        # Distinct bytes so a misplaced or dropped range cannot go unnoticed.
        block = hashlib.sha256(b"seed").digest() * (1024 * 1024 // 32)
        payload = b"".join(block[i:] + block[:i] for i in range(SIZE // len(block)))
        assert len(payload) == SIZE
        target = tmp_path / "big.bin"
        async with await ExecServerClient.connect(url) as client:
            await client.fs.write_file(str(target), payload)
            assert target.stat().st_size == SIZE
            assert hashlib.sha256(target.read_bytes()).digest() == hashlib.sha256(payload).digest()
            data = await client.fs.read_file(str(target))
            assert len(data) == SIZE and data == payload
            del data
            # The connection is still usable afterwards.
            meta = await client.fs.get_metadata(str(target))
            assert meta.is_file
        peak = _peak_rss_bytes(proc.pid) - baseline
        assert peak < MAX_PEAK_FACTOR * SIZE, f"server peak grew by {peak / SIZE:.1f}x the file"
        print(f"server peak RSS growth: {peak / SIZE:.2f}x of {SIZE >> 20} MiB")
    finally:
        proc.send_signal(signal.SIGTERM)
        await proc.wait()
