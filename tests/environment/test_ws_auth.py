"""``serve --ws-auth`` as Codex 0.171 has it. The texts are what the 0.171 binary
printed or answered for the same flags and headers (probed side by side)."""

from __future__ import annotations

import asyncio
import hashlib
import sys
import time
from pathlib import Path

import aiohttp
import jwt
import pytest

from exec_server.environment.server import ExecServer, ServerConfig
from exec_server.environment.ws_auth import (
    CapabilityTokenAuth,
    SignedBearerAuth,
    WsAuthConfigError,
    build_ws_auth,
    is_loopback_host,
)

SECRET = b"shared-secret-0123456789abcdef0123456789"


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    paths = {
        "tok": tmp_path / "tok",
        "sec": tmp_path / "sec",
        "empty": tmp_path / "empty",
        "short": tmp_path / "short",
    }
    paths["tok"].write_text("sekrit-token\n")
    paths["sec"].write_bytes(SECRET + b"\n")
    paths["empty"].write_text("")
    paths["short"].write_text("short\n")
    return paths


def config_error(**kwargs: object) -> str:
    mode = kwargs.pop("mode", None)
    with pytest.raises(WsAuthConfigError) as info:
        build_ws_auth(mode, **kwargs)  # type: ignore[arg-type]
    return str(info.value)


def test_configuration_errors_in_0171_words(files: dict[str, Path], tmp_path: Path) -> None:
    assert config_error(mode="capability-token") == (
        "`--ws-token-file` or `--ws-token-sha256` is required when "
        "`--ws-auth capability-token` is set"
    )
    assert config_error(mode="capability-token", token_file=tmp_path / "nope") == (
        f"failed to read websocket auth secret {tmp_path / 'nope'}: "
        "No such file or directory (os error 2)"
    )
    assert config_error(mode="capability-token", token_sha256="zz") == (
        "--ws-token-sha256 must be a 64-character hex SHA-256 digest"
    )
    assert config_error(mode="capability-token", token_sha256="ab", token_file=files["tok"]) == (
        "`--ws-token-file` and `--ws-token-sha256` are mutually exclusive"
    )
    assert config_error(token_file=files["tok"]) == (
        "websocket auth flags require `--ws-auth capability-token` or "
        "`--ws-auth signed-bearer-token`"
    )
    assert config_error(mode="signed-bearer-token") == (
        "`--ws-shared-secret-file` is required when `--ws-auth signed-bearer-token` is set"
    )
    assert config_error(
        mode="signed-bearer-token", shared_secret_file=files["sec"], token_file=files["tok"]
    ) == (
        "`--ws-token-file` and `--ws-token-sha256` require `--ws-auth capability-token`, "
        "not `signed-bearer-token`"
    )
    assert config_error(mode="capability-token", token_file=files["empty"]) == (
        f"websocket auth secret {files['empty']} must not be empty"
    )
    assert config_error(mode="signed-bearer-token", shared_secret_file=files["short"]) == (
        f"signed websocket bearer secret {files['short']} must be at least 32 bytes"
    )


def test_capability_token(files: dict[str, Path]) -> None:
    auth = build_ws_auth("capability-token", token_file=files["tok"])
    assert isinstance(auth, CapabilityTokenAuth)
    digest = hashlib.sha256(b"sekrit-token").hexdigest()
    assert build_ws_auth("capability-token", token_sha256=digest) == auth
    assert auth.refusal(None) == "missing websocket bearer token"
    assert auth.refusal("Bearer wrong") == "invalid websocket bearer token"
    assert auth.refusal("Basic x") == "invalid authorization header"
    for ok in ("Bearer sekrit-token", "bearer sekrit-token", "Bearer  sekrit-token"):
        assert auth.refusal(ok) is None


