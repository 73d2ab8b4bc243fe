"""Shared by the cluster tests: short leases, polling waits, node configs, rendezvous nodes
in this process (imported by name; a test module never imports ``conftest``, whose name
other test folders share)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import signal
import socket
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from exec_server.environment.remote import RemoteEnvironment, RemoteEnvironmentConfig
from exec_server.environment.server import ExecServer
from exec_server.rendezvous.cluster.nats_connection import NatsClusterConfig
from exec_server.rendezvous.cluster.nats_server import EmbeddedNats
from exec_server.rendezvous.cluster.nats_state import NatsClusterState
from exec_server.rendezvous.server import RendezvousConfig, RendezvousServer
from exec_server.transport.failover import rebase_url

HEARTBEAT_S = 0.1
LEASE_S = 0.6
"""Short leases so death is noticed quickly; generous enough for a loaded 2-CPU box
only because no test asserts that a node stays alive through a stall longer than it."""

WAIT_S = 15.0
"""Longest wait for an expected state (never asserted as a duration)."""
POLL_S = 0.02

MakeNode = Callable[..., Awaitable[NatsClusterState]]


async def eventually(check: Callable[[], bool | Awaitable[bool]], what: str) -> None:
    """Poll ``check`` (sync or async) until it holds; fail after :data:`WAIT_S`."""
    deadline = asyncio.get_running_loop().time() + WAIT_S
    for _ in itertools.count():
        result = check()
        if result if isinstance(result, bool) else await result:
            return
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting until {what}")
        await asyncio.sleep(POLL_S)


def node_config(server: EmbeddedNats, node_id: str, **overrides: Any) -> NatsClusterConfig:
    settings: dict[str, Any] = {
        "servers": (server.url,),
        "node_id": node_id,
        "heartbeat_interval_s": HEARTBEAT_S,
        "lease_s": LEASE_S,
        "reconnect_wait_s": 0.1,
    }
    settings.update(overrides)
    return NatsClusterConfig(**settings)


# --- rendezvous nodes in this process -----------------------------------------------------

TOKEN = "cluster-test-token"
NODE_HEARTBEAT_S = 0.25
NODE_LEASE_S = 2.0
"""Leases of rendezvous nodes under test: long enough that a loaded 2-CPU box does not
lose one by accident, short enough that a dead node is noticed within seconds."""


class Cluster:
    """An embedded NATS and rendezvous nodes ``n1``, ``n2``, ... in this process."""

    def __init__(self, nats_server: EmbeddedNats) -> None:
        self.nats = nats_server
        self.nodes: list[RendezvousServer] = []
        self._environments: list[tuple[ExecServer, asyncio.Task[None]]] = []

    async def add_node(self, **overrides: Any) -> RendezvousServer:
        node_id = f"n{len(self.nodes) + 1}"
        settings: dict[str, Any] = {
            "token": TOKEN,
            "environment_grace_s": 10.0,
            "harness_grace_s": 10.0,
            "ping_interval_s": None,
            "cluster": node_config(
                self.nats,
                node_id,
                heartbeat_interval_s=NODE_HEARTBEAT_S,
                lease_s=NODE_LEASE_S,
            ),
        }
        settings.update(overrides)
        node = RendezvousServer(RendezvousConfig(**settings))
        await node.start()
        self.nodes.append(node)
        return node

    def bases(self, *order: int) -> str:
        """Base URLs of the nodes (1-based numbers, in this order), comma separated."""
        numbers = order or tuple(range(1, len(self.nodes) + 1))
        return ",".join(self.nodes[number - 1].base_url for number in numbers)

    def harness_url(self, environment_id: str, node: int) -> str:
        """A harness URL signed by node 1, for a socket on node ``node``."""
        return rebase_url(self.nodes[0].harness_url(environment_id), self.nodes[node - 1].base_url)

    async def start_environment(self, environment_id: str, *nodes: int) -> RemoteEnvironment:
        """Our environment, registered with these nodes (the first one first)."""
        server = ExecServer()
        environment = RemoteEnvironment(
            server,
            RemoteEnvironmentConfig(
                base_url=self.bases(*nodes),
                environment_id=environment_id,
                token=TOKEN,
                initial_backoff_s=0.1,
                max_backoff_s=1.0,
            ),
        )
        task = asyncio.ensure_future(environment.run())
        self._environments.append((server, task))
        await asyncio.wait_for(environment.connected.wait(), WAIT_S)
        return environment

    async def close(self) -> None:
        for server, task in self._environments:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
            await server.close()
        for node in self.nodes:
            await node.close()


async def wait_online(node: RendezvousServer, environment_id: str) -> None:
    await eventually(lambda: node.router.is_online(environment_id), f"{node} sees it online")


# --- rendezvous nodes as processes ---------------------------------------------------------

CLI = [sys.executable, "-m", "exec_server"]
PROCESS_WAIT_S = 90.0
"""Longest wait for a process-level event (failover included) on a loaded machine."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Proc:
    """A child process; stdout kept whole (or counted), stderr lines kept."""

    proc: asyncio.subprocess.Process
    stdout: bytearray = field(default_factory=bytearray)
    stderr: list[str] = field(default_factory=list)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    @classmethod
    async def start(cls, *args: str, env: dict[str, str] | None = None) -> Proc:
        proc = await asyncio.create_subprocess_exec(
            *args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env={**os.environ, **(env or {})},
        )
        return cls(proc)

    async def first_line(self) -> str:
        assert self.proc.stdout is not None
        raw = await asyncio.wait_for(self.proc.stdout.readline(), PROCESS_WAIT_S)
        return raw.decode().strip()

    def collect(self) -> None:
        self._tasks.append(asyncio.ensure_future(self._read_stdout()))
        self._tasks.append(asyncio.ensure_future(self._read_stderr()))

    async def _read_stdout(self) -> None:
        assert self.proc.stdout is not None
        while chunk := await self.proc.stdout.read(1 << 16):
            self.stdout += chunk

    async def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        async for raw in self.proc.stderr:
            self.stderr.append(raw.decode(errors="replace").rstrip())

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signal.SIGKILL)

    async def wait(self) -> int:
        code = await asyncio.wait_for(self.proc.wait(), PROCESS_WAIT_S)
        for task in self._tasks:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(task, 10)
        return code

    async def stop(self) -> None:
        self.kill()
        await self.proc.wait()
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


