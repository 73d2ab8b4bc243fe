"""SDK -> our rendezvous -> our environment, for every RPC; and a rendezvous restart."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from exec_server.client import ClientConfig, Connecting, ExecServerClient, OutputEvent
from exec_server.environment.remote import RemoteEnvironment, RemoteEnvironmentConfig
from exec_server.environment.server import ExecServer
from exec_server.rendezvous.server import RendezvousConfig, RendezvousServer


class Stack:
    def __init__(self, rendezvous: RendezvousServer, environment: RemoteEnvironment) -> None:
        self.rendezvous = rendezvous
        self.environment = environment


async def _start_environment(
    base_url: str, token: str, environment_id: str
) -> tuple[ExecServer, RemoteEnvironment, asyncio.Future[None]]:
    server = ExecServer()
    environment = RemoteEnvironment(
        server,
        RemoteEnvironmentConfig(
            base_url=base_url,
            environment_id=environment_id,
            token=token,
            initial_backoff_s=0.05,
            max_backoff_s=0.5,
        ),
    )
    task = asyncio.ensure_future(environment.run())
    await asyncio.wait_for(environment.connected.wait(), 10)
    return server, environment, task


def _connect(
    rendezvous: RendezvousServer, environment_id: str, config: ClientConfig | None = None
) -> Connecting:
    """The SDK through the registry: ``/connect`` with a key, then the encrypted relay."""
    return ExecServerClient.connect(
        rendezvous=rendezvous.base_url,
        environment_id=environment_id,
        token=rendezvous.token,
        config=config or ClientConfig(encryption="required"),
    )


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    rendezvous = RendezvousServer(RendezvousConfig(data_dir=tmp_path / "rz"))
    base_url = await rendezvous.start()
    server, environment, task = await _start_environment(base_url, rendezvous.token, "e2e")
    yield Stack(rendezvous, environment)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    await server.close()
    await rendezvous.close()


async def test_every_rpc_through_the_rendezvous(stack: Stack, tmp_path: Path) -> None:
    async with await _connect(stack.rendezvous, "e2e") as client:
        assert client.session_id
        info = await client.environment_info()
        assert info.shell_path

        proc = await client.start_process(["/bin/sh", "-c", "echo out; echo err >&2; exit 7"])
        result = await proc.collect()
        assert (result.stdout, result.stderr, result.exit_code) == (b"out\n", b"err\n", 7)
        read = await proc.read()
        assert read.closed and read.exit_code == 7

        cat = await client.start_process(["cat"], pipe_stdin=True)
        assert await cat.write(b"piped") == "accepted"
        assert await cat.close_stdin() == "accepted"
        assert (await cat.collect()).stdout == b"piped"

        pty = await client.start_process(
            ["/bin/sh", "-c", "read x; stty size; echo got:$x"], tty=True, rows=30, cols=90
        )
        await pty.resize(33, 101)
        await pty.write(b"line\n")
        out = (await pty.collect()).pty
        assert b"33 101" in out and b"got:line" in out

        trap = await client.start_process(
            ["/bin/sh", "-c", "trap 'exit 9' INT; echo ready; while :; do sleep 0.05; done"]
        )
        first = await trap.next_event()
        assert isinstance(first, OutputEvent)
        await trap.signal("interrupt")
        assert (await trap.collect()).exit_code == 9

        sleeper = await client.start_process(["sleep", "30"])
        assert await sleeper.terminate() is True
        await sleeper.wait()

        base = tmp_path / "fs"
        await client.fs.create_directory(str(base / "a" / "b"))
        payload = os.urandom(5 * 1024 * 1024 + 17)  # several relay segments
        await client.fs.write_file(str(base / "a" / "b" / "f.bin"), payload)
        assert await client.fs.read_file(str(base / "a" / "b" / "f.bin")) == payload
        meta = await client.fs.get_metadata(str(base / "a" / "b" / "f.bin"))
        assert meta.is_file and meta.size == len(payload)
        assert [e.file_name for e in await client.fs.read_directory(str(base / "a"))] == ["b"]
        await client.fs.copy(str(base / "a"), str(base / "copy"), recursive=True)
        assert (base / "copy" / "b" / "f.bin").read_bytes() == payload
        digest = await client.fs.checksum(str(base / "copy" / "b" / "f.bin"))
        assert digest.size == len(payload)
        await client.fs.remove(str(base / "a"))
        assert not (base / "a").exists()


async def test_many_concurrent_streams_without_cross_talk(stack: Stack) -> None:
    clients = await asyncio.gather(
        *(
            _connect(
                stack.rendezvous, "e2e", ClientConfig(client_name=f"c{i}", encryption="required")
            )
            for i in range(40)
        )
    )
    try:

        async def echo(i: int, c: ExecServerClient) -> bytes:
            return (await (await c.start_process(["/bin/echo", f"client-{i}"])).collect()).stdout

        outputs = await asyncio.gather(*(echo(i, c) for i, c in enumerate(clients)))
        assert outputs == [f"client-{i}\n".encode() for i in range(40)]
        assert len({c.session_id for c in clients}) == 40
    finally:
        await asyncio.gather(*(c.close() for c in clients))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_rendezvous_restart_mid_run_streams_resume(tmp_path: Path) -> None:
    data_dir = tmp_path / "rz"
    port = _free_port()
    rendezvous = RendezvousServer(RendezvousConfig(data_dir=data_dir))
    base_url = await rendezvous.start("127.0.0.1", port)
    server, environment, task = await _start_environment(base_url, rendezvous.token, "restart")
    try:
        async with await _connect(rendezvous, "restart") as client:
            proc = await client.start_process(
                ["/bin/sh", "-c", "for i in $(seq 1 30); do echo line-$i; sleep 0.05; done"]
            )
            first = await proc.next_event()
            assert isinstance(first, OutputEvent)
            await rendezvous.close()  # every socket drops
            await asyncio.sleep(0.3)
            rendezvous = RendezvousServer(RendezvousConfig(data_dir=data_dir))
            await rendezvous.start("127.0.0.1", port)  # same secret: old URLs stay valid
            rest = await asyncio.wait_for(proc.collect(), 20)
            text = first.data + rest.stdout
            assert text == b"".join(f"line-{i}\n".encode() for i in range(1, 31))
            assert rest.exit_code == 0
            assert environment.registrations >= 2
            # The relay stream itself resumed; no session-level recovery was needed.
            assert client.recoveries == 0
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await server.close()
        await rendezvous.close()
