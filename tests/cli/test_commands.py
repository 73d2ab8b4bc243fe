"""`exec-server run`, `cp` and `envs` as real processes against real servers: output,
exit codes, and errors that name what failed."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

import exec_server
from exec_server.cli.target import print_relay_status
from exec_server.client import RelayStatus
from exec_server.environment.server import ExecServer
from exec_server.rendezvous.server import RendezvousConfig, RendezvousServer
from exec_server.transport.registry_client import RegistryClient

CLI = [sys.executable, "-m", "exec_server"]


@pytest.fixture
async def url() -> AsyncIterator[str]:
    server = ExecServer()
    yield await server.start_websocket()
    await server.close()


async def _cli(*args: str, stdin: bytes | None = None) -> tuple[int, bytes, bytes]:
    proc = await asyncio.create_subprocess_exec(
        *CLI,
        *args,
        stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(stdin), 120)
    assert proc.returncode is not None
    return proc.returncode, out, err


async def test_run_streams_output_and_returns_the_exit_code(url: str) -> None:
    code, out, err = await _cli(
        "run", "--url", url, "--", "sh", "-c", "echo hi; echo oops >&2; exit 3"
    )
    assert (code, out) == (3, b"hi\n")
    assert b"oops\n" in err


async def test_run_forwards_stdin_and_env(url: str, tmp_path: Path) -> None:
    code, out, _ = await _cli(
        "run",
        "--url",
        url,
        "--cwd",
        str(tmp_path),
        "--env",
        "GREETING=hey",
        "-i",
        "--",
        "sh",
        "-c",
        'cat; echo "$GREETING from $(pwd)"',
        stdin=b"piped input\n",
    )
    assert code == 0
    assert out == f"piped input\nhey from {tmp_path}\n".encode()


async def test_run_forwards_ctrl_c_as_interrupt(url: str) -> None:
    proc = await asyncio.create_subprocess_exec(
        *CLI,
        "run",
        "--url",
        url,
        "--",
        "sh",
        "-c",
        "trap 'echo signal:2; exit 7' INT; echo ready; while :; do sleep 0.05; done",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    assert await asyncio.wait_for(proc.stdout.readline(), 15) == b"ready\n"
    proc.send_signal(signal.SIGINT)
    rest = await asyncio.wait_for(proc.stdout.read(), 15)
    assert b"signal:2" in rest
    assert await proc.wait() == 7


async def test_run_without_a_target_is_a_clear_error() -> None:
    env_clean = {k: v for k, v in os.environ.items() if "EXEC_SERVER" not in k}
    proc = await asyncio.create_subprocess_exec(
        *CLI,
        "run",
        "--",
        "true",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**env_clean, "EXEC_SERVER_CONFIG": "/nonexistent"},
    )
    _, err = await proc.communicate()
    assert proc.returncode == 2
    assert b"exec-server: no exec-server to connect to" in err
    assert b"hint: pass --url WS_URL" in err


async def test_version() -> None:
    code, out, _ = await _cli("--version")
    assert (code, out) == (0, f"exec-server {exec_server.__version__}\n".encode())


async def test_a_missing_command_is_named_and_exits_127(url: str) -> None:
    code, out, err = await _cli("run", "--url", url, "--", "/no/such/binary")
    assert (code, out) == (127, b"")
    assert err.startswith(b"exec-server: /no/such/binary: no such file on the environment")
    code, _, err = await _cli("run", "--url", url, "--", "no-such-command-here")
    assert code == 127
    assert b"no-such-command-here: command not found on the environment's PATH" in err


async def test_a_missing_cwd_is_named_with_a_hint(url: str, tmp_path: Path) -> None:
    missing = tmp_path / "nonexistent"
    code, _, err = await _cli("run", "--url", url, "--cwd", str(missing), "--", "true")
    assert code == 1
    assert f"cannot run `true`: the working directory {missing} does not exist".encode() in err
    assert b"hint: pass --cwd with an existing directory" in err
    a_file = tmp_path / "file"
    a_file.write_text("x")
    code, _, err = await _cli("run", "--url", url, "--cwd", str(a_file), "--", "true")
    assert code == 1 and b"is not a directory" in err


async def test_a_file_that_is_not_executable_exits_126(url: str, tmp_path: Path) -> None:
    script = tmp_path / "script.sh"
    script.write_text("#!/bin/sh\necho hi\n")
    code, _, err = await _cli("run", "--url", url, "--", str(script))
    assert code == 126 and f"{script}: cannot execute".encode() in err


async def test_timeout_terminates_and_exits_124(url: str) -> None:
    code, out, err = await _cli(
        "run", "--url", url, "--timeout", "0.5", "--", "sh", "-c", "echo started; sleep 30"
    )
    assert (code, out) == (124, b"started\n")
    assert b"`sh` timed out after 0.5s" in err


async def test_connection_failures_exit_255_with_a_hint() -> None:
    code, _, err = await _cli("run", "--url", "ws://127.0.0.1:1", "--", "true")
    assert code == 255
    assert b"exec-server: cannot connect to ws://127.0.0.1:1:" in err
    assert b"hint: is an exec-server running there?" in err


@pytest.mark.parametrize("size", [0, 1, 8 * 1024 * 1024, 20 * 1024 * 1024 + 3])
async def test_cp_both_ways_is_checksum_verified(url: str, tmp_path: Path, size: int) -> None:
    source = tmp_path / "source.bin"
    source.write_bytes(os.urandom(size))
    remote = tmp_path / "remote" / "copy.bin"
    remote.parent.mkdir()
    code, _, err = await _cli("cp", "--url", url, str(source), f"env:{remote}")
    assert code == 0, err
    assert remote.read_bytes() == source.read_bytes()
    back = tmp_path / "back.bin"
    code, _, err = await _cli("cp", "--url", url, f"env:{remote}", str(back))
    assert code == 0, err
    assert (
        hashlib.sha256(back.read_bytes()).digest() == hashlib.sha256(source.read_bytes()).digest()
    )
    assert not list(tmp_path.glob(".*.part"))


async def test_cp_errors_are_clear(url: str, tmp_path: Path) -> None:
    code, _, err = await _cli("cp", "--url", url, "env:/no/such/file", str(tmp_path / "x"))
    assert code == 1
    assert b"exec-server: cannot read env:/no/such/file: no such file on the environment" in err
    assert not (tmp_path / "x").exists() and not list(tmp_path.glob(".*.part"))
    source = tmp_path / "src.txt"
    source.write_text("data")
    code, _, err = await _cli("cp", "--url", url, str(source), "env:/no/such/dir/f")
    assert code == 1
    assert b"cannot write env:/no/such/dir/f: the directory /no/such/dir does not exist" in err
    assert b"hint: create it first: exec-server run -- mkdir -p /no/such/dir" in err
    code, _, err = await _cli("cp", "--url", url, str(tmp_path / "missing"), "env:/tmp/x")
    assert code == 1 and f"cannot read {tmp_path / 'missing'}".encode() in err
    code, _, err = await _cli("cp", "--url", url, str(tmp_path), "env:/tmp/x")
    assert code == 2 and b"is a directory" in err
    code, _, err = await _cli("cp", "--url", url, "a", "b")
    assert code == 2 and b"exactly one of SOURCE and DESTINATION" in err


async def test_cp_refuses_a_directory_destination_and_leaves_it_alone(
    url: str, tmp_path: Path
) -> None:
    source = tmp_path / "src.txt"
    source.write_text("data")
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "kept").write_text("kept")
    code, _, err = await _cli("cp", "--url", url, str(source), f"env:{dest}")
    assert code == 1
    assert f"exec-server: env:{dest} is a directory; cp copies files".encode() in err
    assert f"hint: to copy into it, end it with a slash: env:{dest}/".encode() in err
    assert sorted(p.name for p in dest.iterdir()) == ["kept"]
    code, _, _ = await _cli("cp", "--url", url, str(source), f"env:{dest}/")
    assert code == 0 and (dest / "src.txt").read_text() == "data"


def test_relay_status_lines(capsys: pytest.CaptureFixture[str]) -> None:
    for status in (
        RelayStatus("offline", grace_s=30.0),
        RelayStatus("online"),
        RelayStatus("reconnecting", grace_s=25.0, detail="relay websocket closed (code 1006)"),
        RelayStatus("reconnected"),
        RelayStatus("gone", detail="the final error says it"),
    ):
        print_relay_status(status)
    assert capsys.readouterr().err.splitlines() == [
        "exec-server: the environment is offline; waiting up to 30s for it",
        "exec-server: the environment is back online",
        "exec-server: lost the rendezvous (relay websocket closed (code 1006)); reconnecting",
        "exec-server: reconnected to the rendezvous",
    ]


@pytest.mark.slow
@pytest.mark.timeout(600)
async def test_cp_one_gib_both_ways(url: str, tmp_path: Path) -> None:
    size = 1024 * 1024 * 1024
    source = tmp_path / "gib.bin"
    digest = hashlib.sha256()
    block = os.urandom(4 * 1024 * 1024)
    with source.open("wb") as fh:
        for i in range(size // len(block)):
            # Vary every block so misplaced chunks cannot cancel out.
            chunk = i.to_bytes(8, "big") + block[8:]
            fh.write(chunk)
            digest.update(chunk)
    remote = tmp_path / "remote-gib.bin"
    code, _, err = await _cli("cp", "--url", url, str(source), f"env:{remote}")
    assert code == 0, err
    assert remote.stat().st_size == size
    back = tmp_path / "back-gib.bin"
    code, _, err = await _cli("cp", "--url", url, f"env:{remote}", str(back))
    assert code == 0, err
    check = hashlib.sha256()
    with back.open("rb") as fh:
        while chunk := fh.read(8 * 1024 * 1024):
            check.update(chunk)
    assert check.hexdigest() == digest.hexdigest()


async def test_envs_lists_as_a_table_and_as_json(tmp_path: Path) -> None:
    rendezvous = RendezvousServer(RendezvousConfig(data_dir=tmp_path / "rdv"))
    base_url = await rendezvous.start("127.0.0.1", 0)
    try:
        async with RegistryClient(base_url, rendezvous.token) as registry:
            await registry.register("env-a", name="laptop")
        token_file = tmp_path / "rdv" / "token"
        code, out, err = await _cli(
            "envs", "--rendezvous", base_url, "--token-file", str(token_file), "--json"
        )
        assert code == 0, err
        rows = json.loads(out)
        assert [(r["id"], r["name"], r["online"], r["streams"]) for r in rows] == [
            ("env-a", "laptop", False, 0)
        ]
        code, out, _ = await _cli("envs", "--rendezvous", base_url, "--token-file", str(token_file))
        header, row = out.decode().splitlines()
        assert header.split() == ["ID", "NAME", "ONLINE", "STREAMS", "LAST", "SEEN"]
        assert row.split()[:4] == ["env-a", "laptop", "no", "0"]
        bad = tmp_path / "bad-token"
        bad.write_text("wrong")
        code, _, err = await _cli("envs", "--rendezvous", base_url, "--token-file", str(bad))
        assert code == 1 and b"answered 401 unauthorized" in err and b"hint: check" in err
    finally:
        await rendezvous.close()
    code, _, err = await _cli("envs", "--rendezvous", base_url, "--token-file", str(token_file))
    assert code == 255 and b"cannot reach the rendezvous at" in err


async def test_run_interactive_ends_with_the_command_even_if_stdin_stays_open(url: str) -> None:
    proc = await asyncio.create_subprocess_exec(
        *CLI,
        "run",
        "--url",
        url,
        "-i",
        "--",
        "head",
        "-c",
        "3",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(b"abcdef")
    await proc.stdin.drain()
    # stdin stays open: the CLI must still exit when `head` does.
    assert await asyncio.wait_for(proc.stdout.read(), 30) == b"abc"
    assert await asyncio.wait_for(proc.wait(), 30) == 0
    proc.stdin.close()
