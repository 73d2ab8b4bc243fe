"""The end-to-end encrypted relay against the real Codex 0.171 binaries, both ways.

* The real 0.171 executor (``codex exec-server --remote BASE --environment-id ID
  --registration-bearer-stdin``, the bearer on stdin) registers its Noise key, and our
  CLI (``exec-server run`` / ``cp --rendezvous BASE --environment-id ID``, the bearer in
  ``EXEC_SERVER_RENDEZVOUS_TOKEN``) and SDK drive it: through ``exec-server
  rendezvous`` (our registry), and through a registry of Codex's own contract
  (``tests/codex_noise_registry.py``). The stream is Codex's (records from seq 0, no
  acks): the executor validated each harness key with the registry first.
* The real 0.171 harness (``codex exec``, a scripted model,
  ``CODEX_EXEC_SERVER_NOISE_REGISTRY_URL`` / ``_ENVIRONMENT_ID`` / ``_AUTH_TOKEN``)
  completes a full turn on our ``serve --remote`` environment through our rendezvous.

Skipped when the binary is absent (a failure in CI, which requires it).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import signal
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from codex_binary import CODEX_0171, require_codex_binary
from codex_harness import FakeModel, run_codex_exec
from codex_noise_registry import CodexNoiseRegistry
from test_harness0171 import scripted_turn

from exec_server.client import ClientConfig, ExecServerClient
from exec_server.relay.events import PeerMode
from exec_server.rendezvous import RendezvousServer
from exec_server.rendezvous.server import RendezvousConfig
from exec_server.transport.noise_channel import NoiseHarnessChannel

pytestmark = pytest.mark.interop

CLI = [sys.executable, "-m", "exec_server"]
ENV = "env-noise-171"
HARNESS_TOKEN = "harness-bearer"
WAIT_S = 30.0


@contextlib.asynccontextmanager
async def codex_executor(base_url: str, token: str, tmp_path: Path) -> AsyncIterator[None]:
    """``codex exec-server --remote BASE --environment-id ENV --registration-bearer-stdin``."""
    codex = require_codex_binary(CODEX_0171)
    home = tmp_path / "executor-home"
    home.mkdir(exist_ok=True)
    proc = await asyncio.create_subprocess_exec(
        codex,
        "exec-server",
        "--remote",
        base_url,
        "--environment-id",
        ENV,
        "--registration-bearer-stdin",
        env={**os.environ, "CODEX_HOME": str(home), "HOME": str(tmp_path)},
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
        cwd=tmp_path,
        start_new_session=True,
    )
    assert proc.stdin is not None
    proc.stdin.write(token.encode() + b"\n")
    await proc.stdin.drain()
    try:
        yield
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), 10)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()


async def until(condition: Callable[[], bool], what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT_S
    while not condition():
        assert loop.time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


async def cli(*args: str, token: str) -> tuple[int, str, str]:
    """One ``exec-server`` command; its exit code, stdout and stderr."""
    env = {**os.environ, "EXEC_SERVER_RENDEZVOUS_TOKEN": token}
    for name in list(env):
        if name.startswith(("EXEC_SERVER_URL", "CODEX_EXEC_SERVER")):
            del env[name]
    proc = await asyncio.create_subprocess_exec(
        *CLI,
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode is not None
    return proc.returncode, stdout.decode(), stderr.decode()


async def drive_with_cli_and_sdk(base_url: str, token: str, tmp_path: Path) -> None:
    """run (exit code and output), cp both ways (verified), and the SDK."""
    where = ["--rendezvous", base_url, "--environment-id", ENV]
    code, out, err = await cli(
        "run", *where, "--", "/bin/sh", "-c", "echo hello-from-0171; exit 3", token=token
    )
    assert (code, out) == (3, "hello-from-0171\n"), err

    # Several 60 KiB records each way.
    local = tmp_path / "upload.bin"
    local.write_bytes(os.urandom(700_000))
    remote = tmp_path / "remote" / "copy.bin"
    remote.parent.mkdir()
    code, _, err = await cli("cp", *where, str(local), f"{ENV}:{remote}", token=token)
    assert code == 0, err
    assert remote.read_bytes() == local.read_bytes()
    back = tmp_path / "back.bin"
    code, _, err = await cli("cp", *where, f"{ENV}:{remote}", str(back), token=token)
    assert code == 0, err
    assert hashlib.sha256(back.read_bytes()).digest() == hashlib.sha256(local.read_bytes()).digest()

    async with ExecServerClient.connect(
        rendezvous=base_url,
        environment_id=ENV,
        token=token,
        config=ClientConfig(encryption="required"),
    ) as client:
        channel = client._channel
        assert isinstance(channel, NoiseHarnessChannel)
        # A Codex executor: the stream is Codex's records, not our reliable relay.
        assert channel.channel.stream.mode is PeerMode.LEGACY
        result = await client.run(["/bin/sh", "-c", "head -c 300000 /dev/zero | wc -c"])
        assert (result.stdout, result.exit_code) == (b"300000\n", 0)
        assert await client.fs.read_file(str(remote)) == local.read_bytes()


async def test_0171_executor_registers_with_our_rendezvous_and_our_cli_drives_it(
    tmp_path: Path,
) -> None:
    rendezvous = RendezvousServer(RendezvousConfig(data_dir=tmp_path / "rz"))
    base_url = await rendezvous.start("127.0.0.1", 0)
    try:
        async with codex_executor(base_url, rendezvous.token, tmp_path):
            await until(lambda: rendezvous.router.is_online(ENV), "the executor online")
            registration = rendezvous.noise_registry.registration(ENV)
            assert registration is not None, "the executor did not register a Noise key"
            await drive_with_cli_and_sdk(base_url, rendezvous.token, tmp_path)
        # Every connection was checked with the registry and accepted; none refused.
        validations = rendezvous.registry_stats.harness_key_validations
        assert validations["valid"] >= 4 and set(validations) == {"valid"}
    finally:
        await rendezvous.close()


async def test_our_cli_and_sdk_reach_the_0171_executor_through_codex_registry(
    tmp_path: Path,
) -> None:
    executor_token = "executor-registration-bearer"
    registry = CodexNoiseRegistry(executor_token=executor_token, harness_token=HARNESS_TOKEN)
    base_url = await registry.start()
    try:
        async with codex_executor(base_url, executor_token, tmp_path):
            await registry.wait_registered(ENV)
            await drive_with_cli_and_sdk(base_url, HARNESS_TOKEN, tmp_path)
        assert len(registry.validated_streams) >= 4
        connects = [r for r in registry.requests if r.path.endswith("/connect")]
        assert all("harness_public_key" in r.body for r in connects)
        assert all(r.headers["Authorization"] == f"Bearer {HARNESS_TOKEN}" for r in connects)
    finally:
        await registry.close()


@contextlib.asynccontextmanager
async def our_remote_environment(base_url: str, token: str, tmp_path: Path) -> AsyncIterator[None]:
    """``exec-server serve --remote BASE --environment-id ENV`` (encrypted by default)."""
    proc = await asyncio.create_subprocess_exec(
        *CLI,
        "serve",
        "--remote",
        base_url,
        "--environment-id",
        ENV,
        env={
            **os.environ,
            "EXEC_SERVER_REGISTRATION_TOKEN": token,
            "CODEX_HOME": str(tmp_path / "server-codex-home"),
        },
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        yield
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), 10)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()


@pytest.mark.slow
async def test_0171_harness_completes_a_turn_on_our_environment_through_our_rendezvous(
    tmp_path: Path,
) -> None:
    codex = require_codex_binary(CODEX_0171)
    work = tmp_path / "work"
    work.mkdir()
    rendezvous = RendezvousServer(RendezvousConfig(data_dir=tmp_path / "rz"))
    base_url = await rendezvous.start("127.0.0.1", 0)
    try:
        async with our_remote_environment(base_url, rendezvous.token, tmp_path):
            await until(lambda: rendezvous.router.is_online(ENV), "our environment online")
            assert rendezvous.noise_registry.registration(ENV) is not None
            async with FakeModel(scripted_turn()) as model:
                run = await run_codex_exec(
                    codex,
                    model=model,
                    exec_server_url=None,
                    workdir=work,
                    codex_home=tmp_path / "codex-home",
                    sandbox="danger-full-access",
                    extra_env={
                        "CODEX_EXEC_SERVER_NOISE_REGISTRY_URL": base_url,
                        "CODEX_EXEC_SERVER_NOISE_ENVIRONMENT_ID": ENV,
                        "CODEX_EXEC_SERVER_NOISE_AUTH_TOKEN": rendezvous.token,
                    },
                )
        report = f"stdout:\n{run.stdout[-3000:]}\nstderr:\n{run.stderr[-3000:]}"
        assert run.returncode == 0, report
        assert "all steps done" in run.stdout, report
        assert "hello" in (model.tool_output("call_echo") or ""), report
        assert "hello from patch" in (model.tool_output("call_cat") or ""), report
        assert (work / "hello.txt").read_text() == "hello from second patch\n"
        assert "got:abc" in (model.tool_output("call_write") or ""), report
        # The harness took the Noise path: a key at /connect, validated by our environment.
        assert rendezvous.registry_stats.harness_key_validations["valid"] >= 1
    finally:
        await rendezvous.close()
