"""Our harness drives the real Codex 0.133 remote executor through a test rendezvous.

The executor registers with a stand-in registry (ChatGPT-style credentials in a
throwaway CODEX_HOME, as codex-observed.md §1 describes), dials the stand-in
rendezvous, and our ExecServerClient connects with a ``role=harness`` URL. The
stream must settle in legacy mode: no retransmission, no segmentation, every
request answered.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime
import json
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiohttp import WSMsgType, web

from exec_server.client import ClientConfig, ExecServerClient
from exec_server.relay.events import PeerMode
from exec_server.relay.frame_codec import InvalidFrame, decode_frame
from exec_server.transport.channel import MessageTooLargeForTransport
from exec_server.transport.harness_relay import HarnessRelayChannel

pytestmark = pytest.mark.interop

ENVIRONMENT_ID = "env-interop"


def _b64url(obj: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()


def fake_chatgpt_jwt() -> str:
    """An unsigned JWT with the claims the Codex CLI reads (it does not verify it)."""
    now = int(time.time())
    claims = {
        "exp": now + 3600,
        "iat": now,
        "sub": "user-1",
        "email": "interop@example.com",
        "https://api.openai.com/auth": {
            "chatgpt_account_id": "acct-1",
            "chatgpt_plan_type": "pro",
            "chatgpt_user_id": "user-1",
        },
    }
    return f"{_b64url({'alg': 'none', 'typ': 'JWT'})}.{_b64url(claims)}.c2ln"


def write_codex_home(home: Path, token: str) -> None:
    home.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    auth = {
        "auth_mode": "chatgpt",
        "OPENAI_API_KEY": None,
        "tokens": {
            "id_token": token,
            "access_token": token,
            "refresh_token": "refresh",
            "account_id": "acct-1",
        },
        "last_refresh": now,
    }
    (home / "auth.json").write_text(json.dumps(auth))


@dataclass
class Forwarder:
    """Registry + verbatim forwarding rendezvous; records harness-side frames."""

    token: str
    environment: asyncio.Queue[web.WebSocketResponse] = field(default_factory=asyncio.Queue)
    owners: dict[str, web.WebSocketResponse] = field(default_factory=dict)
    harness_frames: list[bytes] = field(default_factory=list)
    environment_frames: list[bytes] = field(default_factory=list)
    registrations: list[str | None] = field(default_factory=list)
    port: int = 0
    _env: web.WebSocketResponse | None = None

    async def register(self, request: web.Request) -> web.Response:
        self.registrations.append(request.headers.get("Authorization"))
        if request.headers.get("Authorization") != f"Bearer {self.token}":
            return web.json_response({"error": {"code": "denied", "message": "no"}}, status=401)
        return web.json_response(
            {
                "environment_id": request.match_info["id"],
                "url": f"ws://127.0.0.1:{self.port}/environment?role=environment",
            }
        )

    async def environment_socket(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(compress=False, max_msg_size=0)
        await ws.prepare(request)
        self._env = ws
        await self.environment.put(ws)
        async for msg in ws:
            if msg.type is not WSMsgType.BINARY:
                continue
            self.environment_frames.append(msg.data)
            with contextlib.suppress(InvalidFrame):
                owner = self.owners.get(decode_frame(msg.data).stream_id)
                if owner is not None and not owner.closed:
                    await owner.send_bytes(msg.data)
        return ws

    async def harness_socket(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(compress=False, max_msg_size=0)
        await ws.prepare(request)
        async for msg in ws:
            if msg.type is not WSMsgType.BINARY:
                continue
            self.harness_frames.append(msg.data)
            with contextlib.suppress(InvalidFrame):
                self.owners.setdefault(decode_frame(msg.data).stream_id, ws)
            if self._env is not None and not self._env.closed:
                await self._env.send_bytes(msg.data)
        return ws


@pytest.fixture
async def codex_executor(codex_binary: str, tmp_path: Path) -> AsyncIterator[tuple[Forwarder, str]]:
    token = fake_chatgpt_jwt()
    forwarder = Forwarder(token)
    app = web.Application()
    app.router.add_post("/cloud/environment/{id}/register", forwarder.register)
    app.router.add_get("/environment", forwarder.environment_socket)
    app.router.add_get("/harness", forwarder.harness_socket)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    forwarder.port = int(runner.addresses[0][1])
    home = Path(os.environ.get("TMPDIR", "/var/tmp")) / f"codex-home-{os.getpid()}-{id(tmp_path)}"
    write_codex_home(home, token)
    proc = await asyncio.create_subprocess_exec(
        codex_binary,
        "exec-server",
        "--remote",
        f"http://127.0.0.1:{forwarder.port}",
        "--environment-id",
        ENVIRONMENT_ID,
        env={**os.environ, "CODEX_HOME": str(home)},
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        try:
            await asyncio.wait_for(forwarder.environment.get(), 15)
        except TimeoutError:
            proc.kill()
            assert proc.stderr is not None
            err = await proc.stderr.read()
            pytest.fail(f"codex executor never connected: {err.decode(errors='replace')[:2000]}")
        yield forwarder, f"ws://127.0.0.1:{forwarder.port}/harness?role=harness"
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()
        await runner.cleanup()
        with contextlib.suppress(OSError):
            (home / "auth.json").unlink()


async def test_our_harness_runs_commands_on_the_codex_executor(
    codex_executor: tuple[Forwarder, str], tmp_path: Path
) -> None:
    forwarder, url = codex_executor
    assert forwarder.registrations[0] == f"Bearer {forwarder.token}"
    async with await ExecServerClient.connect(
        url, config=ClientConfig(client_name="interop-harness")
    ) as client:
        assert client.session_id
        result = await (
            await client.start_process(["/bin/sh", "-c", "echo hello; echo oops >&2; exit 3"])
        ).collect()
        assert (result.stdout, result.stderr, result.exit_code) == (b"hello\n", b"oops\n", 3)

        tty = await client.start_process(["/bin/sh", "-c", "read line; echo got:$line"], tty=True)
        assert await tty.write(b"abc\n") == "accepted"
        tty_result = await tty.collect()
        assert b"got:abc" in tty_result.pty

        payload = os.urandom(3 * 1024 * 1024)
        target = tmp_path / "through-relay.bin"
        await client.fs.write_file(str(target), payload)
        assert await client.fs.read_file(str(target)) == payload

        # A message the legacy peer could not take in one frame fails clearly, and the
        # stream stays usable.
        with pytest.raises(MessageTooLargeForTransport, match="legacy Codex"):
            await client.fs.write_file(str(tmp_path / "huge.bin"), b"\0" * (20 * 1024 * 1024))
        meta = await client.fs.get_metadata(str(target))
        assert meta.is_file

        channel = client._channel
        assert isinstance(channel, HarnessRelayChannel)
        stream = channel.channel.stream
        assert stream.mode is PeerMode.LEGACY
        assert stream.stats.retransmissions == 0

    data_frames = [decode_frame(f) for f in forwarder.harness_frames]
    data_frames = [f for f in data_frames if f.kind == "data"]
    assert data_frames, "no data frames were sent"
    assert all(f.data.segment_count == 1 and f.data.segment_index == 0 for f in data_frames)
    payloads = [f.data.payload for f in data_frames]
    assert len(payloads) == len(set(payloads)), "a request was sent twice"


async def test_two_harness_streams_share_the_codex_executor_socket(
    codex_executor: tuple[Forwarder, str],
) -> None:
    _, url = codex_executor
    async with (
        await ExecServerClient.connect(url) as a,
        await ExecServerClient.connect(url) as b,
    ):
        assert a.session_id != b.session_id
        ra, rb = await asyncio.gather(
            (await a.start_process(["/bin/echo", "from-a"])).collect(),
            (await b.start_process(["/bin/echo", "from-b"])).collect(),
        )
        assert (ra.stdout, rb.stdout) == (b"from-a\n", b"from-b\n")


async def test_codex_executor_registers_with_our_rendezvous_and_run_drives_it(
    codex_binary: str, tmp_path: Path
) -> None:
    import sys

    from exec_server.rendezvous.server import RendezvousConfig, RendezvousServer

    token = fake_chatgpt_jwt()
    rendezvous = RendezvousServer(RendezvousConfig(token=token))
    base_url = await rendezvous.start()
    home = Path(os.environ.get("TMPDIR", "/var/tmp")) / f"codex-home-rz-{os.getpid()}"
    write_codex_home(home, token)
    executor = await asyncio.create_subprocess_exec(
        codex_binary,
        "exec-server",
        "--remote",
        base_url,
        "--environment-id",
        "codex-env",
        env={**os.environ, "CODEX_HOME": str(home)},
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 15
        while not rendezvous.router.is_online("codex-env"):
            assert time.monotonic() < deadline, "the Codex executor never came online"
            await asyncio.sleep(0.05)
        url = rendezvous.harness_url("codex-env")
        run = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "exec_server",
            "run",
            "--url",
            url,
            "--",
            "/bin/sh",
            "-c",
            "echo from-codex-executor; pwd; exit 3",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(run.communicate(), 60)
        assert run.returncode == 3, err.decode()
        # 0.133 has no environment/info, so `run` falls back to "/" as the cwd.
        assert out == b"from-codex-executor\n/\n"
    finally:
        executor.kill()
        await executor.wait()
        await rendezvous.close()
        with contextlib.suppress(OSError):
            (home / "auth.json").unlink()
