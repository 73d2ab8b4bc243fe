"""Our Noise initiator against the real Codex 0.171 executor, through a test registry of
Codex's contract (tests/codex_noise_registry.py).

The executor registers with its Noise key (``--registration-bearer-stdin``: the bearer
on stdin), our harness fetches a bundle from ``/connect``, completes the hybrid IK
handshake (the executor validates our key with ``/validate`` first), and runs JSON-RPC:
``initialize``, ``process/start`` of ``echo``, and an ``fs/readFile`` of a 200 KB file
whose reply spans several 60 KiB records. Skipped when the binary is absent.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from codex_binary import CODEX_0171, require_codex_binary
from codex_noise_registry import CodexNoiseRegistry, noise_connect

from exec_server.relay.frame_codec import decode_frame
from exec_server.relay.noise import NoiseIdentity, NoisePublicKey

pytestmark = pytest.mark.interop

EXECUTOR_TOKEN = "executor-registration-bearer"
HARNESS_TOKEN = "harness-bearer"


@contextlib.asynccontextmanager
async def codex_executor(
    base_url: str, environment_id: str, tmp_path: Path
) -> AsyncIterator[asyncio.subprocess.Process]:
    """``codex exec-server --remote BASE --environment-id ID --registration-bearer-stdin``."""
    codex = require_codex_binary(CODEX_0171)
    home = tmp_path / "codex-home"
    home.mkdir(exist_ok=True)
    proc = await asyncio.create_subprocess_exec(
        codex,
        "exec-server",
        "--remote",
        base_url,
        "--environment-id",
        environment_id,
        "--registration-bearer-stdin",
        env={**os.environ, "CODEX_HOME": str(home), "HOME": str(tmp_path)},
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        cwd=tmp_path,
    )
    assert proc.stdin is not None
    proc.stdin.write(EXECUTOR_TOKEN.encode() + b"\n")
    await proc.stdin.drain()
    try:
        yield proc
    finally:
        if proc.returncode is None:
            proc.terminate()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(proc.wait(), 5.0)
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_python_initiator_runs_jsonrpc_on_the_real_0171_executor(tmp_path: Path) -> None:
    registry = CodexNoiseRegistry(executor_token=EXECUTOR_TOKEN, harness_token=HARNESS_TOKEN)
    base_url = await registry.start()
    big = tmp_path / "big.bin"
    big.write_bytes(bytes(range(256)) * 800)  # 204,800 bytes
    try:
        async with (
            codex_executor(base_url, "env-noise", tmp_path),
            aiohttp.ClientSession() as http,
        ):
            env = await registry.wait_registered("env-noise")
            register = next(r for r in registry.requests if r.path.endswith("/register"))
            assert register.headers["Authorization"] == f"Bearer {EXECUTOR_TOKEN}"
            assert register.body["security_profile"] == "noise_hybrid_ik_v1"
            NoisePublicKey.from_json_obj(register.body["executor_public_key"])

            async with noise_connect(http, base_url, "env-noise", HARNESS_TOKEN) as harness:
                # The executor asked the registry about our key, for our stream.
                validate = next(r for r in registry.requests if r.path.endswith("/validate"))
                assert validate.headers["x-codex-noise-stream-id"] == harness.stream.stream_id
                assert validate.body["executor_registration_id"] == env.registration_id
                assert registry.validated_streams == [harness.stream.stream_id]

                started = await harness.request(
                    "process/start",
                    {
                        "processId": "p1",
                        "argv": ["/bin/sh", "-c", "echo hi-from-noise"],
                        "cwd": tmp_path.as_uri(),
                        "env": {"PATH": "/usr/bin:/bin"},
                        "tty": False,
                        "pipeStdin": False,
                        "arg0": None,
                    },
                )
                assert started["processId"] == "p1"
                output = b""
                while True:
                    note = await asyncio.wait_for(harness.notifications.get(), 20.0)
                    if note["method"] == "process/output":
                        output += base64.b64decode(note["params"]["chunk"])
                    if note["method"] == "process/closed":
                        break
                assert output == b"hi-from-noise\n"

                frames_before = len(harness.received_frames)
                read = await harness.request("fs/readFile", {"path": big.as_uri(), "sandbox": None})
                assert base64.b64decode(read["dataBase64"]) == big.read_bytes()
                # The ~273 KB reply came as several full 60 KiB records (61456 bytes of
                # ciphertext each), seq strictly +1, one record per frame.
                reply = [decode_frame(raw) for raw in harness.received_frames[frames_before:]]
                sizes = [len(f.data.payload) for f in reply]
                assert sizes.count(61456) >= 4 and max(sizes) == 61456
                seqs = [f.data.seq for f in reply]
                assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
                assert all((f.data.segment_index, f.data.segment_count) == (0, 1) for f in reply)
    finally:
        await registry.close()


async def test_real_0171_executor_refuses_an_unauthorized_harness_key(tmp_path: Path) -> None:
    """A harness proving a key the registry did not authorize gets a reset, never
    message 2; the executor keeps serving the next, authorized, harness."""
    registry = CodexNoiseRegistry(executor_token=EXECUTOR_TOKEN, harness_token=HARNESS_TOKEN)
    base_url = await registry.start()
    try:
        async with (
            codex_executor(base_url, "env-noise", tmp_path),
            aiohttp.ClientSession() as http,
        ):
            await registry.wait_registered("env-noise")
            authorized_elsewhere = NoiseIdentity.generate().public_key
            with pytest.raises(ConnectionError, match=r"stream closed \(remote\)"):
                async with noise_connect(
                    http, base_url, "env-noise", HARNESS_TOKEN, connect_key=authorized_elsewhere
                ):
                    pass
            assert registry.validated_streams == []
            async with noise_connect(http, base_url, "env-noise", HARNESS_TOKEN) as harness:
                info = await harness.request("environment/info", {})
                assert "shell" in info
    finally:
        await registry.close()
