"""One port, two servers: the registry's HTTP routes (aiohttp) and the relay websockets
(picows), as :mod:`exec_server.rendezvous.port` splits them."""

from __future__ import annotations

import asyncio

import aiohttp
import picows
import pytest
from rendezvous_support import (
    TOKEN,
    WAIT_S,
    MakeRendezvous,
    auth,
    client_frame,
    data,
    dial,
    harness_url,
    recv_bytes,
    register,
    resume,
    scrape,
    upgrade_request,
    wait_for,
)

from exec_server.rendezvous import RendezvousConfig, RendezvousServer
from exec_server.rendezvous.port import is_relay_upgrade

ENV = "env-port"


@pytest.mark.parametrize(
    ("head", "expected"),
    [
        (b"GET /relay/e?x=1 HTTP/1.1\r\nHost: h\r\nUpgrade: websocket", True),
        (b"GET /relay/e HTTP/1.1\r\nupgrade:  WebSocket \r\nConnection: Upgrade", True),
        (b"GET /relay/e HTTP/1.1\r\nHost: h", False),  # a plain GET: aiohttp answers it
        (b"GET /relay/e HTTP/1.1\r\nUpgrade: h2c", False),
        (b"POST /relay/e HTTP/1.1\r\nUpgrade: websocket", False),
        (b"GET /metrics HTTP/1.1\r\nUpgrade: websocket", False),
        (b"GET /relayx/e HTTP/1.1\r\nUpgrade: websocket", False),
    ],
)
def test_only_relay_upgrades_go_to_the_websocket_server(head: bytes, expected: bool) -> None:
    assert is_relay_upgrade(head) is expected


async def test_one_client_session_registers_and_dials_on_the_same_port(
    make_rendezvous: MakeRendezvous,
) -> None:
    """A client that pools connections (aiohttp's) never sends an upgrade on a
    connection the registry has served: every registry answer closes its connection."""
    server = await make_rendezvous()
    async with aiohttp.ClientSession() as http:
        for _ in range(2):
            async with http.get(f"{server.base_url}/readyz") as resp:
                assert resp.status == 200
                assert resp.headers["Connection"] == "close"
            env_url = await register(http, server.base_url, ENV)
            env = await dial(http, env_url)
            harness = await dial(http, await harness_url(http, server.base_url, ENV))
            await harness.send_bytes(resume("s-1"))
            await recv_bytes(env)
            await harness.close()
            await env.close()


class _Client(picows.WSListener):
    def __init__(self) -> None:
        super().__init__()
        self.messages: asyncio.Queue[tuple[picows.WSMsgType, bytes]] = asyncio.Queue()

    def on_ws_frame(self, transport: picows.WSTransport, frame: picows.WSFrame) -> None:
        self.messages.put_nowait((frame.msg_type, frame.get_payload_as_bytes()))


async def _picows_dial(url: str) -> tuple[picows.WSTransport, _Client]:
    transport, client = await asyncio.wait_for(picows.ws_connect(_Client, url), WAIT_S)
    assert isinstance(client, _Client)
    return transport, client


async def test_a_fragmented_message_is_reassembled_before_routing(
    make_rendezvous: MakeRendezvous, http: aiohttp.ClientSession
) -> None:
    server = await make_rendezvous()
    env = await dial(http, await register(http, server.base_url, ENV))
    transport, _ = await _picows_dial(await harness_url(http, server.base_url, ENV))
    try:
        frame = data("s-frag", 1, b"z" * 50_000)
        transport.send(picows.WSMsgType.BINARY, frame[:7], fin=False)
        transport.send(picows.WSMsgType.CONTINUATION, frame[7:30_000], fin=False)
        transport.send(picows.WSMsgType.CONTINUATION, frame[30_000:], fin=True)
        assert await recv_bytes(env) == frame
    finally:
        transport.disconnect()


