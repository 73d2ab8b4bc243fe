"""The encrypted relay through ``exec-server rendezvous``: what the rendezvous sees, and
what an attacker holding a harness credential can and cannot do.

* **Wire capture.** Every frame the router forwards is recorded while our SDK drives our
  environment (a write of a marker file, a process printing another marker, JSON-RPC
  both ways). On the encrypted relay no frame contains any of it; the same session on
  the cleartext relay (``--remote-transport legacy``) shows all of it, which proves
  the capture sees what crosses.
* **Refusals.** A forged, a replayed and an expired ``harness_key_authorization``, a key
  the authorization was not issued for, a bundle whose executor key is not the
  environment's, and garbage in place of message 1 are each refused with a reset; the
  registry refused the authorizations for the right reason, and a session that was
  already open is not disturbed.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from codex_noise_registry import fetch_bundle, noise_connect

from exec_server.client import ClientConfig, ExecServerClient
from exec_server.environment.remote import (
    RemoteEnvironment,
    RemoteEnvironmentConfig,
    RemoteTransport,
)
from exec_server.environment.server import ExecServer
from exec_server.errors import ExecServerError
from exec_server.relay.frame_codec import decode_frame, encode_frame, resume_frame
from exec_server.relay.noise import NoiseIdentity
from exec_server.relay.noise.noise_mux import HandshakeOutcome, NoiseStreamMux
from exec_server.relay.noise.stream import NOISE_RELAY_RESET_REASON, handshake_frame
from exec_server.rendezvous import RendezvousServer
from exec_server.rendezvous.router import Router
from exec_server.rendezvous.server import RendezvousConfig

WAIT_S = 10.0
FILE_MARKER = b"file-marker-4b1d9f-never-in-clear"
OUTPUT_MARKER = "output-marker-77c0e2-never-in-clear"


@contextlib.asynccontextmanager
async def environment(
    rendezvous: RendezvousServer, environment_id: str, transport: RemoteTransport
) -> AsyncIterator[RemoteEnvironment]:
    server = ExecServer()
    remote = RemoteEnvironment(
        server,
        RemoteEnvironmentConfig(
            base_url=rendezvous.base_url,
            environment_id=environment_id,
            token=rendezvous.token,
            transport=transport,
        ),
    )
    task = asyncio.ensure_future(remote.run())
    try:
        await asyncio.wait_for(remote.connected.wait(), WAIT_S)
        yield remote
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await server.close()


@pytest.fixture
async def rendezvous(tmp_path: Path) -> AsyncIterator[RendezvousServer]:
    server = RendezvousServer(
        RendezvousConfig(data_dir=tmp_path / "rz", authorization_lifetime_s=0.5)
    )
    await server.start("127.0.0.1", 0)
    yield server
    await server.close()


@pytest.fixture
def captured(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """Every binary message the router is handed, both directions."""
    frames: list[bytes] = []
    from_environment = Router.on_environment_message
    from_harness = Router.on_harness_message

    def environment_message(self: Router, peer: Any, data: bytes) -> None:
        frames.append(bytes(data))
        from_environment(self, peer, data)

    async def harness_message(self: Router, peer: Any, data: bytes) -> None:
        frames.append(bytes(data))
        await from_harness(self, peer, data)

    monkeypatch.setattr(Router, "on_environment_message", environment_message)
    monkeypatch.setattr(Router, "on_harness_message", harness_message)
    return frames


async def one_session(rendezvous: RendezvousServer, environment_id: str, tmp_path: Path) -> None:
    """Write a marker file, read it back, run a process that prints a marker."""
    encryption = "auto" if environment_id.endswith("legacy") else "required"
    async with ExecServerClient.connect(
        rendezvous=rendezvous.base_url,
        environment_id=environment_id,
        token=rendezvous.token,
        config=ClientConfig(encryption=encryption),  # type: ignore[arg-type]
    ) as client:
        target = tmp_path / f"{environment_id}.txt"
        await client.fs.write_file(str(target), FILE_MARKER * 100)
        assert await client.fs.read_file(str(target)) == FILE_MARKER * 100
        result = await client.run(["/bin/echo", OUTPUT_MARKER])
        assert result.stdout == f"{OUTPUT_MARKER}\n".encode()


def leaks(frames: list[bytes]) -> set[str]:
    """Which plaintexts appear in the captured frames."""
    blob = b"\n".join(frames)
    probes = {
        "file contents": base64.b64encode(FILE_MARKER),  # as fs/* carry it (33 bytes: aligned)
        "process output": OUTPUT_MARKER.encode(),
        "JSON-RPC method": b'"method"',
        "fs/writeFile": b"fs/writeFile",
        "process/start": b"process/start",
        "initialize": b'"initialize"',
    }
    return {name for name, probe in probes.items() if probe in blob}


async def test_the_rendezvous_sees_only_ciphertext(
    rendezvous: RendezvousServer, captured: list[bytes], tmp_path: Path
) -> None:
    async with environment(rendezvous, "env-noise", "noise"):
        await one_session(rendezvous, "env-noise", tmp_path)
    encrypted = list(captured)
    assert len(encrypted) > 10
    assert leaks(encrypted) == set()
    kinds = {decode_frame(frame).kind for frame in encrypted}
    assert {"handshake", "data"} <= kinds

    captured.clear()
    async with environment(rendezvous, "env-legacy", "legacy"):
        await one_session(rendezvous, "env-legacy", tmp_path)
    # The control: the same session over the cleartext relay shows everything.
    assert leaks(captured) == {
        "file contents",
        "process output",
        "JSON-RPC method",
        "fs/writeFile",
        "process/start",
        "initialize",
    }


async def refused(attempt: Any) -> str:
    """The reason of the reset that ended ``attempt`` (a ``noise_connect``)."""
    with pytest.raises(ConnectionError) as info:
        async with attempt:
            pass
    message = str(info.value)
    assert "stream closed (remote)" in message, message
    return message


async def garbage_handshake(http: aiohttp.ClientSession, url: str) -> str:
    stream_id = str(uuid.uuid4())
    ws = await http.ws_connect(url, compress=0)
    try:
        await ws.send_bytes(encode_frame(resume_frame(stream_id, 0)))
        await ws.send_bytes(encode_frame(handshake_frame(stream_id, os.urandom(3600))))
        msg = await asyncio.wait_for(ws.receive(), WAIT_S)
        frame = decode_frame(msg.data)
        assert (frame.stream_id, frame.kind) == (stream_id, "reset")
        return frame.reset.reason
    finally:
        await ws.close()


async def test_bad_authorizations_keys_and_handshakes_are_refused_and_harm_no_stream(
    rendezvous: RendezvousServer, tmp_path: Path
) -> None:
    base, env_id, token = rendezvous.base_url, "env-sec", rendezvous.token
    async with (
        environment(rendezvous, env_id, "noise") as remote,
        ExecServerClient.connect(
            rendezvous=base,
            environment_id=env_id,
            token=token,
            config=ClientConfig(encryption="required"),
        ) as bystander,
        aiohttp.ClientSession() as http,
    ):
        assert (await bystander.run(["/bin/echo", "before"])).stdout == b"before\n"
        mux = remote.connection.mux
        assert isinstance(mux, NoiseStreamMux)
        (bystander_stream,) = mux.streams.values()

        # Forged: a valid bundle with the authorization's MAC altered.
        identity = NoiseIdentity.generate()
        bundle = await fetch_bundle(http, base, env_id, token, identity.public_key)
        head, _, mac = bundle["harness_key_authorization"].rpartition(".")
        forged = {**bundle, "harness_key_authorization": f"{head}.{mac[::-1]}"}
        await refused(noise_connect(http, base, env_id, token, identity=identity, bundle=forged))

        # Replayed: a bundle that already opened a connection.
        identity = NoiseIdentity.generate()
        bundle = await fetch_bundle(http, base, env_id, token, identity.public_key)
        async with noise_connect(http, base, env_id, token, identity=identity, bundle=bundle) as ok:
            assert (await ok.request("environment/info", {}))["cwd"]
        await refused(noise_connect(http, base, env_id, token, identity=identity, bundle=bundle))

        # Expired: used after its lifetime (0.5 s here; expiries have 1 s resolution).
        identity = NoiseIdentity.generate()
        bundle = await fetch_bundle(http, base, env_id, token, identity.public_key)
        await asyncio.sleep(2.0)
        await refused(noise_connect(http, base, env_id, token, identity=identity, bundle=bundle))

        # Another key: the authorization was issued for a key the harness cannot prove.
        elsewhere = NoiseIdentity.generate().public_key
        await refused(noise_connect(http, base, env_id, token, connect_key=elsewhere))

        # A wrong executor key: the environment cannot even read message 1.
        bundle = await fetch_bundle(http, base, env_id, token, NoiseIdentity.generate().public_key)
        wrong = {**bundle, "executor_public_key": NoiseIdentity.generate().public_key.to_json_obj()}
        await refused(noise_connect(http, base, env_id, token, bundle=wrong))

        # Garbage in place of message 1.
        assert await garbage_handshake(http, bundle["url"]) == NOISE_RELAY_RESET_REASON

        validations = rendezvous.registry_stats.harness_key_validations
        assert validations["invalid_signature"] == 2  # forged, another key
        assert validations["replayed"] == 1
        assert validations["expired"] == 1
        assert mux.handshakes[HandshakeOutcome.BAD_MESSAGE] == 2  # wrong key, garbage
        assert mux.handshakes[HandshakeOutcome.REFUSED] == 4

        # The session that was open all along is untouched.
        assert list(mux.streams.values()).count(bystander_stream) == 1
        assert (await bystander.run(["/bin/echo", "after"])).stdout == b"after\n"
        assert bystander.recoveries == 0


async def test_a_cleartext_harness_cannot_reach_an_encrypted_environment(
    rendezvous: RendezvousServer,
) -> None:
    """A signed cleartext harness URL still routes, but the environment answers nothing
    but a reset that says why: it speaks only the encrypted relay."""
    async with environment(rendezvous, "env-only-noise", "noise"):
        url = rendezvous.harness_url("env-only-noise")
        with pytest.raises(ExecServerError) as info:
            async with ExecServerClient.connect(
                url, config=ClientConfig(recovery_timeout_s=0)
            ) as client:
                await client.run(["/bin/true"])
        assert "only end-to-end encrypted (Noise) streams" in str(info.value)
