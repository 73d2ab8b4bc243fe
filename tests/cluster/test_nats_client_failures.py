"""The frame bus's NATS client when the server misbehaves, on a scripted server
(``fake_nats``): size limits, a stalled server, refusals during a handshake, a
credentials file that goes away, TLS that is required, what logs and errors show."""

from __future__ import annotations

import asyncio
import logging
import ssl
from pathlib import Path

import pytest
from cluster_support import eventually
from fake_nats import FakeNats, Peer

from exec_server.rendezvous.cluster.nats_client import (
    ClientConfig,
    CoreNatsClient,
    NatsAuthError,
    NatsBufferFull,
    NatsClientError,
    NatsConnectError,
)
from exec_server.rendezvous.cluster.nats_nkeys import encode_seed
from exec_server.rendezvous.cluster.nats_socket import NatsSocket
from exec_server.rendezvous.cluster.nats_wire import Msg, encode_subject, header_block_start


async def test_headers_count_toward_max_payload(clients: list[CoreNatsClient]) -> None:
    """nats-server compares HPUB's total size (header block and payload) with its
    max_payload and closes the connection above it: the client refuses such a message
    itself and the connection stays."""
    published: list[tuple[str, bytes]] = []

    async def script(peer: Peer) -> None:
        await peer.handshake(max_payload=100)
        await peer.serve(published)

    async with FakeNats(script) as server:
        client = await CoreNatsClient.connect(ClientConfig((server.url,)))
        clients.append(client)
        with pytest.raises(NatsClientError, match="payload and headers"):
            client.publish("s", b"x" * 90, {"Exs": "0123456789"})
        with pytest.raises(NatsClientError, match="max_payload"):
            client.publish("s", b"x" * 101)
        client.publish("s", b"x" * 60, {"Exs": "0123456789"})
        client.publish("s", b"y" * 100)
        await client.flush()
        assert [len(body) for _, body in published] == [
            len(b"NATS/1.0\r\nExs: 0123456789\r\n\r\n") + 60,
            100,
        ]
        assert client.is_connected and client.reconnects == 0


async def test_a_message_with_an_encoded_header_is_the_same_message(
    clients: list[CoreNatsClient],
) -> None:
    """publish_with_header (the frame bus's path: subject and header block encoded
    once) puts on the wire what publish does, small or large, and is refused above
    max_payload the same way."""
    published: list[tuple[str, bytes]] = []

    async def script(peer: Peer) -> None:
        await peer.handshake(max_payload=64 * 1024)
        await peer.serve(published)

    async with FakeNats(script) as server:
        client = await CoreNatsClient.connect(ClientConfig((server.url,)))
        clients.append(client)
        subject = encode_subject("bus.frames.n1.n2")
        start = header_block_start("Exs", "env h inc 1 ")
        for seq, size in ((7, 10), (8, 20_000), (9, 0)):
            payload = bytes([seq]) * size
            client.publish("bus.frames.n1.n2", payload, {"Exs": f"env h inc 1 {seq}"})
            client.publish_with_header(subject, start + b"%d\r\n\r\n" % seq, payload)
        with pytest.raises(NatsClientError, match="payload and headers"):
            client.publish_with_header(subject, start + b"1\r\n\r\n", b"x" * 64 * 1024)
        await client.flush()
        assert len(published) == 6
        assert published[0::2] == published[1::2]
        assert published[2] == (
            "bus.frames.n1.n2",
            b"NATS/1.0\r\nExs: env h inc 1 8\r\n\r\n" + bytes([8]) * 20_000,
        )
        assert client.is_connected and client.reconnects == 0
    with pytest.raises(ValueError, match="line break"):
        header_block_start("Exs", "env\r\nX: y")
    with pytest.raises(ValueError, match="invalid NATS subject"):
        encode_subject("bus frames")


