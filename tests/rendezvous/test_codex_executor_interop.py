"""The real Codex 0.133 remote executor registering with, and serving through, our rendezvous.

Skipped when the binary is absent (``scripts/install_codex.sh`` or ``$CODEX_0133_BIN``).
The executor authenticates with a fake ``auth.json`` (:func:`write_codex_auth_json`)
whose access token is configured as the rendezvous token.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from pathlib import Path

import aiohttp
import pytest
from codex_auth import write_codex_auth_json
from codex_binary import require_codex_binary
from rendezvous_support import MakeRendezvous, auth, data, dial, recv_frame, resume, wait_for

from exec_server.rendezvous import UrlRole

pytestmark = pytest.mark.interop

STREAM = "4d2a4a4e-1111-4222-8333-444455556666"


async def test_codex_executor_registers_serves_and_reregisters(
    make_rendezvous: MakeRendezvous, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    codex = require_codex_binary()
    codex_home = tmp_path / "codex-home"
    jwt = write_codex_auth_json(codex_home)
    rendezvous = await make_rendezvous(token=jwt, environment_grace_s=10.0)
    proc = await asyncio.create_subprocess_exec(
        codex,
        "exec-server",
        "--remote",
        rendezvous.base_url,
        "--environment-id",
        "env-codex",
        env={**os.environ, "CODEX_HOME": str(codex_home), "HOME": str(tmp_path)},
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        await wait_for(lambda: rendezvous.router.is_online("env-codex"), timeout=10.0)
        assert rendezvous.registry_stats.registrations["ok"] == 1

        harness = await dial(http, rendezvous.harness_url("env-codex"))
        await harness.send_bytes(resume(STREAM))
        await harness.send_bytes(
            data(
                STREAM,
                0,
                b'{"id":1,"method":"initialize",'
                b'"params":{"clientName":"rdv-test","resumeSessionId":null}}',
            )
        )
        reply = await recv_frame(harness)
        assert reply.stream_id == STREAM
        assert b'"sessionId"' in reply.data.payload
        async with http.get(f"{rendezvous.base_url}/cloud/environments", headers=auth(jwt)) as r:
            listing = await r.json()
        assert [(row["id"], row["online"], row["streams"]) for row in listing] == [
            ("env-codex", True, 1)
        ]

        # Codex re-registers about 1 s after losing its socket; streams wait for it.
        for peer in rendezvous.router.peers:
            if peer.role is UrlRole.ENVIRONMENT:
                await peer.aclose(code=1011)
        await wait_for(lambda: rendezvous.registry_stats.registrations["ok"] == 2, timeout=10.0)
        await wait_for(lambda: rendezvous.router.is_online("env-codex"), timeout=10.0)
        # A legacy executor forgot the stream with its socket: a fresh initialize on the
        # same (still routed) stream id starts a new virtual connection there.
        await harness.send_bytes(
            data(
                STREAM,
                1,
                b'{"id":2,"method":"initialize",'
                b'"params":{"clientName":"rdv-test","resumeSessionId":null}}',
            )
        )
        reply = await recv_frame(harness)
        assert reply.stream_id == STREAM and b'"id":2' in reply.data.payload
    finally:
        if proc.returncode is None:
            proc.terminate()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(proc.wait(), 5.0)
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
