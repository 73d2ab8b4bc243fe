"""The frame bus's core NATS client against a real nats-server (and, for liveness, a
server that stops answering): delivery, auth, -ERR, failover, reconnects, close."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import ssl
from pathlib import Path

import pytest
from cluster_support import eventually

from exec_server.rendezvous.cluster.nats_client import (
    ClientConfig,
    CoreNatsClient,
    NatsAuthError,
    NatsBufferFull,
    NatsConnectError,
    NatsNotConnected,
)
from exec_server.rendezvous.cluster.nats_nkeys import encode_seed, nkey_public_key
from exec_server.rendezvous.cluster.nats_server import (
    EmbeddedNats,
    EmbeddedNatsConfig,
    find_nats_server,
)
from exec_server.rendezvous.cluster.nats_wire import Msg


class Inbox:
    def __init__(self) -> None:
        self.messages: list[Msg] = []

    def __call__(self, msg: Msg) -> None:
        self.messages.append(msg)

    @property
    def data(self) -> list[bytes]:
        return [m.data for m in self.messages]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def test_messages_arrive_in_order_with_headers(
    nats_server: EmbeddedNats, clients: list[CoreNatsClient]
) -> None:
    client = await CoreNatsClient.connect(ClientConfig((nats_server.url,)))
    clients.append(client)
    inbox = Inbox()
    sid = client.subscribe("t.*", inbox)
    await client.flush()
    big = bytes(range(256)) * 1024  # written in parts, not joined
    payloads = [b"", b"one", big, b"\r\n", b"x" * 5000]
    for index, payload in enumerate(payloads):
        client.publish(f"t.{index}", payload, {"Exs": f"n {index}"} if index % 2 else None)
    await eventually(lambda: len(inbox.messages) == len(payloads), "every message")
    assert inbox.data == payloads
    assert [m.headers for m in inbox.messages][:2] == [None, {"Exs": "n 1"}]
    assert client.max_payload == nats_server.config.max_payload
    client.unsubscribe(sid)
    await client.flush()
    client.publish("t.0", b"unheard")
    await client.flush()
    assert len(inbox.messages) == len(payloads)
    with pytest.raises(ValueError, match="invalid NATS subject"):
        client.publish("has space", b"")


async def test_after_read_runs_once_the_messages_of_a_read_were_handed_over(
    nats_server: EmbeddedNats, clients: list[CoreNatsClient]
) -> None:
    client = await CoreNatsClient.connect(ClientConfig((nats_server.url,)))
    clients.append(client)
    seen: list[str] = []
    client.subscribe("r.*", lambda msg: seen.append(msg.data.decode()))
    client.after_read = lambda: seen.append("read")
    await client.flush()  # its PONG is a read without messages: counted too
    seen.clear()
    for index in range(50):
        client.publish(f"r.{index}", str(index).encode())
    await eventually(lambda: "49" in seen and seen[-1] == "read", "every message, then a read")
    assert [item for item in seen if item != "read"] == [str(i) for i in range(50)]
    assert seen[0] != "read" and "read,read" not in ",".join(seen)
    client.after_read = None
    client.publish("r.x", b"x")
    await eventually(lambda: seen[-1] == "x", "the last one")


async def test_bad_credentials_are_a_clear_error_and_good_ones_work(
    clients: list[CoreNatsClient],
) -> None:
    config = EmbeddedNatsConfig(
        extra_config="authorization { users = [ {user: node, password: right} ] }",
        probe_user=("node", "right"),
    )
    async with EmbeddedNats(config) as server:
        with pytest.raises(NatsAuthError, match=r"refused the credentials.*Authorization"):
            await CoreNatsClient.connect(
                ClientConfig((server.url,), user="node", password="wrong", connect_timeout_s=10)
            )
        with pytest.raises(NatsAuthError):
            await CoreNatsClient.connect(ClientConfig((server.url,), connect_timeout_s=10))
        good = await CoreNatsClient.connect(
            ClientConfig((server.url,), user="node", password="right")
        )
        clients.append(good)
        await good.flush()
        # Credentials in the URL are used too.
        in_url = server.url.replace("nats://", "nats://node:right@")
        via_url = await CoreNatsClient.connect(ClientConfig((in_url,)))
        clients.append(via_url)
        await via_url.flush()


async def test_token_and_nkey_authentication(tmp_path: Path, clients: list[CoreNatsClient]) -> None:
    seed = encode_seed(bytes(range(1, 33)))
    public = nkey_public_key(seed)
    (tmp_path / "node.nk").write_text(seed + "\n")
    config = EmbeddedNatsConfig(
        extra_config=(
            f'authorization {{ users = [ {{nkey: "{public}"}}, {{user: p, password: p}} ] }}'
        ),
        probe_user=("p", "p"),
    )
    async with EmbeddedNats(config) as server:
        signed = await CoreNatsClient.connect(
            ClientConfig((server.url,), credentials_file=str(tmp_path / "node.nk"))
        )
        clients.append(signed)
        await signed.flush()
        other = encode_seed(bytes(32))
        (tmp_path / "other.nk").write_text(other)
        with pytest.raises(NatsAuthError):
            await CoreNatsClient.connect(
                ClientConfig((server.url,), credentials_file=str(tmp_path / "other.nk"))
            )
    # Token authentication (the embedded server's startup check speaks only user and
    # password, so this server is started bare).
    port = free_port()
    token_server = await asyncio.create_subprocess_exec(
        str(find_nats_server()),
        "-a",
        "127.0.0.1",
        "-p",
        str(port),
        "--auth",
        "s3cret",
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    url = f"nats://127.0.0.1:{port}"
    try:
        client = None
        for _ in range(300):
            try:
                client = await CoreNatsClient.connect(ClientConfig((url,), token="s3cret"))
                break
            except NatsAuthError:
                raise
            except NatsConnectError:
                await asyncio.sleep(0.05)  # not listening yet
        assert client is not None, "nats-server did not start"
        clients.append(client)
        await client.flush()
        with pytest.raises(NatsAuthError):
            await CoreNatsClient.connect(ClientConfig((url,), token="wrong"))
    finally:
        token_server.kill()
        await token_server.wait()


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key (PEM files)."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = directory / "cert.pem", directory / "key.pem"
    cert_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_file, key_file


async def test_tls_urls_and_a_tls_only_server(
    tmp_path: Path, clients: list[CoreNatsClient]
) -> None:
    cert_file, key_file = self_signed(tmp_path)
    port = free_port()
    server = await asyncio.create_subprocess_exec(
        str(find_nats_server()),
        "-a",
        "127.0.0.1",
        "-p",
        str(port),
        "--tls",
        "--tlscert",
        str(cert_file),
        "--tlskey",
        str(key_file),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    trusted = ssl.create_default_context(cafile=str(cert_file))
    try:
        client = None
        for _ in range(300):
            try:
                client = await CoreNatsClient.connect(
                    ClientConfig((f"tls://127.0.0.1:{port}",), tls=trusted)
                )
                break
            except NatsConnectError:
                await asyncio.sleep(0.05)  # not listening yet
        assert client is not None, "nats-server did not start"
        clients.append(client)
        inbox = Inbox()
        client.subscribe("secure", inbox)
        client.publish("secure", b"over tls" * 1000)
        await eventually(lambda: inbox.data == [b"over tls" * 1000], "a message over TLS")
        # A nats:// URL upgrades too when the server requires TLS.
        upgraded = await CoreNatsClient.connect(
            ClientConfig((f"nats://127.0.0.1:{port}",), tls=trusted)
        )
        clients.append(upgraded)
        await upgraded.flush()
        # An untrusted certificate fails closed.
        with pytest.raises(NatsConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            await CoreNatsClient.connect(ClientConfig((f"tls://127.0.0.1:{port}",)))
    finally:
        server.kill()
        await server.wait()


async def test_a_refused_publish_is_logged_and_the_connection_stays(
    clients: list[CoreNatsClient], caplog: pytest.LogCaptureFixture
) -> None:
    users = (
        "{user: limited, password: pw, permissions: {publish: {allow: [ok.>]}}}, "
        "{user: probe, password: pw}"
    )
    config = EmbeddedNatsConfig(
        extra_config=f"authorization {{ users = [ {users} ] }}", probe_user=("probe", "pw")
    )
    async with EmbeddedNats(config) as server:
        client = await CoreNatsClient.connect(
            ClientConfig((server.url,), user="limited", password="pw")
        )
        clients.append(client)
        inbox = Inbox()
        client.subscribe("ok.>", inbox)
        client.subscribe("forbidden", inbox)
        with caplog.at_level(logging.WARNING):
            client.publish("forbidden", b"no")
            client.publish("ok.1", b"yes")
            await eventually(lambda: inbox.data == [b"yes"], "the allowed message")
            await eventually(
                lambda: "Permissions Violation for Publish" in caplog.text, "the -ERR is logged"
            )
        await client.flush()
        assert client.is_connected and client.reconnects == 0


async def test_the_next_server_is_used_when_the_first_is_down(
    nats_server: EmbeddedNats, clients: list[CoreNatsClient]
) -> None:
    dead = f"nats://127.0.0.1:{free_port()}"
    client = await CoreNatsClient.connect(ClientConfig((dead, nats_server.url)))
    clients.append(client)
    await client.flush()
    with pytest.raises(NatsConnectError, match="could not connect to NATS"):
        await CoreNatsClient.connect(ClientConfig((dead,), connect_timeout_s=10))


async def test_a_server_restart_reconnects_and_keeps_what_was_published_meanwhile(
    nats_server: EmbeddedNats, clients: list[CoreNatsClient]
) -> None:
    events: list[str] = []
    client = await CoreNatsClient.connect(
        ClientConfig((nats_server.url,), reconnect_wait_s=0.05, pending_size=4096),
        disconnected=lambda: events.append("disconnected"),
        reconnected=lambda: events.append("reconnected"),
    )
    clients.append(client)
    inbox = Inbox()
    client.subscribe("r.>", inbox)
    await client.flush()
    await nats_server.kill()
    await eventually(lambda: not client.is_connected, "the loss is noticed")
    with pytest.raises(NatsNotConnected):
        await client.flush()
    # Published between connections: kept, in order, and written after the
    # subscription is renewed, so this client hears them itself.
    for index in range(3):
        client.publish(f"r.{index}", b"during-%d" % index)
    with pytest.raises(NatsBufferFull):
        client.publish("r.big", b"x" * 4096)
    await nats_server.restart()
    await eventually(lambda: client.is_connected, "reconnected")
    await eventually(lambda: len(inbox.messages) == 3, "the buffered messages")
    assert inbox.data == [b"during-0", b"during-1", b"during-2"]
    assert events == ["disconnected", "reconnected"] and client.reconnects == 1
    client.publish("r.after", b"after")
    await eventually(lambda: inbox.data[-1:] == [b"after"], "a message after the reconnect")


async def _silent_after_handshake(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, connections: list[int]
) -> None:
    """A server that completes the handshake and then never answers a PING."""
    connections.append(1)
    writer.write(b'INFO {"server_id":"fake","max_payload":1048576,"headers":true}\r\n')
    try:
        while line := await reader.readline():
            if (
                line == b"PING\r\n"
                and len(connections) == 1
                and not getattr(writer, "ponged", False)
            ):
                writer.ponged = True  # type: ignore[attr-defined]
                writer.write(b"PONG\r\n")
            elif line == b"PING\r\n" and len(connections) > 1:
                writer.write(b"PONG\r\n")
    finally:
        writer.close()


async def test_unanswered_pings_drop_the_connection_and_it_is_redialled(
    clients: list[CoreNatsClient],
) -> None:
    connections: list[int] = []
    server = await asyncio.start_server(
        lambda r, w: _silent_after_handshake(r, w, connections), "127.0.0.1", 0
    )
    port = server.sockets[0].getsockname()[1]
    events: list[str] = []
    try:
        client = await CoreNatsClient.connect(
            ClientConfig(
                (f"nats://127.0.0.1:{port}",),
                ping_interval_s=0.05,
                max_outstanding_pings=2,
                reconnect_wait_s=0.05,
            ),
            disconnected=lambda: events.append("disconnected"),
            reconnected=lambda: events.append("reconnected"),
        )
        clients.append(client)
        await eventually(lambda: events[:2] == ["disconnected", "reconnected"], "a redial")
        assert len(connections) >= 2
    finally:
        for client in clients:
            await client.close()
        server.close()
        await server.wait_closed()


async def test_close_leaves_nothing_running(nats_server: EmbeddedNats) -> None:
    before = {task for task in asyncio.all_tasks() if not task.done()}
    client = await CoreNatsClient.connect(ClientConfig((nats_server.url,)))
    client.subscribe("c", Inbox())
    await client.flush()
    await client.close()
    await client.close()  # idempotent
    after = {task for task in asyncio.all_tasks() if not task.done()}
    assert after <= before
    assert not client.is_connected and client.is_closed
    with pytest.raises(NatsNotConnected):
        client.publish("c", b"late")
    with pytest.raises(NatsNotConnected):
        client.subscribe("c", Inbox())


async def test_a_publish_while_the_connection_is_going_waits_for_the_next(
    nats_server: EmbeddedNats, clients: list[CoreNatsClient]
) -> None:
    """Between a dropped connection (a liveness failure, an -ERR) and its
    connection_lost, a publish goes to the reconnect buffer, not to a dead socket."""
    client = await CoreNatsClient.connect(ClientConfig((nats_server.url,), reconnect_wait_s=0.05))
    clients.append(client)
    inbox = Inbox()
    client.subscribe("going", inbox)
    await client.flush()
    conn = client._conn
    assert conn is not None
    conn.abort()
    client.publish("going", b"kept")
    with pytest.raises(NatsNotConnected):
        await client.flush()
    await eventually(lambda: inbox.data == [b"kept"], "delivered on the next connection")
    assert client.reconnects == 1
