"""Our environment serving a simulated Codex 0.133 harness through a rendezvous.

The harness (:mod:`codex_harness_sim`) never acks, so a reliable sender would retransmit
everything after its RTO and a Codex harness would then see (and act on) duplicates. The
environment must recognise the legacy peer from its first frame (no capability bit) and
answer exactly as the 0.133 executor does: one unsegmented data frame per message, seq
from 0, ``ack = ack_bits = 0``, never an ack, heartbeat, resume, reset or retransmission.
"""

from __future__ import annotations

import asyncio
import base64
import os
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
from codex_harness_sim import SimulatedCodexHarness
from forwarding_rendezvous import ForwardingRendezvous, serve_remote_environment

from exec_server.client import ClientConfig, ExecServerClient
from exec_server.environment.remote import RemoteEnvironment
from exec_server.relay.events import PeerMode
from exec_server.relay.frame_codec import data_frame, encode_frame
from exec_server.relay.stream_config import DEFAULT_MAX_SEGMENT_PAYLOAD_BYTES
from exec_server.relay.stream_mux import MuxDropReason

#: Longer than the initial RTO (0.5 s) doubled, and 75x the ack delay: a reliable sender
#: would have retransmitted and acked by then.
QUIET_PERIOD_S = 1.2
BIG_FILE_BYTES = 1024 * 1024


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


async def _process_until_closed(
    harness: SimulatedCodexHarness, process_id: str
) -> tuple[bytes, int | None]:
    """Poll ``process/read`` as the 0.133 harness does, until ``closed``."""
    output = b""
    after: int | None = None
    exit_code: int | None = None
    for _ in range(100):
        reply = await harness.request(
            "process/read",
            {"processId": process_id, "afterSeq": after, "maxBytes": None, "waitMs": 1000},
        )
        result = reply["result"]
        for chunk in result["chunks"]:
            output += base64.b64decode(chunk["chunk"])
        after = result["nextSeq"] - 1
        if result["exited"]:
            exit_code = result["exitCode"]
        if result["closed"]:
            return output, exit_code
    raise AssertionError(f"process {process_id} never closed")


