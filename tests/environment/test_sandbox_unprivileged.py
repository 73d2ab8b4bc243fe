"""A server that is not root: workspace-write through a user namespace, or refused.

The server runs as ``nobody`` (switched with ``setpriv``) and is driven over its
websocket with Codex 0.171's ``process/start``. Its carve-outs (``.git`` & co.) need
a mount namespace, which without ``CAP_SYS_ADMIN`` it makes inside a new user
namespace. Where the kernel forbids that (simulated with a seccomp filter that
denies ``unshare``, as container runtimes' default profiles do), the start is
refused with the reason and nothing runs. Every directory involved is owned by
``nobody``, so a denial can only come from the sandbox.
"""

from __future__ import annotations

import asyncio
import base64
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pytest

from exec_server.environment.sandbox.kernel import probe_kernel_support

pytestmark = pytest.mark.timeout(120)

NOBODY = 65534
SETPRIV = shutil.which("setpriv")
_SUPPORT = probe_kernel_support()
needs_root_and_setpriv = pytest.mark.skipif(
    os.geteuid() != 0 or SETPRIV is None or _SUPPORT.landlock_problem is not None,
    reason="needs root (to run the server as nobody), setpriv and Landlock",
)

#: Runs the server with ``unshare`` denied (EPERM), like a container's seccomp profile.
NO_UNSHARE = """
import errno, runpy, sys, pyseccomp
f = pyseccomp.SyscallFilter(defaction=pyseccomp.ALLOW)
f.add_rule(pyseccomp.ERRNO(errno.EPERM), "unshare")
f.load()
sys.argv[0] = "exec-server"
runpy.run_module("exec_server", run_name="__main__", alter_sys=True)
"""


def special(kind: str, access: str, **value: Any) -> dict[str, Any]:
    return {"path": {"type": "special", "value": {"kind": kind, **value}}, "access": access}


def workspace_write(work: Path) -> dict[str, Any]:
    """The 0.171 harness's workspace-write policy (as in test_sandbox_confinement)."""
    protected = [
        special("project_roots", "read", subpath=name) | {"missing_path_behavior": "skip"}
        for name in (".git", ".agents", ".codex")
    ]
    entries = [
        special("root", "read"),
        special("project_roots", "write"),
        special("slash_tmp", "write"),
        special("tmpdir", "write"),
        *protected,
    ]
    return {
        "permissions": {
            "type": "managed",
            "file_system": {"type": "restricted", "entries": entries},
            "network": "restricted",
        },
        "cwd": work.as_uri(),
        "workspaceRoots": [work.as_uri()],
        "windowsSandboxLevel": "disabled",
    }


@pytest.fixture
def dirs() -> Iterator[dict[str, Path]]:
    """A workspace, and a directory outside every writable root of the policy (so
    not under /tmp), both owned by nobody."""
    work_parent = Path(tempfile.mkdtemp(prefix="exec-server-nobody-"))
    outside = Path(tempfile.mkdtemp(prefix="exec-server-nobody-", dir="/var/tmp"))
    work = work_parent / "work"
    work.mkdir()
    for path in (work_parent, work, outside):
        os.chown(path, NOBODY, NOBODY)
        path.chmod(0o755)
    try:
        yield {"work": work, "outside": outside}
    finally:
        shutil.rmtree(work_parent, ignore_errors=True)
        shutil.rmtree(outside, ignore_errors=True)


def _start_as_nobody(*, deny_unshare: bool) -> subprocess.Popen[bytes]:
    assert SETPRIV is not None
    python = [sys.executable, "-c", NO_UNSHARE] if deny_unshare else [sys.executable, "-m"]
    if not deny_unshare:
        python.append("exec_server")
    argv = [
        SETPRIV,
        f"--reuid={NOBODY}",
        f"--regid={NOBODY}",
        "--clear-groups",
        *python,
        "serve",
        "--listen",
        "ws://127.0.0.1:0",
    ]
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": "/nonexistent"}
    return subprocess.Popen(argv, stdout=subprocess.PIPE, env=env, start_new_session=True)


@pytest.fixture
async def nobody_server(request: pytest.FixtureRequest) -> AsyncIterator[str]:
    server = _start_as_nobody(deny_unshare=request.param)
    try:
        assert server.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(server.stdout.readline), 30)
        url = line.decode().strip()
        assert url.startswith("ws://"), url
        yield url
    finally:
        server.terminate()
        try:
            await asyncio.wait_for(asyncio.to_thread(server.wait), 10)
        except TimeoutError:
            server.kill()
            server.wait()


