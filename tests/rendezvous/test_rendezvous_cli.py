"""``exec-server rendezvous`` and ``exec-server harness-url`` as processes."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from exec_server.transport.harness_relay import is_rendezvous_harness_url

START_TIMEOUT_S = 20.0


async def _exec(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "exec_server",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    out, err = await asyncio.wait_for(proc.communicate(), START_TIMEOUT_S)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


@pytest.fixture
async def cli_rendezvous(tmp_path: Path) -> AsyncIterator[tuple[str, Path]]:
    data_dir = tmp_path / "data"
    env = {k: v for k, v in os.environ.items() if k != "EXEC_SERVER_RENDEZVOUS_TOKEN"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "exec_server",
        "--log-level",
        "info",
        "rendezvous",
        "--listen",
        "http://127.0.0.1:0",
        "--data-dir",
        str(data_dir),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    assert proc.stdout is not None and proc.stderr is not None
    try:
        line = (await asyncio.wait_for(proc.stdout.readline(), START_TIMEOUT_S)).decode()
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+\n", line), line
        yield line.strip(), data_dir
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        rest, err = await asyncio.wait_for(proc.communicate(), START_TIMEOUT_S)
    assert proc.returncode == 0, err.decode()
    assert rest == b"", "stdout carries exactly one line"
    token = (data_dir / "token").read_text().strip()
    assert token not in err.decode()
    assert str(data_dir / "token") in err.decode()


async def test_rendezvous_prints_base_url_and_harness_url_prints_a_signed_url(
    cli_rendezvous: tuple[str, Path],
) -> None:
    base_url, data_dir = cli_rendezvous
    token_file = data_dir / "token"
    code, out, err = await _exec(
        "harness-url",
        "--rendezvous",
        base_url,
        "--environment-id",
        "env-1",
        "--lifetime",
        "60",
        "--token-file",
        str(token_file),
    )
    assert code == 0, err
    url = out.strip()
    assert url.startswith(base_url.replace("http://", "ws://") + "/relay/env-1?")
    assert is_rendezvous_harness_url(url)

    env = {**os.environ, "EXEC_SERVER_RENDEZVOUS_TOKEN": token_file.read_text().strip()}
    code, out, err = await _exec(
        "harness-url", "--rendezvous", base_url, "--environment-id", "env-1", env=env
    )
    assert code == 0 and "role=harness" in out, err

    env["EXEC_SERVER_RENDEZVOUS_TOKEN"] = "wrong"
    code, out, err = await _exec(
        "harness-url", "--rendezvous", base_url, "--environment-id", "env-1", env=env
    )
    assert code == 1 and out == ""
    assert "harness URL request failed (401): unauthorized" in err


async def test_bad_arguments_are_usage_errors() -> None:
    code, _, err = await _exec("rendezvous", "--listen", "ws://127.0.0.1:0")
    assert code == 2 and "expected `http://IP:PORT`" in err
    env = {k: v for k, v in os.environ.items() if k != "EXEC_SERVER_RENDEZVOUS_TOKEN"}
    code, _, err = await _exec(
        "harness-url", "--rendezvous", "http://127.0.0.1:9", "--environment-id", "a b", env=env
    )
    assert code == 2 and "invalid --environment-id" in err
    code, _, err = await _exec(
        "harness-url", "--rendezvous", "http://127.0.0.1:9", "--environment-id", "ab", env=env
    )
    assert code == 2 and "EXEC_SERVER_RENDEZVOUS_TOKEN" in err