async def test_a_continuation_without_a_message_closes_with_1002(
    make_rendezvous: MakeRendezvous, http: aiohttp.ClientSession
) -> None:
    server = await make_rendezvous()
    await register(http, server.base_url, ENV)
    transport, client = await _picows_dial(await harness_url(http, server.base_url, ENV))
    transport.send(picows.WSMsgType.CONTINUATION, b"orphan", fin=True)
    kind, payload = await asyncio.wait_for(client.messages.get(), WAIT_S)
    assert kind is picows.WSMsgType.CLOSE
    assert int.from_bytes(payload[:2], "big") == 1002
    transport.disconnect()
    await wait_for(lambda: server.router.stats.protocol_errors["undecodable"] == 1)


async def test_a_message_far_over_the_limit_is_refused_from_its_header(
    make_rendezvous: MakeRendezvous, http: aiohttp.ClientSession
) -> None:
    """A frame over ``max_message_bytes`` is refused before its payload is read: a 1009
    close, counted as oversize."""
    server = await make_rendezvous(max_message_bytes=16 * 1024)
    await register(http, server.base_url, ENV)
    transport, client = await _picows_dial(await harness_url(http, server.base_url, ENV))
    # One byte over the limit, and only the header sent: the refusal cannot wait for it.
    transport.underlying_transport.write(client_frame(b"x" * (16 * 1024 + 1))[:8])
    kind, payload = await asyncio.wait_for(client.messages.get(), WAIT_S)
    assert kind is picows.WSMsgType.CLOSE
    assert int.from_bytes(payload[:2], "big") == 1009
    transport.disconnect()
    await wait_for(lambda: server.router.stats.protocol_errors["oversize"] == 1)
    samples = await scrape(http, server.base_url)
    assert samples['exec_server_rendezvous_protocol_errors_total{reason="oversize"}'] == 1


async def test_a_frame_the_websocket_parser_refuses_is_a_counted_1002(
    make_rendezvous: MakeRendezvous, http: aiohttp.ClientSession
) -> None:
    """A frame the websocket parser refuses (here a reserved opcode) closes with 1002
    and is counted as undecodable, as the frames the router refuses are."""
    server = await make_rendezvous()
    await register(http, server.base_url, ENV)
    transport, client = await _picows_dial(await harness_url(http, server.base_url, ENV))
    # FIN + opcode 0x3 (reserved), masked, empty payload: written raw, past picows' API.
    transport.underlying_transport.write(bytes([0x83, 0x80, 1, 2, 3, 4]))
    kind, payload = await asyncio.wait_for(client.messages.get(), WAIT_S)
    assert kind is picows.WSMsgType.CLOSE
    assert int.from_bytes(payload[:2], "big") == 1002
    transport.disconnect()
    await wait_for(lambda: server.router.stats.protocol_errors["undecodable"] == 1)


async def test_an_unknown_relay_path_is_404_and_the_port_keeps_serving(
    make_rendezvous: MakeRendezvous, http: aiohttp.ClientSession
) -> None:
    server = await make_rendezvous()
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await dial(http, f"{server.base_url}/relay/a/b?role=harness")
    assert refused.value.status == 404
    async with http.get(f"{server.base_url}/cloud/environments", headers=auth()) as resp:
        assert resp.status == 200


def test_the_shared_port_works_on_uvloop() -> None:
    """``exec-server rendezvous`` runs on uvloop, whose transports hand a connection
    from the splitter to picows (a buffered protocol) and write with writev as well."""
    uvloop = pytest.importorskip("uvloop", reason="uvloop has no wheel for this platform")

    async def scenario() -> None:
        assert isinstance(asyncio.get_running_loop(), uvloop.Loop)
        server = RendezvousServer(RendezvousConfig(token=TOKEN, ping_interval_s=None))
        await server.start("127.0.0.1", 0)
        try:
            async with aiohttp.ClientSession() as http:
                env = await dial(http, await register(http, server.base_url, ENV))
                harness = await dial(http, await harness_url(http, server.base_url, ENV))
                await harness.send_bytes(resume("s-uv"))
                await recv_bytes(env)
                frames = [
                    data("s-uv", seq, b"u" * size) for seq, size in enumerate((9, 9000, 3 << 20))
                ]
                for frame in frames:
                    await env.send_bytes(frame)
                for frame in frames:
                    assert await recv_bytes(harness) == frame
        finally:
            await server.close()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(scenario())