async def test_a_server_that_stops_reading_bounds_what_publishers_buffer(
    clients: list[CoreNatsClient],
) -> None:
    """Publishers get NatsBufferFull once the socket holds ``pending_size``; the
    buffered bytes never pass it (the bus loses the channel, flow control retries)."""
    reading = asyncio.Event()

    async def script(peer: Peer) -> None:
        await peer.handshake()
        await reading.wait()  # never reads again: the kernel buffers fill, then ours

    pending_size = 1024 * 1024
    async with FakeNats(script) as server:
        client = await CoreNatsClient.connect(
            ClientConfig((server.url,), pending_size=pending_size)
        )
        clients.append(client)
        conn = client._conn
        assert conn is not None
        chunk = b"z" * 60_000
        refused = 0
        for _ in range(2_000):
            try:
                client.publish("stall", chunk)
            except NatsBufferFull:
                refused += 1
                await asyncio.sleep(0.01)  # the kernel takes what it can meanwhile
                if refused >= 20:
                    break
            assert conn.buffered() <= pending_size
            await asyncio.sleep(0)
        assert refused >= 20, "the buffer never filled"
        assert client.is_connected


async def test_an_error_before_the_handshake_ends_is_the_error_reported(
    clients: list[CoreNatsClient],
) -> None:
    """A server that sends INFO and then -ERR and closes (too many connections) fails
    the connect with its reason, not with a bare 'connection lost'."""

    async def script(peer: Peer) -> None:
        peer.info()
        peer.send(b"-ERR 'maximum connections exceeded'\r\n")
        await peer.writer.drain()

    async with FakeNats(script) as server:
        with pytest.raises(NatsConnectError, match="maximum connections exceeded"):
            await CoreNatsClient.connect(ClientConfig((server.url,), connect_timeout_s=30))


async def test_reconnect_failures_are_warned_once_and_kept(
    clients: list[CoreNatsClient], caplog: pytest.LogCaptureFixture
) -> None:
    """While reconnecting, a server that keeps refusing is logged as a warning (once
    for the same reason, not per attempt) and shown in ``last_error``."""

    async def script(peer: Peer) -> None:
        if peer.index == 0:
            await peer.handshake()
            return  # then the connection drops
        peer.info()
        peer.send(b"-ERR 'maximum connections exceeded'\r\n")
        await peer.writer.drain()

    async with FakeNats(script) as server:
        with caplog.at_level(logging.DEBUG, logger="exec_server.rendezvous.cluster"):
            client = await CoreNatsClient.connect(
                ClientConfig((server.url,), reconnect_wait_s=0.01)
            )
            clients.append(client)
            await eventually(lambda: len(server.peers) >= 5, "several reconnect attempts")
            await eventually(lambda: client.last_error is not None, "the failure is kept")
        warnings = [
            r
            for r in caplog.records
            if r.levelno == logging.WARNING and "maximum connections exceeded" in r.getMessage()
        ]
        assert len(warnings) == 1, [r.getMessage() for r in warnings]
        assert "maximum connections exceeded" in (client.last_error or "")
        assert not client.is_connected


async def test_a_credentials_file_that_goes_away_does_not_end_reconnecting(
    tmp_path: Path, clients: list[CoreNatsClient]
) -> None:
    """The .creds file is read at every connection; unreadable for a while, the
    reconnects fail (and say why) and go on, and succeed once it is back."""
    creds = tmp_path / "node.nk"
    creds.write_text(encode_seed(bytes(range(32))) + "\n")

    async def script(peer: Peer) -> None:
        await peer.handshake(nonce="abc", auth_required=True)
        assert peer.connect is not None and peer.connect["sig"]
        if peer.index > 0:
            await peer.serve()

    async with FakeNats(script) as server:
        client = await CoreNatsClient.connect(
            ClientConfig((server.url,), credentials_file=str(creds), reconnect_wait_s=0.01)
        )
        clients.append(client)
        saved = creds.read_text()
        creds.unlink()
        await eventually(lambda: len(server.peers) >= 4, "reconnects without the file")
        assert not client.is_connected
        creds.write_text(saved)
        await eventually(lambda: client.is_connected and client.reconnects == 1, "reconnected")
        await client.flush()


async def test_tls_is_required_when_configured_and_a_plain_server_is_refused(
    clients: list[CoreNatsClient],
) -> None:
    """With a CA configured (``tls_required``), or a tls:// URL, a server that offers
    no TLS is refused with a clear error, never used in plain text."""

    async def script(peer: Peer) -> None:
        await peer.handshake()
        await peer.serve()

    async with FakeNats(script) as server:
        context = ssl.create_default_context()
        with pytest.raises(NatsConnectError, match="does not offer TLS"):
            await CoreNatsClient.connect(
                ClientConfig((server.url,), tls=context, tls_required=True)
            )
        with pytest.raises(NatsConnectError, match="does not offer TLS"):
            await CoreNatsClient.connect(ClientConfig((server.url.replace("nats://", "tls://"),)))
        assert all(peer.connect is None for peer in server.peers), "CONNECT sent in clear"


