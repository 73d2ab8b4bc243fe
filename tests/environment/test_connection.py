"""The connection (environment/connection.py): lifecycle gating, dispatch, bad input, sessions."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import psutil
import pytest
from inprocess import InProcessServer, RawConnection

from exec_server.transport.channel import MalformedFrame

ENV = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}


def start_params(process_id: str, script: str, **extra: object) -> dict[str, object]:
    params: dict[str, object] = {
        "processId": process_id,
        "argv": ["/bin/sh", "-c", script],
        "cwd": "/",
        "env": ENV,
        "tty": False,
    }
    params.update(extra)
    return params


async def read_until_closed(conn: RawConnection, process_id: str) -> dict[str, object]:
    after = 0
    out = b""
    import base64

    while True:
        reply = await conn.request(
            "process/read", {"processId": process_id, "afterSeq": after, "waitMs": 2000}
        )
        result = reply["result"]
        for chunk in result["chunks"]:
            out += base64.b64decode(chunk["chunk"])
        after = result["nextSeq"] - 1
        if result["closed"]:
            return {"output": out, "exitCode": result["exitCode"]}


# --- lifecycle gating -------------------------------------------------------------


async def test_methods_before_initialize_are_refused_per_family(server: InProcessServer) -> None:
    conn = server.connect()
    reply = await conn.request("fs/getMetadata", {"path": "/"})
    assert reply["error"] == {
        "code": -32600,
        "message": "client must call initialize before using filesystem methods",
    }
    reply = await conn.request("process/read", {"processId": "x"})
    assert reply["error"]["message"] == "client must call initialize before using exec methods"


async def test_methods_before_initialized_are_refused(server: InProcessServer) -> None:
    conn = server.connect()
    reply = await conn.request("initialize", {"clientName": "t"})
    assert "sessionId" in reply["result"]
    reply = await conn.request("fs/getMetadata", {"path": "/"})
    assert reply["error"]["message"] == (
        "client must send initialized before using filesystem methods"
    )
    await conn.send({"method": "initialized", "params": {}})
    reply = await conn.request("fs/getMetadata", {"path": "/"})
    assert reply["result"]["isDirectory"] is True


async def test_initialize_only_once(server: InProcessServer) -> None:
    conn = server.connect()
    await conn.initialize()
    reply = await conn.request("initialize", {"clientName": "t"})
    assert reply["error"] == {
        "code": -32600,
        "message": "initialize may only be sent once per connection",
    }


async def test_failed_resume_allows_initialize_again(server: InProcessServer) -> None:
    conn = server.connect()
    reply = await conn.request("initialize", {"clientName": "t", "resumeSessionId": "nope"})
    assert reply["error"] == {"code": -32600, "message": "unknown session id nope"}
    await conn.initialize()


async def test_unknown_method_names_the_method_before_and_after_init(
    server: InProcessServer,
) -> None:
    conn = server.connect()
    reply = await conn.request("test/unknown-a", {})
    assert reply["error"]["code"] == -32601
    assert "`test/unknown-a`" in reply["error"]["message"]
    await conn.initialize()
    reply = await conn.request("test/unknown-b")
    assert reply["error"] == {
        "code": -32601,
        "message": "exec-server stub does not implement `test/unknown-b` yet",
    }


async def test_string_ids_are_echoed(server: InProcessServer) -> None:
    conn = server.connect()
    await conn.send({"id": "req-7x", "method": "initialize", "params": {"clientName": "t"}})
    reply = await conn.recv()
    assert reply["id"] == "req-7x" and "sessionId" in reply["result"]


# --- bad input -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "data", [b"{not json", b"[]", b'[{"id":1,"method":"initialize"}]', b"{}", b'"str"']
)
async def test_malformed_input_gets_id_minus_one_and_connection_survives(
    server: InProcessServer, data: bytes
) -> None:
    conn = server.connect()
    await conn.send(data)
    reply = await conn.recv()
    assert reply["id"] == -1
    assert reply["error"]["code"] == -32600
    assert reply["error"]["message"].startswith(
        "failed to parse memory JSON-RPC message from exec-server memory"
    )
    await conn.initialize()


async def test_transport_level_malformed_frame_is_answered(server: InProcessServer) -> None:
    conn = server.connect()
    conn.channel.send_raw(MalformedFrame("message exceeds the limit"))
    reply = await conn.recv()
    assert reply["id"] == -1 and "exceeds the limit" in reply["error"]["message"]
    await conn.initialize()


async def test_invalid_params_are_32602_and_connection_survives(server: InProcessServer) -> None:
    conn = server.connect()
    await conn.initialize()
    reply = await conn.request(
        "process/start", {"processId": "p", "argv": ["true"], "cwd": "/", "tty": False}
    )
    assert reply["error"] == {"code": -32602, "message": "missing field `env`"}
    reply = await conn.request("fs/getMetadata", {"path": 42})
    assert reply["error"]["code"] == -32602
    reply = await conn.request("fs/getMetadata", [1, 2])
    assert reply["error"]["code"] == -32602
    reply = await conn.request("fs/getMetadata", {"path": "/"})
    assert "result" in reply


@pytest.mark.parametrize(
    "message",
    [
        {"method": "no/such-notification", "params": {}},
        {"id": 99, "result": {}},
        {"error": {"code": 1, "message": "x"}, "id": 5},
        {"id": None, "method": "bogus"},
    ],
)
async def test_connection_fatal_input_closes_only_that_connection(
    server: InProcessServer, message: dict[str, object]
) -> None:
    conn = server.connect()
    await conn.initialize()
    await conn.send(message)
    assert await conn.closed()
    other = server.connect()
    await other.initialize()


async def test_initialized_before_initialize_closes(server: InProcessServer) -> None:
    conn = server.connect()
    await conn.send({"method": "initialized", "params": {}})
    assert await conn.closed()


async def test_handler_bug_is_an_internal_error_not_a_crash(
    server: InProcessServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def boom(params: object) -> object:
        raise RuntimeError("kaboom")

    monkeypatch.setattr(server.server.fs, "get_metadata", boom)
    conn = server.connect()
    await conn.initialize()
    reply = await conn.request("fs/getMetadata", {"path": "/"})
    assert reply["error"]["code"] == -32603 and "kaboom" in reply["error"]["message"]
    reply = await conn.request("fs/readDirectory", {"path": "/"})
    assert "result" in reply


# --- sessions -------------------------------------------------------------------------


async def test_sessions_are_distinct_per_connection(server: InProcessServer) -> None:
    a, b = server.connect(), server.connect()
    assert await a.initialize() != await b.initialize()


async def test_resume_after_disconnect_keeps_processes_and_output(
    server: InProcessServer,
) -> None:
    conn = server.connect()
    session_id = await conn.initialize()
    reply = await conn.request(
        "process/start", start_params("p1", "sleep 0.2; echo detached-output; exit 3")
    )
    assert reply["result"] == {"processId": "p1"}
    await conn.close()
    await asyncio.sleep(0.35)  # output produced while detached
    new = server.connect()
    assert await new.initialize(resume=session_id) == session_id
    done = await read_until_closed(new, "p1")
    assert done == {"output": b"detached-output\n", "exitCode": 3}


async def test_resume_of_attached_session_is_refused_and_old_stays_usable(
    server: InProcessServer,
) -> None:
    old = server.connect()
    session_id = await old.initialize()
    new = server.connect()
    reply = await new.request("initialize", {"clientName": "t", "resumeSessionId": session_id})
    assert reply["error"] == {
        "code": -32600,
        "message": f"session {session_id} is already attached to another connection",
    }
    reply = await old.request("fs/getMetadata", {"path": "/"})
    assert "result" in reply


async def test_resume_after_ttl_fails_and_processes_are_killed(
    server: InProcessServer, tmp_path: Path
) -> None:
    pid_file = tmp_path / "pid"
    conn = server.connect()
    session_id = await conn.initialize()
    await conn.request("process/start", start_params("p", f"echo $$ > {pid_file}; exec sleep 30"))
    deadline = time.monotonic() + 5
    while not pid_file.exists() or not pid_file.read_text().strip():
        assert time.monotonic() < deadline
        await asyncio.sleep(0.01)
    pid = int(pid_file.read_text())
    assert psutil.pid_exists(pid)
    await conn.close()
    await asyncio.sleep(0.5 + 0.4)  # TTL is 0.5 s in this fixture
    new = server.connect()
    reply = await new.request("initialize", {"clientName": "t", "resumeSessionId": session_id})
    assert reply["error"] == {"code": -32600, "message": f"unknown session id {session_id}"}
    deadline = time.monotonic() + 5
    while psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
        assert time.monotonic() < deadline, "expired session left its process running"
        await asyncio.sleep(0.02)


async def test_long_poll_on_old_connection_fails_once_resumed_elsewhere(
    server: InProcessServer,
) -> None:
    old = server.connect()
    session_id = await old.initialize()
    await old.request("process/start", start_params("p", "sleep 5"))
    await old.send(
        {"id": 77, "method": "process/read", "params": {"processId": "p", "waitMs": 10000}}
    )
    await asyncio.sleep(0.05)
    # The old connection's inbound side ends while its long-poll is parked.
    old.channel.shutdown_send()
    await asyncio.sleep(0.05)
    new = server.connect()
    started = time.monotonic()
    assert await new.initialize(resume=session_id) == session_id
    assert time.monotonic() - started < 1.0, "resume waited for the old long-poll"
    reply = await old.recv()
    assert reply == {
        "error": {"code": -32600, "message": "session has been resumed by another connection"},
        "id": 77,
    }
    await new.request("process/terminate", {"processId": "p"})


async def test_long_poll_does_not_block_later_requests(server: InProcessServer) -> None:
    conn = server.connect()
    await conn.initialize()
    await conn.request("process/start", start_params("p", "sleep 0.5; echo done"))
    await conn.send(
        {"id": 500, "method": "process/read", "params": {"processId": "p", "waitMs": 5000}}
    )
    started = time.monotonic()
    reply = await conn.request("fs/getMetadata", {"path": "/"})
    assert "result" in reply
    assert time.monotonic() - started < 0.4
    while True:
        msg = await conn.recv()
        if msg.get("id") == 500:
            break
    assert msg["result"]["chunks"] or msg["result"]["exited"]


async def test_pipelined_requests_are_answered_in_arrival_order(
    server: InProcessServer, tmp_path: Path
) -> None:
    """A request whose handler waits (a worker-thread read) holds back the ones sent
    right behind it, even those that could be answered at once, and a connection-fatal
    frame queued behind them still ends the connection after they are answered."""
    target = tmp_path / "data"
    target.write_bytes(b"x" * 4096)
    conn = server.connect()
    await conn.initialize()
    ids = list(range(10, 20))
    for request_id in ids:
        method = "fs/readFile" if request_id % 3 == 0 else "fs/getMetadata"
        await conn.send({"id": request_id, "method": method, "params": {"path": str(target)}})
    await conn.send({"id": 99, "result": {}})  # a response from the client: fatal
    answered = [(await conn.recv())["id"] for _ in ids]
    assert answered == ids
    assert await conn.closed()


async def test_a_handler_that_waits_can_fail_and_the_next_request_still_runs(
    server: InProcessServer, tmp_path: Path
) -> None:
    conn = server.connect()
    await conn.initialize()
    await conn.send({"id": 1, "method": "fs/readFile", "params": {"path": str(tmp_path)}})
    await conn.send({"id": 2, "method": "fs/getMetadata", "params": {"path": str(tmp_path)}})
    first, second = await conn.recv(), await conn.recv()
    assert first["id"] == 1 and first["error"]["code"] == -32603  # EISDIR, from a thread
    assert second["id"] == 2 and second["result"]["isDirectory"] is True


async def test_notifications_flow_to_the_attached_connection(server: InProcessServer) -> None:
    conn = server.connect()
    await conn.initialize()
    await conn.request("process/start", start_params("p", "echo out; echo err >&2; exit 7"))
    methods: list[tuple[str, int]] = []
    while not methods or methods[-1][0] != "process/closed":
        msg = await conn.recv()
        methods.append((msg["method"], msg["params"]["seq"]))
    seqs = sorted(seq for _, seq in methods)
    assert seqs == list(range(1, len(methods) + 1))
    assert ("process/exited", 3) in methods and ("process/closed", 4) in methods


async def test_environment_info(server: InProcessServer) -> None:
    conn = server.connect()
    await conn.initialize()
    reply = await conn.request("environment/info")
    assert reply["result"]["shell"]["path"]
