"""deploy/: the per-node NATS users of the compose file are enough for a working cluster
(KV buckets, watches, heartbeats, frames between nodes), and the compose file names
what the README says."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
import yaml
from cluster_support import TOKEN, WAIT_S, Cluster, node_config, wait_online

from exec_server.relay.frame_codec import data_frame, decode_frame, encode_frame
from exec_server.rendezvous.cluster.nats_server import EmbeddedNats, EmbeddedNatsConfig

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
PASSWORDS = {f"n{n}": f"password-of-n{n}" for n in (1, 2, 3)}


@pytest.fixture
async def restricted_cluster(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> AsyncIterator[Cluster]:
    for node, password in PASSWORDS.items():
        monkeypatch.setenv(f"EXEC_SERVER_NATS_PASSWORD_{node.upper()}", password)
    # NATS resolves an include next to the including file: the generated config's dir.
    shutil.copy(DEPLOY / "nats-users.conf", tmp_path / "nats-users.conf")
    config = EmbeddedNatsConfig(
        work_dir=tmp_path,
        extra_config="include ./nats-users.conf",
        probe_user=("n1", PASSWORDS["n1"]),
    )
    async with EmbeddedNats(config) as server:
        cluster = Cluster(server)
        try:
            for node, password in PASSWORDS.items():
                await cluster.add_node(
                    cluster=node_config(server, node, user=node, password=password)
                )
            yield cluster
        finally:
            await cluster.close()


async def test_the_per_node_users_are_enough_for_a_cluster(restricted_cluster: Cluster) -> None:
    cluster = restricted_cluster
    async with aiohttp.ClientSession() as http:
        async with http.post(
            f"{cluster.nodes[0].base_url}/cloud/environment/env/register",
            headers={"Authorization": f"Bearer {TOKEN}"},
        ) as resp:
            environment = await http.ws_connect((await resp.json())["url"], max_msg_size=0)
        await wait_online(cluster.nodes[2], "env")
        harness = await http.ws_connect(cluster.harness_url("env", 3), max_msg_size=0)
        await harness.send_bytes(encode_frame(data_frame("s", 0, b"through n3")))
        frame = decode_frame((await environment.receive(timeout=WAIT_S)).data)
        assert frame.body is not None and frame.body.payload == b"through n3"
        await environment.send_bytes(encode_frame(data_frame("s", 0, b"back")))
        frame = decode_frame((await harness.receive(timeout=WAIT_S)).data)
        assert frame.body is not None and frame.body.payload == b"back"
        await harness.close()
        await environment.close()


def test_the_compose_file_runs_nats_and_three_nodes_with_their_users() -> None:
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    services = compose["services"]
    assert "-js" in " ".join(services["nats"]["command"]) or "nats.conf" in " ".join(
        services["nats"]["command"]
    )
    for node in ("n1", "n2", "n3"):
        command = " ".join(services[f"rendezvous-{node}"]["command"])
        assert f"--node-id {node}" in command and f"--nats-user {node}" in command
        assert "--cluster nats://nats:4222" in command
