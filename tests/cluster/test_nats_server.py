"""The embedded nats-server: found, started on a free port with JetStream, restarted, stopped."""

from __future__ import annotations

import os
from pathlib import Path

import nats
import pytest

from exec_server.rendezvous.cluster.nats_server import (
    NATS_SERVER_ENV,
    EmbeddedNats,
    EmbeddedNatsConfig,
    NatsServerError,
    find_nats_server,
)


def test_the_wheel_provides_the_binary() -> None:
    path = find_nats_server({})
    assert path.name == "nats-server"
    assert os.access(path, os.X_OK)


def test_an_explicit_path_must_be_executable(tmp_path: Path) -> None:
    missing = tmp_path / "nats-server"
    with pytest.raises(NatsServerError, match=NATS_SERVER_ENV):
        find_nats_server({NATS_SERVER_ENV: str(missing)})


async def test_two_servers_get_distinct_ports_and_jetstream() -> None:
    async with EmbeddedNats() as first, EmbeddedNats() as second:
        assert first.port != second.port
        for server in (first, second):
            nc = await nats.connect(server.url)
            try:
                assert nc.max_payload == 8 * 1024 * 1024
                info = await nc.jetstream().account_info()
                assert info.streams == 0
            finally:
                await nc.close()
        work_dir = first.work_dir
    assert not work_dir.exists()


async def test_restart_keeps_the_port_and_the_jetstream_store() -> None:
    async with EmbeddedNats() as server:
        nc = await nats.connect(server.url)
        kv = await nc.jetstream().create_key_value(bucket="probe")
        await kv.put("k", b"v")
        await nc.close()
        port = server.port
        await server.kill()
        assert not server.running
        await server.restart()
        assert server.port == port
        nc = await nats.connect(server.url)
        try:
            kv = await nc.jetstream().key_value("probe")
            assert (await kv.get("k")).value == b"v"
        finally:
            await nc.close()


async def test_a_bad_config_fails_with_the_log_tail(tmp_path: Path) -> None:
    server = EmbeddedNats(EmbeddedNatsConfig(host="not an address", startup_timeout_s=10))
    with pytest.raises(NatsServerError, match="log ends with"):
        await server.start()
    assert not server.running
