"""Three rendezvous nodes on one NATS, in this process: the environment on n1, harnesses
on n2 and n3; every RPC, 1,000 streams over the nodes, forged frames, the registry on
any node, and NATS restarted mid-run."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import aiohttp
import nats
import pytest
from cluster_support import TOKEN, WAIT_S, Cluster, eventually, wait_online

from exec_server.client import ExecServerClient, OutputEvent
from exec_server.relay.frame_codec import (
    RELIABLE_CAPABILITY_BIT,
    data_frame,
    decode_frame,
    encode_frame,
)
from exec_server.relay.noise import NoiseIdentity
from exec_server.rendezvous.cluster.nats_bus import HEADER
from exec_server.rendezvous.cluster_router import ClusterRouter
from exec_server.rendezvous.router import DropReason

AUTH = {"Authorization": f"Bearer {TOKEN}"}


def cluster_router(cluster: Cluster, node: int) -> ClusterRouter:
    router = cluster.nodes[node - 1].router
    assert isinstance(router, ClusterRouter)
    return router


async def test_every_rpc_with_the_environment_on_n1_and_harnesses_on_n2_and_n3(
    cluster: Cluster, tmp_path: Path
) -> None:
    await cluster.start_environment("env", 1)
    await wait_online(cluster.nodes[1], "env")
    # Each asks its own node for an end-to-end encrypted connection: the bundle comes
    # from n2 (or n3), the environment on n1 has n1 validate the harness key.
    async with (
        ExecServerClient.connect(
            rendezvous=cluster.nodes[1].base_url, environment_id="env", token=TOKEN
        ) as on_n2,
        ExecServerClient.connect(
            rendezvous=cluster.nodes[2].base_url, environment_id="env", token=TOKEN
        ) as on_n3,
    ):
        assert (await on_n2.environment_info()).shell_path
        proc = await on_n2.start_process(["/bin/sh", "-c", "echo out; echo err >&2; exit 7"])
        result = await proc.collect()
        assert (result.stdout, result.stderr, result.exit_code) == (b"out\n", b"err\n", 7)
        assert (await proc.read()).exit_code == 7

        cat = await on_n3.start_process(["cat"], pipe_stdin=True)
        assert await cat.write(b"piped") == "accepted"
        assert await cat.close_stdin() == "accepted"
        assert (await cat.collect()).stdout == b"piped"

        pty = await on_n2.start_process(
            ["/bin/sh", "-c", "read x; stty size; echo got:$x"], tty=True, rows=30, cols=90
        )
        await pty.resize(33, 101)
        await pty.write(b"line\n")
        out = (await pty.collect()).pty
        assert b"33 101" in out and b"got:line" in out

        trap = await on_n3.start_process(
            ["/bin/sh", "-c", "trap 'exit 9' INT; echo ready; while :; do sleep 0.05; done"]
        )
        assert isinstance(await trap.next_event(), OutputEvent)
        await trap.signal("interrupt")
        assert (await trap.collect()).exit_code == 9
        sleeper = await on_n2.start_process(["sleep", "30"])
        assert await sleeper.terminate() is True
        await sleeper.wait()

        base = tmp_path / "fs"
        await on_n3.fs.create_directory(str(base / "a"))
        payload = os.urandom(9 * 1024 * 1024 + 17)  # above the embedded NATS max_payload
        await on_n3.fs.write_file(str(base / "a" / "f.bin"), payload)
        assert await on_n2.fs.read_file(str(base / "a" / "f.bin")) == payload
        meta = await on_n2.fs.get_metadata(str(base / "a" / "f.bin"))
        assert meta.is_file and meta.size == len(payload)
        assert [e.file_name for e in await on_n3.fs.read_directory(str(base))] == ["a"]
        await on_n2.fs.copy(str(base / "a"), str(base / "b"), recursive=True)
        assert (await on_n3.fs.checksum(str(base / "b" / "f.bin"))).size == len(payload)
        await on_n3.fs.remove(str(base / "a"))
        assert not (base / "a").exists()
    for node in (2, 3):
        router = cluster_router(cluster, node)
        assert router.cluster_stats.claims["created"] >= 1
        assert not router.cluster_stats.refused
    assert not cluster_router(cluster, 1).cluster_stats.refused


async def _register_raw_environment(
    http: aiohttp.ClientSession, cluster: Cluster, environment_id: str, node: int
) -> aiohttp.ClientWebSocketResponse:
    async with http.post(
        f"{cluster.nodes[node - 1].base_url}/cloud/environment/{environment_id}/register",
        headers=AUTH,
    ) as resp:
        assert resp.status == 200, await resp.text()
        url = (await resp.json())["url"]
    return await http.ws_connect(url, max_msg_size=0)


async def _echo(ws: aiohttp.ClientWebSocketResponse) -> None:
    """A minimal environment: answers every data frame on its stream."""
    async for msg in ws:
        if msg.type is not aiohttp.WSMsgType.BINARY:
            break
        frame = decode_frame(msg.data)
        if frame.body is not None and frame.body.kind == "data":
            reply = data_frame(
                frame.stream_id,
                frame.body.seq,
                b"echo:" + frame.body.payload,
                ack_bits=frame.ack_bits & RELIABLE_CAPABILITY_BIT,
            )
            await ws.send_bytes(encode_frame(reply))


async def test_a_thousand_streams_spread_over_the_nodes(cluster: Cluster) -> None:
    async with aiohttp.ClientSession() as http:
        environment = await _register_raw_environment(http, cluster, "many", 1)
        echo = asyncio.ensure_future(_echo(environment))
        try:
            await wait_online(cluster.nodes[2], "many")
            harnesses = [
                await http.ws_connect(cluster.harness_url("many", node), max_msg_size=0)
                for node in (1, 2, 3)
            ]
            streams = {f"stream-{i}": harnesses[i % 3] for i in range(1000)}
            for index, (stream_id, ws) in enumerate(streams.items()):
                flag = RELIABLE_CAPABILITY_BIT if index % 2 else 0  # reliable and legacy
                frame = data_frame(stream_id, 0, stream_id.encode(), ack_bits=flag)
                await ws.send_bytes(encode_frame(frame))
            answers: dict[str, bytes] = {}

            async def collect(ws: aiohttp.ClientWebSocketResponse, expected: int) -> None:
                while sum(1 for s in answers if streams[s] is ws) < expected:
                    msg = await ws.receive(timeout=WAIT_S)
                    frame = decode_frame(msg.data)
                    assert frame.body is not None and frame.body.kind == "data", frame
                    answers[frame.stream_id] = frame.body.payload

            await asyncio.gather(
                *(collect(ws, sum(1 for w in streams.values() if w is ws)) for ws in harnesses)
            )
            assert answers == {s: b"echo:" + s.encode() for s in streams}
            environments = await _list(http, cluster, 2)
            assert environments["many"]["streams"] == 1000
            for ws in harnesses:
                await ws.close()
        finally:
            echo.cancel()
            await environment.close()
    for node in (2, 3):
        assert cluster_router(cluster, node).cluster_stats.claims["created"] >= 333
    assert not any(cluster_router(cluster, n).cluster_stats.refused for n in (1, 2, 3))


async def test_streams_past_the_bus_window_flow_both_ways_in_order(cluster: Cluster) -> None:
    """Legacy frames (never dropped) well past the frame bus's 4 MiB credit window, each
    way: the sender waits for credit, nothing is lost, reordered or stuck."""
    count, size = 2500, 3000
    async with aiohttp.ClientSession() as http:
        environment = await _register_raw_environment(http, cluster, "bulk", 1)
        await wait_online(cluster.nodes[1], "bulk")
        harness = await http.ws_connect(cluster.harness_url("bulk", 2), max_msg_size=0)

        async def send(ws: aiohttp.ClientWebSocketResponse, stream_id: str) -> None:
            for seq in range(count):
                payload = seq.to_bytes(4, "big") * (size // 4)
                await ws.send_bytes(encode_frame(data_frame(stream_id, seq, payload)))

        async def receive(ws: aiohttp.ClientWebSocketResponse) -> list[int]:
            seqs = []
            while len(seqs) < count:
                frame = decode_frame((await ws.receive(timeout=WAIT_S)).data)
                assert frame.body is not None and frame.body.kind == "data"
                seqs.append(int.from_bytes(frame.body.payload[:4], "big"))
            return seqs

        _, upstream = await asyncio.gather(send(harness, "up"), receive(environment))
        assert upstream == list(range(count))
        _, downstream = await asyncio.gather(send(environment, "up"), receive(harness))
        assert downstream == list(range(count))
        await harness.close()
        await environment.close()


async def _list(http: aiohttp.ClientSession, cluster: Cluster, node: int) -> dict[str, dict]:  # type: ignore[type-arg]
    async with http.get(
        f"{cluster.nodes[node - 1].base_url}/cloud/environments", headers=AUTH
    ) as resp:
        assert resp.status == 200
        return {row["id"]: row for row in await resp.json()}


async def test_a_forged_cross_node_frame_is_refused(cluster: Cluster) -> None:
    async with aiohttp.ClientSession() as http:
        environment = await _register_raw_environment(http, cluster, "target", 1)
        await wait_online(cluster.nodes[1], "target")
        harness = await http.ws_connect(cluster.harness_url("target", 2), max_msg_size=0)
        await harness.send_bytes(encode_frame(data_frame("owned", 0, b"genuine")))
        received = decode_frame((await environment.receive(timeout=WAIT_S)).data)
        assert received.body is not None and received.body.payload == b"genuine"
        # n3 (a live node) publishes for the stream n2's harness owns, and for one that
        # does not exist: the records say it owns neither.
        n1 = cluster_router(cluster, 1)
        n3 = cluster.nodes[2].state.node
        raw = await nats.connect(cluster.nats.url)
        try:
            for seq, stream_id in enumerate(("owned", "unowned"), 1):
                await raw.publish(
                    "exec-server.frames.n1.n3",
                    encode_frame(data_frame(stream_id, 1, b"forged")),
                    headers={HEADER: f"target h {n3.incarnation} 1 {seq}"},
                )
                await raw.flush()
                await eventually(
                    lambda: sum(n1.cluster_stats.refused.values()) >= 1,
                    "n1 refuses the forged frame",
                )
                n1.cluster_stats.refused.clear()
        finally:
            await raw.close()
        await harness.send_bytes(encode_frame(data_frame("owned", 1, b"genuine again")))
        received = decode_frame((await environment.receive(timeout=WAIT_S)).data)
        assert received.body is not None and received.body.payload == b"genuine again"
        assert n1.stats.dropped[DropReason.REFUSED_FROM_NODE] == 2
        async with http.get(f"{cluster.nodes[0].base_url}/metrics") as resp:
            metrics = await resp.text()
        assert 'exec_server_rendezvous_frames_dropped_total{reason="refused_from_node"} 2.0' in (
            metrics
        )
        assert "exec_server_rendezvous_cluster_ready 1.0" in metrics
        assert "exec_server_rendezvous_cluster_nodes_live 3.0" in metrics
        await harness.close()
        await environment.close()


async def test_the_registry_answers_for_the_whole_cluster_on_any_node(cluster: Cluster) -> None:
    executor = NoiseIdentity.generate().public_key
    harness_key = NoiseIdentity.generate().public_key
    async with aiohttp.ClientSession() as http:
        environment = await _register_raw_environment(http, cluster, "listed", 1)
        async with http.post(
            f"{cluster.nodes[2].base_url}/cloud/environment/quiet/register?name=Quiet",
            headers=AUTH,
        ) as resp:
            assert resp.status == 200
        for node in (1, 2, 3):
            await wait_online(cluster.nodes[node - 1], "listed")
            rows = await _list(http, cluster, node)
            assert rows["listed"]["online"] is True
            assert rows["quiet"] == {**rows["quiet"], "online": False, "name": "Quiet"}
            async with http.post(
                f"{cluster.nodes[node - 1].base_url}/cloud/environment/listed/connect",
                headers=AUTH,
            ) as resp:
                body = await resp.json()
                assert body["online"] is True
                assert body["url"].startswith(
                    cluster.nodes[node - 1].base_url.replace("http", "ws")
                )
        await environment.close()

        # Noise: registered on n1, an authorization from n2 is good once, on any node.
        noise = {"security_profile": "noise_hybrid_ik_v1", "executor_public_key": None}
        noise["executor_public_key"] = executor.to_json_obj()
        async with http.post(
            f"{cluster.nodes[0].base_url}/cloud/environment/secure/register",
            headers=AUTH,
            json=noise,
        ) as resp:
            registration_id = (await resp.json())["executor_registration_id"]
        async with http.post(
            f"{cluster.nodes[1].base_url}/cloud/environment/secure/connect",
            headers=AUTH,
            json={"harness_public_key": harness_key.to_json_obj()},
        ) as resp:
            bundle = await resp.json()
        assert bundle["executor_registration_id"] == registration_id
        validation = {
            "executor_registration_id": registration_id,
            "harness_public_key": harness_key.to_json_obj(),
            "harness_key_authorization": bundle["harness_key_authorization"],
        }
        answers = []
        for node in (3, 1):
            async with http.post(
                f"{cluster.nodes[node - 1].base_url}/cloud/environment/secure/validate",
                headers=AUTH,
                json=validation,
            ) as resp:
                answers.append(await resp.json())
        assert answers == [{"valid": True}, {"valid": False, "reason": "replayed"}]


async def test_nats_restarted_mid_run_service_resumes(cluster: Cluster) -> None:
    await cluster.start_environment("env", 1, 2, 3)
    await wait_online(cluster.nodes[1], "env")
    script = "for i in $(seq 1 60); do echo line-$i; sleep 0.1; done; exit 3"
    async with ExecServerClient.connect(
        rendezvous=cluster.bases(2, 3, 1), environment_id="env", token=TOKEN
    ) as client:
        proc = await client.start_process(["/bin/sh", "-c", script])
        first = await proc.next_event()
        assert isinstance(first, OutputEvent)
        await cluster.nats.kill()
        async with aiohttp.ClientSession() as http:

            async def unready() -> bool:
                async with http.get(f"{cluster.nodes[1].base_url}/readyz") as resp:
                    return resp.status == 503

            await eventually(unready, "n2 reports it cannot serve")
            # Down longer than a lease: every node closes its sockets, and the clients
            # wait for a node that can serve again.
            await eventually(
                lambda: all(
                    cluster_router(cluster, n).cluster_stats.lease_losses for n in (1, 2, 3)
                ),
                "every node lost its lease",
            )
            await cluster.nats.restart()
            result = await proc.collect()
        expected = "".join(f"line-{i}\n" for i in range(1, 61)).encode()
        assert first.data + result.stdout == expected
        assert result.exit_code == 3
        again = await client.run(["echo", "after"])
        assert again.stdout == b"after\n"


@pytest.fixture(autouse=True)
def _no_token_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EXEC_SERVER_RENDEZVOUS_TOKEN", raising=False)
