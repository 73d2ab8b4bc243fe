"""The harness SDK against a real server, over websocket and stdio."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from exec_server.client import (
    DEFAULT_OUTPUT_CHUNK_BYTES,
    ClientConfig,
    ClosedEvent,
    ConnectError,
    ExecServerClient,
    ExecServerError,
    ExitedEvent,
    OutputEvent,
    ProcessFailed,
    ProcessTimeout,
    RequestTimeout,
    ServerError,
    SessionExpired,
    TransportClosed,
    local_path,
)
from exec_server.environment.server import ExecServer, ServerConfig
from exec_server.environment.session import SessionConfig
from exec_server.transport.channel import MessageChannel
from exec_server.transport.websocket_client import (
    WebSocketClientChannel,
    connect_websocket_client,
)


@pytest.fixture
async def ws_url() -> AsyncIterator[str]:
    server = ExecServer(ServerConfig(session=SessionConfig(detached_ttl_s=5.0)))
    url = await server.start_websocket()
    yield url
    await server.close()


@pytest.fixture
async def client(ws_url: str) -> AsyncIterator[ExecServerClient]:
    async with ExecServerClient.connect(ws_url, config=ClientConfig(client_name="sdk-test")) as c:
        yield c


async def test_connect_is_awaitable_and_a_context_manager(ws_url: str) -> None:
    client = await ExecServerClient.connect(ws_url)
    assert client.session_id and len(client.session_id) == 36
    await client.close()
    assert client.closed
    async with ExecServerClient.connect(ws_url) as second:
        assert second.session_id != client.session_id
    assert second.closed


async def test_run_returns_output_and_exit_code(client: ExecServerClient) -> None:
    result = await client.run(["/bin/sh", "-c", "echo out; echo err >&2; exit 7"])
    assert (result.stdout, result.stderr, result.exit_code) == (b"out\n", b"err\n", 7)
    assert not result.truncated
    piped = await client.run(["tr", "a-z", "A-Z"], stdin=b"shout")
    assert piped.stdout == b"SHOUT"


async def test_run_limits_output_per_stream(client: ExecServerClient) -> None:
    result = await client.run(
        ["/bin/sh", "-c", "head -c 300000 /dev/zero; echo tail >&2"], max_output_bytes=1000
    )
    assert result.stdout == b"\0" * 1000 and result.truncated
    assert result.stderr == b"tail\n" and result.exit_code == 0


async def test_run_timeout_terminates_and_keeps_partial_output(
    client: ExecServerClient, tmp_path: Path
) -> None:
    marker = tmp_path / "still-running"
    script = f"echo started; sleep 0.2; while :; do touch {marker}; sleep 0.05; done"
    with pytest.raises(ProcessTimeout) as info:
        await client.run(["/bin/sh", "-c", script], timeout=1.0)
    assert isinstance(info.value, RequestTimeout) and isinstance(info.value, TimeoutError)
    assert info.value.result.stdout == b"started\n"
    # Terminated: the marker stops being touched.
    await asyncio.sleep(0.3)
    marker.unlink(missing_ok=True)
    await asyncio.sleep(0.3)
    assert not marker.exists()


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

    async def sizes(**kwargs: int | None) -> list[int]:
        proc = await client.start_process(argv, **kwargs)  # type: ignore[arg-type]
        return [len(e.data) async for e in proc if isinstance(e, OutputEvent)]

    codex_sized = await sizes(output_chunk_bytes=None)
    ours = await sizes()  # the SDK's default
    assert sum(codex_sized) == sum(ours) == total
    assert max(codex_sized) <= 8192
    # How much one read gets is timing; 4 MiB never all comes in 8 KiB pieces.
    assert 8192 < max(ours) <= DEFAULT_OUTPUT_CHUNK_BYTES


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
    await client.process("manual").terminate()


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
        await client.process("nope").read()
    assert info.value.code == -32600 and "unknown process id nope" in info.value.message
    assert info.value.method == "process/read"
    with pytest.raises(ServerError) as info:
        await client.fs.read_file("/definitely/not/here")
    assert info.value.code == -32004 and info.value.os_errno == 2
    await client.start_process(["sleep", "5"], process_id="dup")
    with pytest.raises(ServerError, match="process dup already exists"):
        await client.start_process(["true"], process_id="dup")
    with pytest.raises(ServerError) as info:
        await client.start_process(["/no/such/binary"])
    assert info.value.code == -32603 and info.value.os_errno == 2
    await client.process("dup").terminate()


async def test_filesystem_round_trip(client: ExecServerClient, tmp_path: Path) -> None:
    fs = client.fs
    target = tmp_path / "dir" / "f.bin"
    await fs.create_directory(str(target.parent))
    payload = bytes(range(256)) * 1000
    await fs.write_file(str(target), payload)
    assert await fs.read_file(str(target)) == payload
    assert await fs.read_file(str(target), offset=256, length=10) == bytes(range(10))
    meta = await fs.get_metadata(str(target))
    assert meta.is_file and not meta.is_directory and meta.size == len(payload)
    entries = await fs.read_directory(str(target.parent))
    assert [e.file_name for e in entries] == ["f.bin"]
    await fs.copy(str(target), str(tmp_path / "copy.bin"))
    assert (tmp_path / "copy.bin").read_bytes() == payload
    assert (await fs.checksum(str(tmp_path / "copy.bin"))).size == len(payload)
    await fs.remove(str(tmp_path / "dir"))
    assert not (tmp_path / "dir").exists()


async def test_cwd_defaults_to_the_environments(client: ExecServerClient) -> None:
    info = await client.environment_info()
    assert info.cwd and info.shell_path
    result = await client.run(["pwd"])
    assert result.stdout.decode().strip() == local_path(info.cwd)


async def _dropping_client(ws_url: str) -> tuple[ExecServerClient, list[WebSocketClientChannel]]:
    """A client over a channel the test can drop; its reconnect dials ``ws_url`` anew."""
    channels = [await connect_websocket_client(ws_url)]

    async def dial() -> MessageChannel:
        channels.append(await connect_websocket_client(ws_url))
        return channels[-1]

    client = await ExecServerClient.over_channel(channels[0], reconnect=dial)
    return client, channels


async def test_disconnect_without_reconnect_fails_handles_and_calls(ws_url: str) -> None:
    channel = await connect_websocket_client(ws_url)
    client = await ExecServerClient.over_channel(channel)
    proc = await client.start_process(["sleep", "30"])
    await channel.close("test drop")
    with pytest.raises(ProcessFailed, match="exec-server transport disconnected"):
        await asyncio.wait_for(proc.collect(), 5)
    with pytest.raises(TransportClosed) as info:
        await client.process(proc.process_id).read()
    assert not isinstance(info.value, ServerError)
    await client.close()


async def test_lost_connection_is_recovered_and_output_spliced(ws_url: str) -> None:
    client, channels = await _dropping_client(ws_url)
    proc = await client.start_process(
        ["/bin/sh", "-c", "echo before; sleep 0.4; echo during; sleep 0.4; echo after; exit 5"]
    )
    first = await proc.next_event()
    assert isinstance(first, OutputEvent) and first.data == b"before\n"
    await channels[0].close("simulated drop")
    result = await asyncio.wait_for(proc.collect(), 10)
    assert result.stdout == b"during\nafter\n" and result.exit_code == 5
    assert client.recoveries == 1 and len(channels) == 2
    assert (await client.run(["echo", "again"])).stdout == b"again\n"
    await client.close()


async def test_output_evicted_while_disconnected_is_an_explicit_error(ws_url: str) -> None:
    dials = 0

    async def slow_dial() -> MessageChannel:
        nonlocal dials
        dials += 1
        await asyncio.sleep(1.0)  # the process outruns the 1 MiB retention meanwhile
        return await connect_websocket_client(ws_url)

    channel = await connect_websocket_client(ws_url)
    client = await ExecServerClient.over_channel(channel, reconnect=slow_dial)
    proc = await client.start_process(
        ["/bin/sh", "-c", "sleep 0.3; head -c 3000000 /dev/zero; sleep 1"]
    )
    await channel.close("simulated drop")
    with pytest.raises(ProcessFailed, match="exceeded the server's retention"):
        await asyncio.wait_for(proc.collect(), 15)
    assert dials == 1
    await client.close()


async def test_recovery_stops_when_the_session_expired() -> None:
    # The SDK speaks file:// URIs to a server that announces them: a 0.171-era session.
    ttl = SessionConfig(detached_ttl_s=0.05, detached_ttl_0171_s=0.05)
    server = ExecServer(ServerConfig(session=ttl))
    url = await server.start_websocket()
    try:

        async def late_dial() -> MessageChannel:
            await asyncio.sleep(0.5)  # past the session's detached lifetime
            return await connect_websocket_client(url)

        channel = await connect_websocket_client(url)
        client = await ExecServerClient.over_channel(channel, reconnect=late_dial)
        proc = await client.start_process(["sleep", "30"])
        await channel.close("simulated drop")
        with pytest.raises(ProcessFailed, match="expired"):
            await asyncio.wait_for(proc.collect(), 10)
        with pytest.raises(SessionExpired):
            await client.run(["true"])
        await client.close()
    finally:
        await server.close()


async def test_resume_session_from_new_client(ws_url: str) -> None:
    first = await ExecServerClient.connect(ws_url)
    proc = await first.start_process(["/bin/sh", "-c", "sleep 0.3; echo later"], events=False)
    session_id = first.session_id
    await first.close()
    async with ExecServerClient.connect(ws_url, resume_session_id=session_id) as second:
        assert second.session_id == session_id
        handle = second.process(proc.process_id)
        out = b""
        after = 0
        while True:
            res = await handle.read(after_seq=after, wait_ms=2000)
            out += b"".join(c.chunk for c in res.chunks)
            after = res.next_seq - 1
            if res.closed:
                break
        assert out == b"later\n"
    with pytest.raises(SessionExpired):
        await ExecServerClient.connect(ws_url, resume_session_id="not-a-session")


async def test_stdio_transport_end_to_end() -> None:
    async with ExecServerClient.spawn_stdio() as client:
        result = await client.run([sys.executable, "-c", "print('via stdio')"])
        assert result.stdout == b"via stdio\n" and result.exit_code == 0
        info = await client.environment_info()
        assert info.shell_path


async def test_connect_errors_are_typed_and_clear() -> None:
    with pytest.raises(ConnectError, match="failed to connect to exec-server websocket") as info:
        await ExecServerClient.connect("ws://127.0.0.1:1")
    assert info.value.transient and isinstance(info.value, ExecServerError)
    with pytest.raises(ValueError, match="ws://"):
        ExecServerClient.connect("http://127.0.0.1:1")
    with pytest.raises(ValueError, match="environment_id"):
        ExecServerClient.connect(rendezvous="http://127.0.0.1:1")


async def test_bearer_token_is_sent_and_refusal_is_not_transient() -> None:
    server = ExecServer(ServerConfig(token="tok-1"))
    url = await server.start_websocket()
    try:
        with pytest.raises(ConnectError) as info:
            await ExecServerClient.connect(url)
        assert info.value.status == 401 and not info.value.transient
        async with ExecServerClient.connect(url, token="tok-1") as client:
            assert (await client.run(["true"])).exit_code == 0
    finally:
        await server.close()


async def test_request_timeout_leaves_the_connection_usable(client: ExecServerClient) -> None:
    proc = await client.start_process(["sleep", "30"], events=False)
    with pytest.raises(RequestTimeout) as info:
        # A long-poll that the server holds longer than we allow.
        await client.call(
            "process/read",
            {"processId": proc.process_id, "afterSeq": 0, "waitMs": 5000},
            timeout=0.2,
        )
    assert info.value.method == "process/read"
    assert (await client.run(["echo", "still here"])).stdout == b"still here\n"
    await proc.terminate()
