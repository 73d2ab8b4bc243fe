"""Children start with default signal dispositions and an empty mask, even when the
server was started with signals ignored (``nohup``, a background job) or blocked."""

from __future__ import annotations

import asyncio
import base64
import json
import signal
import sys

import aiohttp

#: Bits of /proc/<pid>/status SigIgn / SigBlk for a signal number.
IGNORED_BY_PARENT = (signal.SIGHUP, signal.SIGINT, signal.SIGQUIT)
BLOCKED_BY_PARENT = (signal.SIGUSR1, signal.SIGTERM)


def _start_like_nohup() -> None:
    # Runs in the server's child between fork and exec: what nohup and `cmd &` leave.
    for signum in IGNORED_BY_PARENT:
        signal.signal(signum, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_BLOCK, set(BLOCKED_BY_PARENT))


def _mask(value: str) -> int:
    return int(value.strip(), 16)


def _status_fields(text: str) -> dict[str, str]:
    return dict(line.split(":", 1) for line in text.splitlines() if ":" in line)


async def _child_status(url: str) -> str:
    async with aiohttp.ClientSession() as http, http.ws_connect(url) as ws:
        requests = [
            {"id": 1, "method": "initialize", "params": {"clientName": "t"}},
            {"method": "initialized", "params": {}},
            {
                "id": 2,
                "method": "process/start",
                "params": {
                    "processId": "p",
                    "argv": ["/bin/cat", "/proc/self/status"],
                    "cwd": "/",
                    "env": {},
                    "tty": False,
                },
            },
        ]
        for request in requests:
            await ws.send_str(json.dumps(request))
        output = b""
        while True:
            message = json.loads((await ws.receive(timeout=60)).data)
            if message.get("method") == "process/output":
                output += base64.b64decode(message["params"]["chunk"])
            if message.get("method") == "process/closed":
                return output.decode()
            assert "error" not in message, message


async def test_children_get_default_dispositions_and_an_empty_mask() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "exec_server",
        "serve",
        "--listen",
        "ws://127.0.0.1:0",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
        preexec_fn=_start_like_nohup,
    )
    try:
        assert proc.stdout is not None
        url = (await asyncio.wait_for(proc.stdout.readline(), 60)).decode().strip()
        status = await _child_status(url)
        with open(f"/proc/{proc.pid}/status") as server_status_file:
            server_status = server_status_file.read()
    finally:
        proc.kill()  # SIGTERM may be blocked in a server that failed to unblock it
        await proc.wait()
    fields = _status_fields(status)
    ignored, blocked = _mask(fields["SigIgn"]), _mask(fields["SigBlk"])
    for signum in IGNORED_BY_PARENT:
        assert not ignored >> (signum - 1) & 1, (signum, fields["SigIgn"])
    assert blocked == 0, fields["SigBlk"]
    # The server itself still ignores SIGHUP, as nohup asked (caught, not acted on).
    server = _status_fields(server_status)
    assert _mask(server["SigCgt"]) >> (signal.SIGHUP - 1) & 1