async def _http_exchange(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes
) -> tuple[bytes, bytes]:
    """Send one request on a raw connection; return (head, body) of its answer."""
    writer.write(request)
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), WAIT_S)
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    body = await asyncio.wait_for(reader.readexactly(length), WAIT_S)
    return head, body


async def test_validate_keeps_its_connection_and_a_late_upgrade_is_refused_clearly(
    make_rendezvous: MakeRendezvous,
) -> None:
    """/validate is on every Noise handshake's critical path: its connection stays open
    (no TCP handshake per validation). A relay upgrade sent after it on the same
    connection cannot reach the websocket server and gets a clear 400."""
    relay_url, host_port, host, port = await _harness_address(await make_rendezvous())
    reader, writer = await asyncio.open_connection(host, port)
    try:
        body = b'{"executor_registration_id":"x","harness_public_key":"y"}'
        validate = (
            f"POST /cloud/environment/{ENV}/validate HTTP/1.1\r\nHost: {host_port}\r\n"
            f"Authorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\n"
            f"x-codex-noise-stream-id: s-1\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode() + body
        for _ in range(2):  # the second one proves the connection was kept
            head, _answer = await _http_exchange(reader, writer, validate)
            assert head.startswith(b"HTTP/1.1 "), head
            assert b"connection: close" not in head.lower()
        upgrade = upgrade_request(relay_url, host_port)
        head, answer = await _http_exchange(reader, writer, upgrade)
        assert head.startswith(b"HTTP/1.1 400 "), head
        assert b"upgrade_not_first" in answer
        assert b"must be the first request of its connection" in answer
    finally:
        writer.close()
        await writer.wait_closed()


async def test_frames_sent_with_the_upgrade_request_are_read_in_order(
    make_rendezvous: MakeRendezvous,
) -> None:
    """A client may write frames right behind its upgrade request, without waiting for
    the 101: picows answers the request, and the frames that came in the same read
    reach the relay socket's reader, none lost or reordered."""
    server = await make_rendezvous()
    async with aiohttp.ClientSession() as http:
        env = await dial(http, await register(http, server.base_url, ENV))
        relay_url = await harness_url(http, server.base_url, ENV)
        host_port = server.base_url.split("://", 1)[1]
        host, _, port = host_port.partition(":")
        upgrade = upgrade_request(relay_url, host_port)
        frames = [resume("s-pipe")] + [
            data("s-pipe", seq, bytes([seq]) * size)
            for seq, size in enumerate((1, 200, 70_000, 5), start=1)
        ]
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            writer.write(upgrade + b"".join(client_frame(frame) for frame in frames))
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), WAIT_S)
            assert head.startswith(b"HTTP/1.1 101 "), head
            for frame in frames:
                assert await recv_bytes(env) == frame
        finally:
            writer.close()
            await writer.wait_closed()
            await env.close()


async def test_a_refused_upgrade_reads_nothing_behind_its_request(
    make_rendezvous: MakeRendezvous,
) -> None:
    """Frames written behind an upgrade request that is refused are never read as
    frames: the client gets the refusal and the end of the connection, nothing more."""
    relay_url, host_port, host, port = await _harness_address(await make_rendezvous())
    forged = relay_url.replace("sig=", "sig=x")
    reader, writer = await asyncio.open_connection(host, port)
    try:
        frames = client_frame(data("s-refused", 1, b"x" * 100)) + client_frame(b"", 0x89)
        writer.write(upgrade_request(forged, host_port) + frames)
        answer = await asyncio.wait_for(reader.read(), WAIT_S)
    finally:
        writer.close()
        await writer.wait_closed()
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 401 "), head
    assert body.startswith(b'{"error": ') and body.endswith(b"}"), body


async def _harness_address(server: RendezvousServer) -> tuple[str, str, str, int]:
    """A harness URL of a registered environment, and where to dial it by hand:
    ``(relay URL, "host:port", host, port)``."""
    async with aiohttp.ClientSession() as http:
        await register(http, server.base_url, ENV)
        relay_url = await harness_url(http, server.base_url, ENV)
    host_port = server.base_url.split("://", 1)[1]
    host, _, port = host_port.partition(":")
    return relay_url, host_port, host, int(port)
