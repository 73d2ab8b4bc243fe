"""Fault matrix row (issue 8 item 3): harnesses that stop reading for 15 s under 64 MiB.

Three harnesses share one environment (a process) through one rendezvous (a process):

* a Codex-style harness (no acks, the cleartext relay as Codex 0.133/0.171 speak it)
  starts a 64 MiB output and reads nothing for 15 s: its stream cannot retransmit, so it
  must get every byte, or an explicit ``reset``: never a gap;
* our SDK on a reliable stream does the same and must get every byte;
* a third harness keeps making requests meanwhile: its round trips go on.

The environment's memory stays bounded throughout (sampled from /proc).
"""

from __future__ import annotations

import asyncio
import base64
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pytest
from fault_support import OUTPUT_BYTES, Stack, report, running_stack

from exec_server.client import ExecServerClient
from exec_server.relay.frame_codec import data_frame, decode_frame, encode_frame, resume_frame

STALL_S = 15.0
HEAD = ["/usr/bin/head", "-c", str(OUTPUT_BYTES), "/dev/zero"]


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    # The cleartext relay: a Codex-style cleartext harness shares the environment.
    async with running_stack(tmp_path, transport="legacy") as stack:
        yield stack


class CodexHarness:
    """One cleartext relay stream as Codex's harness speaks it: ``resume{0}``, then data
    frames with seq 0, 1, ... and no acks; everything received is read in arrival order."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.stream_id = str(uuid.uuid4())
        self.seq = 0

    async def send(self, message: dict[str, Any]) -> None:
        payload = msgspec.json.encode(message)
        await self.ws.send_bytes(encode_frame(data_frame(self.stream_id, self.seq, payload)))
        self.seq += 1

    async def next(self) -> dict[str, Any] | str:
        """The next JSON-RPC message, or the reason of a reset."""
        while True:
            msg = await asyncio.wait_for(self.ws.receive(), 60)
            assert msg.type is aiohttp.WSMsgType.BINARY, msg
            frame = decode_frame(msg.data)
            if frame.stream_id != self.stream_id:
                continue
            if frame.kind == "reset":
                return frame.reset.reason
            if frame.kind == "data":
                decoded: dict[str, Any] = msgspec.json.decode(frame.data.payload)
                return decoded

    async def request(self, message: dict[str, Any]) -> dict[str, Any]:
        await self.send(message)
        while True:
            reply = await self.next()
            assert isinstance(reply, dict), reply
            if reply.get("id") == message["id"]:
                return reply


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


async def test_stalled_harnesses_get_every_byte_and_others_keep_going(
    stack: Stack, tmp_path: Path
) -> None:
    async with aiohttp.ClientSession() as http:
        url = await stack.harness_url(http)
        codex = CodexHarness(await http.ws_connect(url, compress=0, max_msg_size=0))
        await codex.ws.send_bytes(encode_frame(resume_frame(codex.stream_id, 0)))
        init = {"clientName": "codex-like", "resumeSessionId": None}
        assert "result" in await codex.request({"id": 1, "method": "initialize", "params": init})
        await codex.send({"method": "initialized", "params": {}})
        start = {"processId": "p", "argv": HEAD, "cwd": "/", "env": {}, "tty": False}
        assert "result" in await codex.request(
            {"id": 2, "method": "process/start", "params": start}
        )

        sdk = await ExecServerClient.connect(url)
        observer = await ExecServerClient.connect(url)
        try:
            reliable = await sdk.start_process(HEAD, cwd="/")
            # Both now stall: nobody reads the Codex socket or the SDK process's events.
            assert stack.environment is not None
            env_pid = stack.environment.proc.pid
            latencies: list[float] = []
            rss: list[int] = []
            stall_end = time.monotonic() + STALL_S
            while time.monotonic() < stall_end:
                sent = time.monotonic()
                await observer.fs.get_metadata(str(tmp_path))
                latencies.append(time.monotonic() - sent)
                rss.append(rss_bytes(env_pid))
                await asyncio.sleep(0.05)

            # They read again: the reliable stream gets everything...
            result = await asyncio.wait_for(reliable.collect(), 120)
            assert len(result.stdout) == OUTPUT_BYTES and result.exit_code == 0
            # ... and the Codex one everything, or an explicit reset after a gapless prefix.
            got, seqs, ending = 0, [], None
            while ending is None:
                message = await codex.next()
                if isinstance(message, str):
                    ending = f"reset{{{message}}}"
                elif message.get("method") == "process/output":
                    seqs.append(message["params"]["seq"])
                    got += len(base64.b64decode(message["params"]["chunk"]))
                elif message.get("method") == "process/closed":
                    ending = "process/closed"
            assert seqs == list(range(1, len(seqs) + 1))  # no gap
            if ending == "process/closed":
                assert got == OUTPUT_BYTES
            else:
                assert ending == "reset{harness_too_slow}"
        finally:
            await sdk.close()
            await observer.close()
            await codex.ws.close()
    assert len(latencies) >= 10  # the third harness kept going all along
    assert max(rss) < 512 * 1024 * 1024
    report(
        "Codex-style and SDK harnesses stalled 15 s under 64 MiB",
        codex=f"{got} bytes then {ending}",
        sdk=f"{len(result.stdout)} bytes",
        other_harness_worst_round_trip=max(latencies),
        other_harness_round_trips=len(latencies),
        environment_max_rss=f"{max(rss) // (1024 * 1024)} MiB",
    )