class Peer:
    """A raw 0.171-shaped client over one websocket."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.ids = iter(range(1, 1000))
        self.notes: list[dict[str, Any]] = []

    async def call(self, method: str, params: Any) -> dict[str, Any]:
        rid = next(self.ids)
        await self.ws.send_bytes(
            msgspec.json.encode({"id": rid, "method": method, "params": params})
        )
        while True:
            message: dict[str, Any] = msgspec.json.decode((await self.ws.receive(timeout=60)).data)
            if message.get("id") == rid:
                return message
            self.notes.append(message)

    async def run(self, process_id: str, script: str, work: Path) -> dict[str, Any]:
        """Start ``sh -c script`` under workspace-write; its start answer, and once it
        closed its ``process/exited`` params under ``"exited"``."""
        start = await self.call(
            "process/start",
            {
                "processId": process_id,
                "argv": ["/bin/sh", "-c", script],
                "cwd": work.as_uri(),
                "env": {"PATH": "/usr/bin:/bin"},
                "tty": False,
                "sandbox": workspace_write(work),
            },
        )
        if "result" in start:
            while not any(
                n.get("method") == "process/closed" and n["params"]["processId"] == process_id
                for n in self.notes
            ):
                self.notes.append(msgspec.json.decode((await self.ws.receive(timeout=60)).data))
            start["exited"] = next(
                n["params"]
                for n in self.notes
                if n.get("method") == "process/exited" and n["params"]["processId"] == process_id
            )
        return start


async def _connect(url: str, http: aiohttp.ClientSession) -> Peer:
    peer = Peer(await http.ws_connect(url))
    await peer.call("initialize", {"clientName": "nobody-test"})
    await peer.ws.send_str('{"method":"initialized","params":{}}')
    return peer


@needs_root_and_setpriv
@pytest.mark.parametrize("nobody_server", [False], indirect=True, ids=["nobody"])
async def test_workspace_write_works_for_a_server_that_is_not_root(
    nobody_server: str, dirs: dict[str, Path]
) -> None:
    work, outside = dirs["work"], dirs["outside"]
    script = f"""
        echo in > inside.txt && echo inside=ok
        echo x > {outside}/new.txt 2>/dev/null || echo outside=denied
        mkdir .git 2>/dev/null; echo x > .git/config 2>/dev/null || echo git=denied
        id -u
    """
    async with aiohttp.ClientSession() as http:
        peer = await _connect(nobody_server, http)
        # The control: the same write, unconfined, works (nobody owns `outside`).
        control = await peer.call(
            "process/start",
            {
                "processId": "control",
                "argv": ["/bin/sh", "-c", f"echo x > {outside}/control.txt"],
                "cwd": work.as_uri(),
                "env": {},
                "tty": False,
            },
        )
        assert control["result"]["sandboxType"] == "none"
        started = await peer.run("confined", script, work)
        refusal = started.get("error", {}).get("message", "")
        if "cannot make one in a user namespace instead" in refusal:
            pytest.skip(f"this kernel does not let nobody make a user namespace: {refusal}")
        assert started["result"] == {"processId": "confined", "sandboxType": "linuxSeccomp"}
        output = b"".join(
            base64.b64decode(n["params"]["chunk"])
            for n in peer.notes
            if n.get("method") == "process/output" and n["params"]["processId"] == "confined"
        ).decode()
    assert {"inside=ok", "outside=denied", "git=denied", str(NOBODY)} <= set(output.split()), output
    assert (work / "inside.txt").read_text() == "in\n"
    assert sorted(p.name for p in outside.iterdir()) == ["control.txt"]


@needs_root_and_setpriv
@pytest.mark.parametrize("nobody_server", [True], indirect=True, ids=["nobody-no-unshare"])
async def test_without_user_namespaces_the_start_is_refused_with_the_reason(
    nobody_server: str, dirs: dict[str, Path]
) -> None:
    work = dirs["work"]
    async with aiohttp.ClientSession() as http:
        peer = await _connect(nobody_server, http)
        refused = await peer.run("refused", "touch ran", work)
        unconfined = await peer.call(
            "process/start",
            {
                "processId": "free",
                "argv": ["/bin/true"],
                "cwd": work.as_uri(),
                "env": {},
                "tty": False,
            },
        )
    error = refused["error"]
    assert error["code"] == -32603
    assert error["data"] == {"kind": "sandboxUnavailable"}
    message = error["message"]
    assert message.startswith("sandbox cannot be enforced here: its carve-outs"), message
    assert "not root" in message and "user namespace" in message, message
    assert "Operation not permitted" in message, message
    assert message.endswith("refusing to run the command unconfined"), message
    assert unconfined["result"]["sandboxType"] == "none"
    await asyncio.sleep(0.2)
    assert not (work / "ran").exists()