class ProcessCluster:
    """``exec-server rendezvous --cluster`` node processes n1..nN on one NATS, a remote
    environment process and CLI commands, all on loopback."""

    def __init__(self, nats_server: EmbeddedNats) -> None:
        self.nats = nats_server
        self.bases: list[str] = []
        self.nodes: list[Proc] = []
        self.procs: list[Proc] = []

    async def start_node(self, grace_s: float = 30.0) -> None:
        number = len(self.nodes) + 1
        base = f"http://127.0.0.1:{free_port()}"
        node = await Proc.start(
            *CLI,
            "rendezvous",
            "--cluster",
            self.nats.url,
            "--node-id",
            f"n{number}",
            "--listen",
            base,
            "--environment-grace",
            str(grace_s),
            "--harness-grace",
            str(grace_s),
            env={"EXEC_SERVER_RENDEZVOUS_TOKEN": TOKEN},
        )
        self.procs.append(node)
        assert await node.first_line() == base
        node.collect()
        self.nodes.append(node)
        self.bases.append(base)

    def urls(self, *order: int) -> str:
        return ",".join(self.bases[number - 1] for number in order)

    async def start_environment(self, environment_id: str, *order: int) -> Proc:
        environment = await Proc.start(
            *CLI,
            "serve",
            "--remote",
            self.urls(*order),
            "--environment-id",
            environment_id,
            env={"EXEC_SERVER_REGISTRATION_TOKEN": TOKEN},
        )
        self.procs.append(environment)
        environment.collect()
        await eventually_within(
            lambda: self.online(environment_id, 1), PROCESS_WAIT_S, "the environment is online"
        )
        return environment

    async def command(self, order: tuple[int, ...], *args: str) -> Proc:
        """``exec-server <args[0]> --rendezvous <nodes in order> --environment-id ...``."""
        proc = await Proc.start(
            *CLI,
            args[0],
            "--rendezvous",
            self.urls(*order),
            *args[1:],
            env={"EXEC_SERVER_RENDEZVOUS_TOKEN": TOKEN},
        )
        self.procs.append(proc)
        proc.collect()
        return proc

    async def online(self, environment_id: str, node: int) -> bool:
        try:
            async with (
                aiohttp.ClientSession() as http,
                http.get(
                    f"{self.bases[node - 1]}/cloud/environments",
                    headers={"Authorization": f"Bearer {TOKEN}"},
                ) as resp,
            ):
                rows = await resp.json() if resp.status == 200 else []
        except (aiohttp.ClientError, OSError):
            return False
        return any(row["id"] == environment_id and row["online"] for row in rows)

    async def close(self) -> None:
        for proc in reversed(self.procs):
            await proc.stop()


async def eventually_within(
    check: Callable[[], bool | Awaitable[bool]], timeout_s: float, what: str
) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        result = check()
        if result if isinstance(result, bool) else await result:
            return
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting until {what}")
        await asyncio.sleep(0.05)