async def test_credentials_in_a_url_never_reach_an_error_message() -> None:
    async def script(peer: Peer) -> None:
        peer.info()
        peer.send(b"-ERR 'Authorization Violation'\r\n")
        await peer.writer.drain()

    async with FakeNats(script) as server:
        url = server.url.replace("nats://", "nats://node:s3cret-pw@")
        with pytest.raises(NatsConnectError) as raised:
            await CoreNatsClient.connect(ClientConfig((url,)))
        assert "s3cret-pw" not in str(raised.value)
        assert "127.0.0.1" in str(raised.value)


async def test_close_during_a_reconnect_handshake_leaves_no_socket(
    clients: list[CoreNatsClient],
) -> None:
    """close() while a redial waits for a server's INFO cancels the handshake and
    closes that socket too (as well as any earlier one)."""
    made: list[NatsSocket] = []

    async def script(peer: Peer) -> None:
        if peer.index == 0:
            await peer.handshake()
            return
        await asyncio.Event().wait()  # accepts, never says INFO

    async with FakeNats(script) as server:
        client = CoreNatsClient(ClientConfig((server.url,), reconnect_wait_s=0.01))
        original = client._new_socket

        def recording() -> NatsSocket:
            made.append(original())
            return made[-1]

        client._new_socket = recording  # type: ignore[method-assign]
        client._conn = await client._open(client._addresses[0])
        client._tasks.append(asyncio.ensure_future(client._supervise()))
        await eventually(lambda: len(made) >= 2, "a redial under way")
        await client.close()
        for _ in range(3):
            await asyncio.sleep(0)
        assert all(s.lost.done() and s.transport is not None for s in made)
        assert all(s.transport is not None and s.transport.is_closing() for s in made)


async def test_a_subscriber_that_raises_does_not_stop_the_read(
    caplog: pytest.LogCaptureFixture,
) -> None:
    seen: list[bytes] = []

    def subscriber(msg: Msg) -> None:
        seen.append(msg.data)
        if msg.data == b"bad":
            raise RuntimeError("a bug in the subscriber")

    socket = NatsSocket(
        "t", {1: ("s", subscriber)}, lambda info: None, lambda s: None, lambda r: None
    )
    with caplog.at_level(logging.ERROR):
        socket.data_received(b"MSG s 1 3\r\nbad\r\nMSG s 1 4\r\ngood\r\nMSG s 2 1\r\nx\r\n")
    assert seen == [b"bad", b"good"]
    assert "a subscriber of s failed" in caplog.text and "a bug in the subscriber" in caplog.text


async def test_a_subscriber_learns_whether_its_message_ends_the_read() -> None:
    """last_in_read is true for the read's last event only (a frame's output can be
    written at once then); after_read runs once the read's events are handled."""
    seen: list[tuple[bytes, bool]] = []
    reads: list[int] = []
    socket: NatsSocket

    def subscriber(msg: Msg) -> None:
        seen.append((msg.data, socket.last_in_read))

    socket = NatsSocket(
        "t",
        {1: ("s", subscriber)},
        lambda info: None,
        lambda s: None,
        lambda r: None,
        lambda: reads.append(len(seen)),
    )
    socket.data_received(b"MSG s 1 1\r\na\r\nMSG s 1 1\r\nb\r\n")
    socket.data_received(b"MSG s 1 1\r\nc\r\nPING\r\n")  # a PING ends this read
    socket.data_received(b"MSG s 1 1\r\nd\r\n")
    socket.data_received(b"MSG s 1 1\r\ne")  # incomplete: no event, no after_read
    assert seen == [(b"a", False), (b"b", True), (b"c", False), (b"d", True)]
    assert reads == [2, 3, 4]


