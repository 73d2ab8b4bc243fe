"""The README's SDK examples, run as they are written, so they cannot drift.

Each ```python block of the "The SDK" section that ends in ``asyncio.run(main())``
runs as its own program against a real server: ``ws://127.0.0.1:8765`` becomes a
local server's URL, ``http://127.0.0.1:7000`` a rendezvous with an environment
``laptop`` online, and ``/tmp/exec-server-demo`` a temporary directory. The other
blocks must compile.
"""

from __future__ import annotations

import asyncio
import os
import re
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from exec_server.environment.remote import RemoteEnvironment, RemoteEnvironmentConfig
from exec_server.environment.server import ExecServer
from exec_server.rendezvous.server import RendezvousConfig, RendezvousServer

README = Path(__file__).resolve().parents[2] / "README.md"
EXAMPLE_TIMEOUT_S = 60.0


def sdk_examples() -> list[str]:
    text = README.read_text()
    section = text.split("\n## The SDK\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, flags=re.DOTALL)


def test_the_readme_has_the_four_sdk_examples() -> None:
    runnable = [code for code in sdk_examples() if "asyncio.run(main())" in code]
    assert len(runnable) == 4
    joined = "\n".join(runnable)
    for needle in ("rendezvous=", ".run(", ".start_process(", "client.fs"):
        assert needle in joined, needle
    for code in sdk_examples():
        compile(code, "README.md", "exec")


class Stack:
    def __init__(self, url: str, rendezvous: str, token: str) -> None:
        self.url = url
        self.rendezvous = rendezvous
        self.token = token


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    local = ExecServer()
    url = await local.start_websocket()
    rendezvous = RendezvousServer(RendezvousConfig(data_dir=tmp_path / "rendezvous"))
    base_url = await rendezvous.start("127.0.0.1", 0)
    remote_server = ExecServer()
    environment = RemoteEnvironment(
        remote_server,
        RemoteEnvironmentConfig(base_url=base_url, environment_id="laptop", token=rendezvous.token),
    )
    task = asyncio.ensure_future(environment.run())
    try:
        await asyncio.wait_for(environment.connected.wait(), 20)
        yield Stack(url, base_url, rendezvous.token)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await remote_server.close()
        await rendezvous.close()
        await local.close()


@pytest.mark.parametrize(
    "index", range(len([c for c in sdk_examples() if "asyncio.run(main())" in c]))
)
async def test_readme_example_runs(stack: Stack, tmp_path: Path, index: int) -> None:
    code = [c for c in sdk_examples() if "asyncio.run(main())" in c][index]
    code = (
        code.replace("ws://127.0.0.1:8765", stack.url)
        .replace("http://127.0.0.1:7000", stack.rendezvous)
        .replace("/tmp/exec-server-demo", str(tmp_path / "demo"))
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        code,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "EXEC_SERVER_RENDEZVOUS_TOKEN": stack.token},
    )
    out, err = await asyncio.wait_for(proc.communicate(), EXAMPLE_TIMEOUT_S)
    assert proc.returncode == 0, err.decode()
    assert out.strip(), "every example prints what it got"
    if "client.fs" in code:
        assert not (tmp_path / "demo").exists()
