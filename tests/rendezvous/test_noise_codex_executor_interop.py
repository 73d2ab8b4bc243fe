"""The real Codex 0.171 executor registers with OUR rendezvous (Noise contract) and our
Python initiator reaches it through our router.

The executor gets the rendezvous token with ``--registration-bearer-stdin``; our harness
uses the same token for ``/connect``. The router only ever sees ciphertext: no JSON-RPC
text crosses it. Skipped when the binary is absent.
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
from codex_noise_registry import fetch_bundle, noise_connect
from rendezvous_support import TOKEN, MakeRendezvous, wait_for

from exec_server.relay.noise import NoiseIdentity
from exec_server.rendezvous import RendezvousServer

pytestmark = pytest.mark.interop


@contextlib.asynccontextmanager
async def codex_executor(
    rendezvous: RendezvousServer, environment_id: str, tmp_path: Path
) -> AsyncIterator[asyncio.subprocess.Process]:
    codex = require_codex_binary(CODEX_0171)
    home = tmp_path / "codex-home"
    home.mkdir(exist_ok=True)
    proc = await asyncio.create_subprocess_exec(
        codex,
        "exec-server",
        "--remote",
        rendezvous.base_url,
        "--environment-id",
        environment_id,
        "--registration-bearer-stdin",
        env={**os.environ, "CODEX_HOME": str(home), "HOME": str(tmp_path)},
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
        cwd=tmp_path,
    )
    assert proc.stdin is not None
    proc.stdin.write(rendezvous.token.encode() + b"\n")
    await proc.stdin.drain()
    try:
        await wait_for(lambda: rendezvous.router.is_online(environment_id), timeout=20.0)
        yield proc
    finally:
        if proc.returncode is None:
            proc.terminate()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(proc.wait(), 5.0)
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_real_0171_executor_serves_our_initiator_through_our_rendezvous(
    make_rendezvous: MakeRendezvous, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    rendezvous = await make_rendezvous(environment_grace_s=10.0)
    big = tmp_path / "big.bin"
    big.write_bytes(b"Z" * 200_000)
    async with codex_executor(rendezvous, "env-171", tmp_path):
        assert rendezvous.registry_stats.registrations["ok"] == 1
        assert rendezvous.noise_registry.registration("env-171") is not None
        async with noise_connect(http, rendezvous.base_url, "env-171", TOKEN) as harness:
            info = await harness.request("environment/info", {})
            assert info["cwd"].startswith("file://")
            read = await harness.request("fs/readFile", {"path": big.as_uri(), "sandbox": None})
            assert base64.b64decode(read["dataBase64"]) == big.read_bytes()
            # A second, concurrent harness on the same executor socket.
            async with noise_connect(http, rendezvous.base_url, "env-171", TOKEN) as second:
                assert "shell" in await second.request("environment/info", {})
            assert rendezvous.router.stream_count("env-171") >= 1
            assert "shell" in await harness.request("environment/info", {})
            # Nothing in clear: the JSON-RPC text never appears in routed frames.
            assert all(b"environment/info" not in raw for raw in harness.received_frames)
        validations = rendezvous.registry_stats.harness_key_validations
        assert validations["valid"] == 2


async def test_real_0171_executor_refuses_what_our_registry_does_not_vouch_for(
    make_rendezvous: MakeRendezvous, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """A key other than the one /connect authorized, and a replayed authorization, are
    refused by our /validate; the executor resets those streams and keeps serving."""
    rendezvous = await make_rendezvous(environment_grace_s=10.0)
    async with codex_executor(rendezvous, "env-171", tmp_path):
        async with noise_connect(http, rendezvous.base_url, "env-171", TOKEN) as good:
            with pytest.raises(ConnectionError, match=r"stream closed \(remote\)"):
                async with noise_connect(
                    http,
                    rendezvous.base_url,
                    "env-171",
                    TOKEN,
                    connect_key=NoiseIdentity.generate().public_key,
                ):
                    pass
            identity = NoiseIdentity.generate()
            bundle = await fetch_bundle(
                http, rendezvous.base_url, "env-171", TOKEN, identity.public_key
            )
            async with noise_connect(
                http, rendezvous.base_url, "env-171", TOKEN, identity=identity, bundle=bundle
            ) as first_use:
                assert "shell" in await first_use.request("environment/info", {})
            with pytest.raises(ConnectionError, match=r"stream closed \(remote\)"):
                async with noise_connect(
                    http, rendezvous.base_url, "env-171", TOKEN, identity=identity, bundle=bundle
                ):
                    pass
            assert "shell" in await good.request("environment/info", {})
        validations = rendezvous.registry_stats.harness_key_validations
        assert validations["invalid_signature"] == 1
        assert validations["replayed"] == 1
        assert validations["valid"] == 2