async def test_an_error_that_ends_a_ready_connection_is_redialled_and_kept(
    clients: list[CoreNatsClient],
) -> None:
    """-ERR 'Slow Consumer' (the server closes after it): the client drops the
    connection at once, says why in ``last_error``, and redials."""

    async def script(peer: Peer) -> None:
        await peer.handshake()
        if peer.index == 0:
            await peer.reader.readline()  # the client's first write after the handshake
            peer.send(b"-ERR 'Slow Consumer'\r\n")
            await peer.writer.drain()
            await asyncio.Event().wait()  # the client, not the server, ends it
        await peer.serve()

    async with FakeNats(script) as server:
        events: list[str] = []
        client = await CoreNatsClient.connect(
            ClientConfig((server.url,), reconnect_wait_s=0.01),
            disconnected=lambda: events.append(f"disconnected: {client.last_error}"),
            reconnected=lambda: events.append("reconnected"),
        )
        clients.append(client)
        client.publish("x", b"1")
        await eventually(lambda: len(events) == 2, "a redial")
        assert events == ["disconnected: NATS error: Slow Consumer", "reconnected"]
        await client.flush()


async def test_a_server_that_wants_credentials_we_lack_says_so() -> None:
    async def script(peer: Peer) -> None:
        peer.info(auth_required=True)
        await peer.reader.readline()  # CONNECT, without credentials
        peer.send(b"-ERR 'Authorization Violation'\r\n")
        await peer.writer.drain()

    async with FakeNats(script) as server:
        with pytest.raises(NatsAuthError, match="requires credentials and none are configured"):
            await CoreNatsClient.connect(ClientConfig((server.url,)))


def test_a_tls_context_that_does_not_verify_is_refused() -> None:
    lax = ssl.create_default_context()
    lax.check_hostname = False
    with pytest.raises(ValueError, match="must verify"):
        ClientConfig(("tls://127.0.0.1:4222",), tls=lax)
    lax.verify_mode = ssl.CERT_NONE
    with pytest.raises(ValueError, match="must verify"):
        ClientConfig(("tls://127.0.0.1:4222",), tls=lax)


async def test_a_server_without_header_support_is_refused_at_connect() -> None:
    """Every frame is an HPUB: a server without headers would answer each with an
    error and close; it is refused with a clear reason before CONNECT instead."""

    async def script(peer: Peer) -> None:
        peer.info(headers=False)
        await peer.reader.readline()

    async with FakeNats(script) as server:
        with pytest.raises(NatsConnectError, match="does not support message headers"):
            await CoreNatsClient.connect(ClientConfig((server.url,)))


async def test_flushes_in_flight_do_not_count_as_unanswered_liveness_pings(
    clients: list[CoreNatsClient],
) -> None:
    """A liveness tick drops the connection after ``max_outstanding_pings`` of its own
    PINGs went unanswered, not because flushes sent just before it are still waiting."""
    answer = asyncio.Event()

    async def script(peer: Peer) -> None:
        await peer.handshake()
        await answer.wait()
        await peer.serve()

    async with FakeNats(script) as server:
        client = await CoreNatsClient.connect(
            ClientConfig((server.url,), ping_interval_s=3600, max_outstanding_pings=2)
        )
        clients.append(client)
        conn = client._conn
        assert conn is not None
        flushes = [asyncio.ensure_future(client.flush(timeout_s=60)) for _ in range(3)]
        await asyncio.sleep(0)
        client._check_liveness(conn)  # 3 flushes waiting, no liveness PING yet
        assert not conn.closing
        client._check_liveness(conn)  # one liveness PING unanswered
        assert not conn.closing
        client._check_liveness(conn)  # two: the server is gone
        assert conn.closing
        await asyncio.gather(*flushes, return_exceptions=True)
        answer.set()
        await eventually(lambda: client.is_connected and client.reconnects == 1, "redialled")


async def test_after_read_set_during_a_reconnect_handshake_runs_on_the_new_connection(
    clients: list[CoreNatsClient],
) -> None:
    """The frame bus sets ``after_read`` once; a redial whose socket was made before it
    was set (no connection to hand it to) still runs it once ready."""
    drop = asyncio.Event()
    gate = asyncio.Event()

    async def script(peer: Peer) -> None:
        if peer.index == 0:
            await peer.handshake()
            await drop.wait()
            return
        await gate.wait()
        await peer.handshake()
        await peer.serve()

    async with FakeNats(script) as server:
        client = await CoreNatsClient.connect(ClientConfig((server.url,), reconnect_wait_s=0.01))
        clients.append(client)
        drop.set()
        await eventually(lambda: len(server.peers) >= 2, "a redial under way")
        reads: list[int] = []
        client.after_read = lambda: reads.append(1)
        gate.set()
        await eventually(lambda: client.reconnects == 1, "reconnected")
        await client.flush()  # its PONG is a read
        assert reads
