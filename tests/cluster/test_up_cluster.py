"""``exec-server up --cluster N``: an embedded NATS, N node processes, one environment."""

from __future__ import annotations

import asyncio
import signal
import sys

import psutil
from cluster_support import PROCESS_WAIT_S

CLI = [sys.executable, "-m", "exec_server"]


async def test_up_cluster_serves_through_every_node_and_stops_them_all() -> None:
    proc = await asyncio.create_subprocess_exec(
        *CLI,
        "up",
        "--cluster",
        "2",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    assert proc.stdout is not None
    banner: dict[str, str] = {}
    try:
        while "token file" not in banner:
            line = (await asyncio.wait_for(proc.stdout.readline(), PROCESS_WAIT_S)).decode()
            assert line, "exec-server up --cluster exited before printing its banner"
            key, sep, value = line.strip().partition(":  ")
            if sep:
                banner[key.strip()] = value.strip()
        pids = [int(banner[f"node up-{n}"].rsplit("pid ", 1)[1].rstrip(")")) for n in (1, 2)]
        bases = banner["rendezvous"].split(",")
        assert len(bases) == 2
        for order in (bases, bases[::-1]):
            run = await asyncio.create_subprocess_exec(
                *CLI,
                "run",
                "--rendezvous",
                ",".join(order),
                "--environment-id",
                "local",
                "--token-file",
                banner["token file"],
                "--",
                "/bin/sh",
                "-c",
                "echo through-the-cluster; exit 4",
                stdout=asyncio.subprocess.PIPE,
            )
            out, _ = await asyncio.wait_for(run.communicate(), PROCESS_WAIT_S)
            assert (out, run.returncode) == (b"through-the-cluster\n", 4)
    finally:
        proc.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(proc.wait(), PROCESS_WAIT_S) == 0
    for pid in pids:
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == "zombie"
