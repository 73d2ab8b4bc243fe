"""kill -9 of a rendezvous node mid-session: three ``exec-server rendezvous --cluster``
processes on one NATS, an ``exec-server serve --remote n1,n2,n3`` environment (on n1)
and ``exec-server`` commands with ``--rendezvous n2,n3,n1`` (their socket on n2).

Nothing here asserts on elapsed time: a row passes when the command finishes with
everything it should have, whatever the failover took.
"""

from __future__ import annotations

import hashlib
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from cluster_support import PROCESS_WAIT_S, ProcessCluster, eventually_within

from exec_server.rendezvous.cluster.nats_server import EmbeddedNats

# `seq 1 300000`, paced (1,000 lines every 10 ms) so that the kill lands mid-output,
# then exit 7.
PACED_SEQ = (
    "import sys, time\n"
    "for start in range(1, 300001, 1000):\n"
    "    sys.stdout.write(''.join(f'{i}\\n' for i in range(start, start + 1000)))\n"
    "    sys.stdout.flush()\n"
    "    time.sleep(0.01)\n"
    "sys.exit(7)\n"
)
SEQ_OUTPUT = "".join(f"{i}\n" for i in range(1, 300001)).encode()
UPLOAD_BYTES = 64 * 1024 * 1024


@pytest.fixture
async def nodes(nats_server: EmbeddedNats) -> AsyncIterator[ProcessCluster]:
    cluster = ProcessCluster(nats_server)
    try:
        for _ in range(3):
            await cluster.start_node()
        yield cluster
    finally:
        await cluster.close()


async def test_kill_9_of_the_environments_node_mid_output_loses_nothing(
    nodes: ProcessCluster,
) -> None:
    await nodes.start_environment("env", 1, 2, 3)
    run = await nodes.command(
        (2, 3, 1), "run", "--environment-id", "env", "--", sys.executable, "-c", PACED_SEQ
    )
    await eventually_within(lambda: len(run.stdout) >= 200_000, PROCESS_WAIT_S, "output flows")
    assert len(run.stdout) < len(SEQ_OUTPUT), "the kill must land mid-output"
    nodes.nodes[0].kill()
    code = await run.wait()
    assert code == 7, run.stderr
    assert bytes(run.stdout) == SEQ_OUTPUT


async def test_kill_9_of_the_harness_node_mid_cp_completes_and_verifies(
    nodes: ProcessCluster, tmp_path: Path
) -> None:
    await nodes.start_environment("env", 1, 2, 3)
    source = tmp_path / "upload.bin"
    data = os.urandom(UPLOAD_BYTES)
    source.write_bytes(data)
    dest = tmp_path / "copied.bin"
    cp = await nodes.command((2, 3, 1), "cp", "--environment-id", "env", str(source), f"env:{dest}")
    await eventually_within(
        lambda: dest.exists() and dest.stat().st_size >= 8 * 1024 * 1024,
        PROCESS_WAIT_S,
        "the upload is under way",
    )
    assert dest.stat().st_size < UPLOAD_BYTES, "the kill must land mid-upload"
    nodes.nodes[1].kill()
    code = await cp.wait()
    assert code == 0, cp.stderr
    assert hashlib.sha256(dest.read_bytes()).digest() == hashlib.sha256(data).digest()
