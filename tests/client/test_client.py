"""The harness SDK against a real server, over websocket and stdio."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from exec_server.client import (
    DEFAULT_OUTPUT_CHUNK_BYTES,
    ClosedEvent,
    ExecServerClient,
    ExitedEvent,
    OutputEvent,
    ProcessFailed,
    TransportClosed,
)
from exec_server.environment.server import ExecServer, ServerConfig
from exec_server.environment.session import SessionConfig
from exec_server.protocol.errors import ServerError
from exec_server.transport.channel import MessageChannel
from exec_server.transport.websocket import connect_websocket


@pytest.fixture
async def ws_url() -> AsyncIterator[str]:
    server = ExecServer(ServerConfig(session=SessionConfig(detached_ttl_s=5.0)))
    url = await server.start_websocket()
    yield url
    await server.close()


@pytest.fixture
async def client(ws_url: str) -> AsyncIterator[ExecServerClient]:
    async with await ExecServerClient.connect(ws_url, client_name="sdk-test") as c:
        yield c


async def test_session_id_and_collect(client: ExecServerClient) -> None:
    assert client.session_id and len(client.session_id) == 36
    proc = await client.start_process(["/bin/sh", "-c", "echo out; echo err >&2; exit 7"])
    result = await proc.collect()
    assert (result.stdout, result.stderr, result.exit_code) == (b"out\n", b"err\n", 7)


async def test_events_are_in_seq_order_and_end_on_closed(client: ExecServerClient) -> None:
    proc = await client.start_process(["/bin/sh", "-c", "for i in 1 2 3; do echo $i; done"])
    events = [event async for event in proc]
    seqs = [e.seq for e in events if not isinstance(e, str)]  # type: ignore[union-attr]
    assert seqs == list(range(1, len(events) + 1))
    assert isinstance(events[-1], ClosedEvent)
    assert any(isinstance(e, ExitedEvent) for e in events)
    out = b"".join(e.data for e in events if isinstance(e, OutputEvent))
    assert out == b"1\n2\n3\n"


async def test_output_chunk_size_is_negotiated_per_process(client: ExecServerClient) -> None:
    total = 4 * 1024 * 1024
    argv = ["head", "-c", str(total), "/dev/zero"]
    largest = {}
    for chunk_bytes, limit in ((None, 8192), (DEFAULT_OUTPUT_CHUNK_BYTES, 128 * 1024)):
        proc = await client.start_process(argv, output_chunk_bytes=chunk_bytes)
        result = await proc.collect()
        sizes = [len(c.data) for c in result.chunks]
        assert (sum(sizes), result.exit_code) == (total, 0)
        assert max(sizes) <= limit
        largest[chunk_bytes] = max(sizes)
    # How much one read gets is timing; 4 MiB never all comes in 8 KiB pieces.
    assert largest[DEFAULT_OUTPUT_CHUNK_BYTES] > 8192
    # The SDK's default is the large chunk.
    result = await (await client.start_process(argv)).collect()
    assert 8192 < max(len(c.data) for c in result.chunks) <= DEFAULT_OUTPUT_CHUNK_BYTES


async def test_out_of_order_notifications_are_reordered(client: ExecServerClient) -> None:
    handle = await client.start_process(["/bin/sh", "-c", "sleep 5"], process_id="manual")
    # Feed synthetic events out of order: the handle must release them in seq order.
    handle._next_seq = 100
    handle._accept(102, ClosedEvent(102))
    handle._accept(101, ExitedEvent(101, 0))
    handle._accept(101, ExitedEvent(101, 0))  # duplicate, dropped
    handle._accept(100, OutputEvent(100, "stdout", b"x"))
    got = [await handle.next_event() for _ in range(3)]
    assert [type(e) for e in got] == [OutputEvent, ExitedEvent, ClosedEvent]
    await client.terminate_process("manual")


async def test_pty_stdin_echo(client: ExecServerClient) -> None:
    proc = await client.start_process(
        ["/bin/sh", "-c", "read line; echo from-stdin:$line"], tty=True
    )
    assert await proc.write(b"hello\n") == "accepted"
    result = await proc.collect()
    assert b"from-stdin:hello" in result.pty
    assert result.exit_code == 0


async def test_pipe_stdin_and_eof(client: ExecServerClient) -> None:
    proc = await client.start_process(["cat"], pipe_stdin=True)
    assert await proc.write(b"abc") == "accepted"
    assert await proc.close_stdin() == "accepted"
    result = await proc.collect()
    assert result.stdout == b"abc" and result.exit_code == 0
    proc = await client.start_process(["/bin/sh", "-c", "read x || echo eof"])
    assert await proc.write(b"ignored\n") == "stdinClosed"
    assert (await proc.collect()).stdout == b"eof\n"


async def test_signal_and_terminate(client: ExecServerClient) -> None:
    proc = await client.start_process(
        [
            "/bin/sh",
            "-c",
            "trap 'echo signal:2; exit 7' INT; echo ready; while :; do sleep 0.05; done",
        ]
    )
    first = await proc.next_event()
    assert isinstance(first, OutputEvent) and first.data == b"ready\n"
    await proc.signal("interrupt")
    result = await proc.collect()
    assert b"signal:2" in result.stdout and result.exit_code == 7
    proc = await client.start_process(["sleep", "30"])
    assert await proc.terminate() is True
    await proc.wait()
    assert await proc.terminate() is False


async def test_server_errors_are_typed(client: ExecServerClient) -> None:
    with pytest.raises(ServerError) as info:
        await client.read_process("nope")
    assert info.value.code == -32600 and "unknown process id nope" in info.value.message
    with pytest.raises(ServerError) as info:
        await client.read_file("/definitely/not/here")
    assert info.value.code == -32004
    await client.start_process(["sleep", "5"], process_id="dup")
    with pytest.raises(ServerError, match="process dup already exists"):
        await client.start_process(["true"], process_id="dup")
    await client.terminate_process("dup")


async def test_filesystem_round_trip(client: ExecServerClient, tmp_path: Path) -> None:
    target = tmp_path / "dir" / "f.bin"
    await client.create_directory(str(target.parent))
    payload = bytes(range(256)) * 1000
    await client.write_file(str(target), payload)
    assert await client.read_file(str(target)) == payload
    meta = await client.get_metadata(str(target))
    assert meta.is_file and not meta.is_directory and meta.modified_at_ms > 0
    entries = await client.read_directory(str(target.parent))
    assert [e.file_name for e in entries] == ["f.bin"]
    await client.copy(str(target), str(tmp_path / "copy.bin"))
    assert (tmp_path / "copy.bin").read_bytes() == payload
    await client.remove(str(tmp_path / "dir"))
    assert not (tmp_path / "dir").exists()


async def test_disconnect_without_reconnect_fails_handles_and_calls(ws_url: str) -> None:
    client = await ExecServerClient.over_channel(await connect_websocket(ws_url))
    proc = await client.start_process(["sleep", "30"])
    await client._channel.close("test drop")
    with pytest.raises(ProcessFailed, match="exec-server transport disconnected"):
        await asyncio.wait_for(proc.collect(), 5)
    with pytest.raises(TransportClosed):
        await client.read_process(proc.process_id)
    await client.close()


async def test_lost_connection_is_recovered_and_output_spliced(ws_url: str) -> None:
    client = await ExecServerClient.connect(ws_url)
    proc = await client.start_process(
        ["/bin/sh", "-c", "echo before; sleep 0.4; echo during; sleep 0.4; echo after; exit 5"]
    )
    first = await proc.next_event()
    assert isinstance(first, OutputEvent) and first.data == b"before\n"
    await client._channel.close("simulated drop")  # the socket goes away under the client
    result = await asyncio.wait_for(proc.collect(), 10)
    assert result.stdout == b"during\nafter\n" and result.exit_code == 5
    assert client.recoveries == 1
    assert await client.read_file("/etc/hostname") is not None
    await client.close()


async def test_output_evicted_while_disconnected_is_an_explicit_error(ws_url: str) -> None:
    state = {"dials": 0}

    async def slow_dial() -> MessageChannel:
        state["dials"] += 1
        await asyncio.sleep(1.0)  # the process outruns the 1 MiB retention meanwhile
        return await connect_websocket(ws_url)

    client = await ExecServerClient.over_channel(
        await connect_websocket(ws_url), reconnect=slow_dial
    )
    proc = await client.start_process(
        ["/bin/sh", "-c", "sleep 0.3; head -c 3000000 /dev/zero; sleep 1"]
    )
    await client._channel.close("simulated drop")
    with pytest.raises(ProcessFailed, match="exceeded the server's retention"):
        await asyncio.wait_for(proc.collect(), 15)
    assert state["dials"] == 1
    await client.close()


async def test_resume_session_from_new_client(ws_url: str) -> None:
    first = await ExecServerClient.connect(ws_url)
    proc = await first.start_process(["/bin/sh", "-c", "sleep 0.3; echo later"], events=False)
    session_id = first.session_id
    await first.close()
    async with await ExecServerClient.connect(ws_url, resume_session_id=session_id) as second:
        assert second.session_id == session_id
        out = b""
        after = 0
        while True:
            res = await second.read_process(proc.process_id, after_seq=after, wait_ms=2000)
            out += b"".join(c.chunk for c in res.chunks)
            after = res.next_seq - 1
            if res.closed:
                break
        assert out == b"later\n"


async def test_stdio_transport_end_to_end() -> None:
    async with await ExecServerClient.spawn_stdio() as client:
        proc = await client.start_process([sys.executable, "-c", "print('via stdio')"])
        result = await proc.collect()
        assert result.stdout == b"via stdio\n" and result.exit_code == 0
        info = await client.environment_info()
        assert info.shell.path


async def test_connect_errors_are_clear() -> None:
    from exec_server.transport.websocket import WebSocketConnectError

    with pytest.raises(WebSocketConnectError, match="failed to connect to exec-server websocket"):
        await ExecServerClient.connect("ws://127.0.0.1:1")
