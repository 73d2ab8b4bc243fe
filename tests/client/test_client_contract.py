"""What the SDK sends and how it reacts, pinned down against a scripted server.

Defaults come from the environment (never from this machine), timeouts apply to every
call, and errors are typed.
"""

from __future__ import annotations

import asyncio

import pytest
from scripted_server import SILENT, Error, ScriptedServer, scripted

from exec_server.client import (
    ClientConfig,
    ConnectError,
    ExecServerClient,
    ExecServerError,
    ProcessFailed,
    ProcessTimeout,
    RegistryError,
    RequestTimeout,
    ServerError,
    SessionExpired,
    Timeouts,
    TransportClosed,
    local_path,
)


async def test_cwd_and_env_default_to_the_environments_own() -> None:
    server = ScriptedServer(
        answers={
            "environment/info": {"shell": {"name": "zsh", "path": "/bin/zsh"}, "cwd": "/srv/env"},
            "process/start": {"processId": "p"},
        }
    )
    async with scripted(server) as channel, ExecServerClient.over_channel(channel) as client:
        await client.start_process(["make"], process_id="p", events=False)
        await client.start_process(["make"], process_id="q", events=False, env={"A": "1"})
        await client.start_process(
            ["make"], process_id="r", events=False, cwd="/elsewhere", env_policy=None
        )
    starts = server.calls("process/start")
    assert [s["cwd"] for s in starts] == ["/srv/env", "/srv/env", "/elsewhere"]
    policy = {
        "inherit": "all",
        "ignoreDefaultExcludes": True,
        "exclude": [],
        "set": {},
        "includeOnly": [],
    }
    assert [s["envPolicy"] for s in starts] == [policy, policy, None]
    assert [s["env"] for s in starts] == [{}, {"A": "1"}, {}]
    assert len(server.calls("environment/info")) == 1, "asked once, then cached"


async def test_environment_info_from_initialize_is_used_as_given() -> None:
    # Codex 0.171 sends environmentInfo in the initialize result, paths as file:// URIs,
    # and refuses plain paths: the default cwd goes back exactly as it came.
    server = ScriptedServer(
        environment_info={
            "shell": {"name": "bash", "path": "/bin/bash"},
            "cwd": "file:///home/dev/my%20repo",
            "userHomeDir": "file:///home/dev",
            "platformOs": "linux",
            "capabilities": {"fsWatchMissing": True},
        },
        answers={"process/start": {"processId": "p", "sandboxType": "none"}},
    )
    async with scripted(server) as channel, ExecServerClient.over_channel(channel) as client:
        info = await client.environment_info()
        assert (info.cwd, info.home, info.platform_os) == (
            "file:///home/dev/my%20repo",
            "file:///home/dev",
            "linux",
        )
        assert local_path(info.default_cwd) == "/home/dev/my repo"
        await client.start_process(["ls"], process_id="p", events=False)
    assert server.calls("process/start")[0]["cwd"] == "file:///home/dev/my%20repo"
    assert server.calls("environment/info") == []


async def test_a_server_without_environment_info_falls_back_to_root() -> None:
    server = ScriptedServer(answers={"process/start": {"processId": "p"}})  # like Codex 0.133
    async with scripted(server) as channel, ExecServerClient.over_channel(channel) as client:
        await client.start_process(["ls"], process_id="p", events=False)
        assert (await client.environment_info()).shell_path is None
    assert server.calls("process/start")[0]["cwd"] == "/"


async def test_every_call_has_a_timeout_from_the_config_or_its_own() -> None:
    server = ScriptedServer(answers={"fs/getMetadata": SILENT, "fs/remove": {}})
    config = ClientConfig(timeouts=Timeouts(request_s=0.2))
    async with (
        scripted(server) as channel,
        ExecServerClient.over_channel(channel, config=config) as client,
    ):
        with pytest.raises(RequestTimeout) as info:
            await client.fs.get_metadata("/x")
        assert (info.value.method, info.value.timeout) == ("fs/getMetadata", 0.2)
        assert isinstance(info.value, TimeoutError) and isinstance(info.value, ExecServerError)
        with pytest.raises(RequestTimeout, match=r"within 0\.05s"):
            await client.fs.get_metadata("/x", timeout=0.05)
        await client.fs.remove("/x")  # the connection is still fine
        waiter = asyncio.ensure_future(client.fs.get_metadata("/x", timeout=None))
        await asyncio.sleep(0.4)
        assert not waiter.done(), "timeout=None waits as long as it takes"
        waiter.cancel()