def test_signed_bearer_token(files: dict[str, Path]) -> None:
    auth = build_ws_auth(
        "signed-bearer-token",
        shared_secret_file=files["sec"],
        issuer="iss1",
        audience="aud1",
        max_clock_skew_s=5,
    )
    assert isinstance(auth, SignedBearerAuth)
    now = int(time.time())

    def token(claims: dict[str, object], key: bytes = SECRET, alg: str = "HS256") -> str:
        return "Bearer " + jwt.encode(claims, key, algorithm=alg)

    good = {"iss": "iss1", "aud": "aud1", "exp": now + 60}
    assert auth.refusal(token(good)) is None
    assert auth.refusal(token({**good, "exp": now - 2})) is None  # within the skew
    cases = {
        "invalid websocket jwt": [
            token({"iss": "iss1", "aud": "aud1"}),  # no exp
            token(good, key=b"another-secret-0123456789abcdef012345"),
            token(good, key=SECRET + b"-and-more-for-a-longer-key", alg="HS384"),
            "Bearer not.a.jwt",
        ],
        "expired websocket jwt": [token({**good, "exp": now - 60})],
        "websocket jwt audience mismatch": [
            token({**good, "aud": "other"}),
            token({"iss": "iss1", "exp": now + 60}),
        ],
        "websocket jwt issuer mismatch": [
            token({**good, "iss": "x"}),
            token({"aud": "aud1", "exp": now + 60}),
        ],
        "websocket jwt is not valid yet": [token({**good, "nbf": now + 100})],
        "missing websocket bearer token": [None],
    }
    for reason, headers in cases.items():
        for header in headers:
            assert auth.refusal(header) == reason, header


def test_loopback_hosts() -> None:
    assert all(is_loopback_host(h) for h in ("127.0.0.1", "127.1.2.3", "::1", "[::1]"))
    assert not any(is_loopback_host(h) for h in ("0.0.0.0", "::", "10.0.0.5", "example"))


async def test_the_upgrade_is_gated_and_readyz_is_not(files: dict[str, Path]) -> None:
    auth = build_ws_auth("capability-token", token_file=files["tok"])
    server = ExecServer(ServerConfig(ws_auth=auth))
    url = await server.start_websocket()
    http = url.replace("ws://", "http://")
    try:
        async with aiohttp.ClientSession() as session:
            async with session.get(http + "/readyz") as resp:
                assert resp.status == 200
            for header, reason in (
                (None, "missing websocket bearer token"),
                ("Bearer nope", "invalid websocket bearer token"),
            ):
                headers = {} if header is None else {"Authorization": header}
                with pytest.raises(aiohttp.WSServerHandshakeError) as info:
                    await session.ws_connect(url, headers=headers)
                assert info.value.status == 401
                async with session.get(http + "/", headers=headers) as resp:
                    assert (resp.status, await resp.text()) == (401, reason)
            headers = {"Authorization": "Bearer sekrit-token"}
            async with session.ws_connect(url, headers=headers) as ws:
                await ws.send_json({"id": 1, "method": "initialize", "params": {"clientName": "t"}})
                reply = await ws.receive_json(timeout=10)
                assert "sessionId" in reply["result"]
    finally:
        await server.close()


async def serve_exit(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "exec_server",
        "serve",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(proc.communicate(), 30)
    return proc.returncode or 0, stdout.decode(), stderr.decode()


async def test_serve_refuses_a_non_loopback_listener_without_auth(
    files: dict[str, Path],
) -> None:
    code, out, err = await serve_exit("--listen", "ws://0.0.0.0:0")
    assert code == 2 and out == ""
    assert "refusing to start non-loopback websocket listener 0.0.0.0:0 without auth" in err
    code, out, err = await serve_exit(
        "--listen", "ws://127.0.0.1:0", "--ws-auth", "capability-token"
    )
    assert code == 2 and "`--ws-token-file` or `--ws-token-sha256` is required" in err
    code, out, err = await serve_exit(
        "--token-file",
        str(files["tok"]),
        "--ws-auth",
        "capability-token",
        "--ws-token-file",
        str(files["tok"]),
    )
    assert code == 2 and "--token-file cannot be combined with --ws-auth" in err