async def _codex_session(harness: SimulatedCodexHarness, workdir: Path) -> None:
    """The 0.133 harness's kind of traffic: probes, apply_patch-like fs calls, a process."""
    await harness.open()
    await asyncio.sleep(0.04)  # the real harness sends its first data ~40 ms after resume
    session_id = await harness.initialize()
    assert session_id

    missing = await harness.request(
        "fs/getMetadata", {"path": str(workdir / "AGENTS.md"), "sandbox": None}
    )
    assert missing["error"]["code"] == -32004
    meta = await harness.request("fs/getMetadata", {"path": str(workdir), "sandbox": None})
    assert meta["result"]["isDirectory"] is True

    hello = workdir / "hello.txt"
    written = await harness.request(
        "fs/writeFile", {"path": str(hello), "dataBase64": _b64(b"hello\n"), "sandbox": None}
    )
    assert written == {"id": written["id"], "result": {}}
    read = await harness.request("fs/readFile", {"path": str(hello), "sandbox": None})
    assert base64.b64decode(read["result"]["dataBase64"]) == b"hello\n"

    # A response far larger than one reliable segment: still one frame for a Codex peer.
    big = os.urandom(BIG_FILE_BYTES)
    big_path = workdir / "big.bin"
    await harness.request(
        "fs/writeFile", {"path": str(big_path), "dataBase64": _b64(big), "sandbox": None}
    )
    read = await harness.request("fs/readFile", {"path": str(big_path), "sandbox": None})
    assert base64.b64decode(read["result"]["dataBase64"]) == big

    start_params: dict[str, Any] = {
        "processId": "80576",
        "argv": ["/bin/sh", "-c", "echo hello; exit 3"],
        "cwd": str(workdir),
        "env": {"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
        "tty": False,
        "pipeStdin": False,
        "arg0": None,
    }
    started = await harness.request("process/start", start_params)
    assert started["result"] == {"processId": "80576"}
    output, exit_code = await _process_until_closed(harness, "80576")
    assert (output, exit_code) == (b"hello\n", 3)
    terminated = await harness.request("process/terminate", {"processId": "80576"})
    assert terminated["result"] == {"running": False}

    unknown = await harness.request("test/unknown", {})
    assert unknown["error"]["code"] == -32601 and "test/unknown" in unknown["error"]["message"]


def _assert_codex_shaped(harness: SimulatedCodexHarness, remote: RemoteEnvironment) -> None:
    frames = harness.frames
    assert frames, "the environment sent nothing"
    # Only data frames: no ack_frame, heartbeat, resume or reset ever reaches a Codex peer.
    assert {f.kind for f in frames} == {"data"}
    # seq 0, 1, 2, ... with no repeat: not a single retransmission.
    assert [f.data.seq for f in frames] == list(range(len(frames)))
    payloads = [f.data.payload for f in frames]
    assert len(set(payloads)) == len(payloads), "a message was sent twice"
    for frame, raw in zip(frames, harness.raw, strict=True):
        assert (frame.version, frame.ack, frame.ack_bits) == (1, 0, 0)
        assert (frame.data.segment_index, frame.data.segment_count) == (0, 1)
        assert frame.traceparent is None and frame.tracestate is None
        # Byte for byte what the 0.133 executor writes for this frame.
        expected = data_frame(harness.stream_id, frame.data.seq, frame.data.payload)
        assert raw == encode_frame(expected)
    assert max(len(p) for p in payloads) > DEFAULT_MAX_SEGMENT_PAYLOAD_BYTES  # unsegmented

    # Every request answered exactly once.
    ids = Counter(response["id"] for response in harness.responses)
    assert ids == Counter(range(1, harness._next_id + 1))

    stream = remote.connection.mux.streams[harness.stream_id]
    assert stream.mode is PeerMode.LEGACY
    stats = stream.stats
    assert stats.retransmissions == 0 and stats.fast_retransmits == 0
    assert (stats.ack_frames_sent, stats.heartbeats_sent, stats.resumes_sent) == (0, 0, 0)
    assert stats.data_frames_sent == len(frames)
    assert stream.get_timer() is None  # a legacy stream has nothing to time


async def test_environment_serves_a_codex_harness_without_retransmitting(tmp_path: Path) -> None:
    async with (
        ForwardingRendezvous() as rendezvous,
        serve_remote_environment(rendezvous) as remote,
        aiohttp.ClientSession() as http,
    ):
        ws = await http.ws_connect(rendezvous.harness_url, compress=0, max_msg_size=0)
        harness = SimulatedCodexHarness(ws)
        await _codex_session(harness, tmp_path)
        await harness.drain(QUIET_PERIOD_S)
        _assert_codex_shaped(harness, remote)
        # Codex's unflagged resume{0} claim is ignored; the first data frame made the stream.
        assert remote.connection.mux.dropped[MuxDropReason.UNKNOWN_STREAM_CONTROL] == 1
        await ws.close()


async def test_codex_harnesses_and_our_harness_share_one_environment_socket(
    tmp_path: Path,
) -> None:
    """Each stream negotiates on its own: legacy for Codex streams, reliable for ours."""
    async with (
        ForwardingRendezvous() as rendezvous,
        serve_remote_environment(rendezvous) as remote,
        aiohttp.ClientSession() as http,
    ):
        sockets = [
            await http.ws_connect(rendezvous.harness_url, compress=0, max_msg_size=0)
            for _ in range(2)
        ]
        codex = [SimulatedCodexHarness(ws) for ws in sockets]
        ours = await ExecServerClient.connect(
            rendezvous.harness_url, config=ClientConfig(client_name="ours")
        )
        try:
            dirs = [tmp_path / name for name in ("codex-1", "codex-2", "ours")]
            for d in dirs:
                d.mkdir()

            async def our_session() -> None:
                for i in range(50):
                    await ours.fs.write_file(str(dirs[2] / f"f{i}"), bytes([i]) * 1000)
                    assert await ours.fs.read_file(str(dirs[2] / f"f{i}")) == bytes([i]) * 1000
                result = await (await ours.start_process(["/bin/echo", "ok"])).collect()
                assert (result.stdout, result.exit_code) == (b"ok\n", 0)

            async with asyncio.TaskGroup() as group:
                for harness, workdir in zip(codex, dirs, strict=False):
                    group.create_task(_codex_session(harness, workdir))
                group.create_task(our_session())
            for harness in codex:
                await harness.drain(QUIET_PERIOD_S)
                _assert_codex_shaped(harness, remote)
            modes = {sid: s.mode for sid, s in remote.connection.mux.streams.items()}
            assert sorted(modes.values()) == sorted(
                [PeerMode.LEGACY, PeerMode.LEGACY, PeerMode.RELIABLE]
            )
            assert ours.recoveries == 0
        finally:
            await ours.close()
            for ws in sockets:
                await ws.close()