async def test_initialize_has_its_own_timeout() -> None:
    server = ScriptedServer(answers={"initialize": SILENT})
    config = ClientConfig(timeouts=Timeouts(initialize_s=0.2))
    async with scripted(server) as channel:
        with pytest.raises(RequestTimeout, match=r"initialize handshake after 0\.2s"):
            await ExecServerClient.over_channel(channel, config=config)


async def test_server_errors_are_typed_with_method_code_and_errno() -> None:
    server = ScriptedServer(
        answers={
            "process/start": Error(-32603, "No such file or directory (os error 2)"),
            "fs/readFile": Error(-32600, "permission denied"),
        }
    )
    async with scripted(server) as channel, ExecServerClient.over_channel(channel) as client:
        with pytest.raises(ServerError) as info:
            await client.start_process(["nope"], cwd="/")
        assert (info.value.code, info.value.method, info.value.os_errno) == (
            -32603,
            "process/start",
            2,
        )
        assert str(info.value) == "No such file or directory (os error 2) (code -32603)"
        with pytest.raises(ServerError) as info:
            await client.fs.read_file("/secret")
        assert info.value.os_errno is None


async def test_an_expired_session_is_a_type_not_a_message() -> None:
    server = ScriptedServer(answers={"initialize": Error(-32600, "unknown session id s")})
    async with scripted(server) as channel:
        with pytest.raises(SessionExpired) as info:
            await ExecServerClient.over_channel(channel, resume_session_id="s")
    assert info.value.session_id == "s" and not info.value.transient
    # The same answer to a fresh initialize is just a server error.
    async with scripted(server) as channel:
        with pytest.raises(ServerError):
            await ExecServerClient.over_channel(channel)


async def test_the_error_tree() -> None:
    for error in (
        ServerError,
        ConnectError,
        TransportClosed,
        RequestTimeout,
        ProcessTimeout,
        ProcessFailed,
        SessionExpired,
        RegistryError,
    ):
        assert issubclass(error, ExecServerError), error
    assert not issubclass(TransportClosed, ServerError)
    assert issubclass(ProcessTimeout, RequestTimeout) and issubclass(RequestTimeout, TimeoutError)


async def test_output_notifications_in_any_encoding_reach_the_handle() -> None:
    server = ScriptedServer(answers={"process/start": {"processId": "p"}})
    async with scripted(server) as channel, ExecServerClient.over_channel(channel) as client:
        proc = await client.start_process(["x"], process_id="p", cwd="/")
        # Spaces and another field order: not the fast path's shape, still decoded.
        assert server.channel is not None
        await server.channel.send(
            b'{ "params": {"chunk": "aGk=", "stream": "stdout", "seq": 1, "processId": "p"},'
            b' "method": "process/output" }'
        )
        await server.notify(
            "process/output", {"processId": "p", "seq": 2, "stream": "stderr", "chunk": "IQ=="}
        )
        await server.notify("process/exited", {"processId": "p", "seq": 3, "exitCode": 4})
        await server.notify("process/closed", {"processId": "p", "seq": 4})
        result = await asyncio.wait_for(proc.collect(), 5)
    assert (result.stdout, result.stderr, result.exit_code) == (b"hi", b"!", 4)


async def test_absolute_paths_go_as_uris_to_an_environment_that_uses_them() -> None:
    server = ScriptedServer(
        environment_info={"shell": {"name": "sh", "path": "/bin/sh"}, "cwd": "file:///w"},
        answers={"process/start": {"processId": "p"}, "fs/readFile": {"dataBase64": ""}},
    )
    async with scripted(server) as channel, ExecServerClient.over_channel(channel) as client:
        await client.start_process(["ls"], process_id="p", events=False, cwd="/tmp/a b")
        await client.fs.read_file("/etc/hostname")
        await client.fs.read_file("file:///already/a/uri")
    assert server.calls("process/start")[0]["cwd"] == "file:///tmp/a%20b"
    assert [c["path"] for c in server.calls("fs/readFile")] == [
        "file:///etc/hostname",
        "file:///already/a/uri",
    ]
    # An environment that did not announce URI paths gets them as given.
    plain = ScriptedServer(answers={"fs/readFile": {"dataBase64": ""}})
    async with scripted(plain) as channel, ExecServerClient.over_channel(channel) as client:
        await client.fs.read_file("/etc/hostname")
    assert plain.calls("fs/readFile")[0]["path"] == "/etc/hostname"
