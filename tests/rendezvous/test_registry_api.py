"""The registry HTTP contract: what Codex 0.133's executor and our own clients speak."""

from __future__ import annotations

import json
import stat
import time
from pathlib import Path

import aiohttp
import pytest
from codex_auth import write_codex_auth_json
from rendezvous_support import TOKEN, MakeRendezvous, auth, dial, query_param, register, scrape

from exec_server.rendezvous import RendezvousServer
from exec_server.transport.harness_relay import is_rendezvous_harness_url


@pytest.mark.parametrize("flavour", ["environment", "executor"])
async def test_register_without_body_returns_id_and_signed_environment_url(
    rendezvous: RendezvousServer, http: aiohttp.ClientSession, flavour: str
) -> None:
    # Exactly what Codex 0.133 sends: POST, no body, no content-type, bearer + account id.
    async with http.post(
        f"{rendezvous.base_url}/cloud/{flavour}/exec-mux_test-1/register",
        headers={**auth(), "chatgpt-account-id": "acct-1", "accept": "*/*"},
        skip_auto_headers=["Content-Type", "User-Agent"],
    ) as resp:
        assert resp.status == 200
        body = await resp.json()
    assert set(body) == {f"{flavour}_id", "url"}
    assert body[f"{flavour}_id"] == "exec-mux_test-1"
    url = body["url"]
    port = rendezvous.base_url.rsplit(":", 1)[1]
    assert url.startswith(f"ws://127.0.0.1:{port}/relay/exec-mux_test-1?")
    assert query_param(url, "role") == "environment"
    for key in ("exp", "nonce", "sig"):
        assert query_param(url, key)
    assert int(query_param(url, "exp")) > time.time()
    ws = await dial(http, url)  # the URL is usable verbatim
    await ws.close()


@pytest.mark.parametrize(
    "headers",
    [{}, auth("wrong-token"), {"Authorization": f"Basic {TOKEN}"}, {"Authorization": "Bearer"}],
    ids=["missing", "wrong", "wrong-scheme", "empty"],
)
@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/cloud/environment/env-1/register"),
        ("POST", "/cloud/executor/env-1/register"),
        ("POST", "/cloud/environment/env-1/connect"),
        ("GET", "/cloud/environments"),
    ],
)
async def test_bad_bearer_is_401_with_error_shape(
    rendezvous: RendezvousServer,
    http: aiohttp.ClientSession,
    headers: dict[str, str],
    method: str,
    path: str,
) -> None:
    async with http.request(method, rendezvous.base_url + path, headers=headers) as resp:
        assert resp.status == 401
        assert resp.headers["WWW-Authenticate"] == "Bearer"
        body = await resp.json()
    assert body == {"error": {"code": "unauthorized", "message": "missing or invalid bearer token"}}


@pytest.mark.parametrize(
    "raw_id",
    ["", "a%20b", "a%2Fb", "x" * 257, "caf%C3%A9", "a.b", "%20env"],
    ids=["empty", "space", "slash", "too-long", "non-ascii", "dot", "leading-space"],
)
@pytest.mark.parametrize("flavour", ["environment", "executor"])
async def test_invalid_ids_are_400(
    rendezvous: RendezvousServer, http: aiohttp.ClientSession, raw_id: str, flavour: str
) -> None:
    for action in ("register", "connect"):
        url = aiohttp.client.URL(
            f"{rendezvous.base_url}/cloud/{flavour}/{raw_id}/{action}", encoded=True
        )
        async with http.post(url, headers=auth()) as resp:
            assert resp.status == 400, (action, raw_id)
            body = await resp.json()
        assert body["error"]["code"] == f"invalid_{flavour}_id"
        assert "[A-Za-z0-9_-]" in body["error"]["message"]


async def test_longest_valid_id_is_accepted(
    rendezvous: RendezvousServer, http: aiohttp.ClientSession
) -> None:
    await register(http, rendezvous.base_url, "A" * 256)


async def test_names_and_environment_listing(
    rendezvous: RendezvousServer, http: aiohttp.ClientSession
) -> None:
    base = rendezvous.base_url
    async with http.post(
        f"{base}/cloud/environment/env-q/register", params={"name": "laptop"}, headers=auth()
    ) as resp:
        assert resp.status == 200
    async with http.post(
        f"{base}/cloud/environment/env-b/register", json={"name": "build box"}, headers=auth()
    ) as resp:
        assert resp.status == 200
    url = await register(http, base, "env-b")  # Codex re-registers nameless: name is kept
    await register(http, base, "env-c")
    ws = await dial(http, url)
    try:
        async with http.get(f"{base}/cloud/environments", headers=auth()) as resp:
            assert resp.status == 200
            listing = await resp.json()
    finally:
        await ws.close()
    assert [row["id"] for row in listing] == ["env-b", "env-c", "env-q"]
    rows = {row["id"]: row for row in listing}
    assert rows["env-b"]["name"] == "build box"
    assert rows["env-q"]["name"] == "laptop"
    assert rows["env-c"]["name"] is None
    assert rows["env-b"]["online"] is True and rows["env-q"]["online"] is False
    for row in listing:
        assert set(row) == {"id", "name", "online", "streams", "last_seen"}
        assert row["streams"] == 0
        assert row["last_seen"].endswith("Z")


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b"not json", "invalid_request"),
        (b"[1, 2]", "invalid_request"),
        (b'{"name": 5}', "invalid_request"),
        (b'{"name": "a\\u0000b"}', "invalid_request"),
        (
            json.dumps({"security_profile": "noise_hybrid_ik_v1", "executor_public_key": {}}),
            "invalid_executor_public_key",
        ),
        (
            json.dumps({"security_profile": "noise_hybrid_ik_v2", "executor_public_key": {}}),
            "unsupported_security_profile",
        ),
    ],
)
async def test_bad_registration_bodies_are_400(
    rendezvous: RendezvousServer, http: aiohttp.ClientSession, body: bytes | str, code: str
) -> None:
    async with http.post(
        f"{rendezvous.base_url}/cloud/environment/env-1/register",
        data=body,
        headers={**auth(), "Content-Type": "application/json"},
    ) as resp:
        assert resp.status == 400
        assert (await resp.json())["error"]["code"] == code


async def test_connect_returns_signed_harness_url(
    rendezvous: RendezvousServer, http: aiohttp.ClientSession
) -> None:
    before = time.time()
    async with http.post(
        f"{rendezvous.base_url}/cloud/environment/env-1/connect",
        json={"lifetime_s": 120},
        headers=auth(),
    ) as resp:
        assert resp.status == 200
        body = await resp.json()
    assert body["environment_id"] == "env-1"
    assert body["online"] is False
    url = body["url"]
    assert query_param(url, "role") == "harness"
    assert is_rendezvous_harness_url(url)  # what Codex and our client key the relay on
    assert before + 120 <= int(query_param(url, "exp")) <= time.time() + 121
    assert body["expires_at"].endswith("Z")
    # Without a body: the default lifetime (24 h).
    async with http.post(
        f"{rendezvous.base_url}/cloud/environment/env-1/connect", headers=auth()
    ) as resp:
        url = (await resp.json())["url"]
    assert int(query_param(url, "exp")) >= before + 24 * 3600


@pytest.mark.parametrize("lifetime", [0, -5, "10", True, 10**9, None])
async def test_connect_rejects_bad_lifetimes(
    rendezvous: RendezvousServer, http: aiohttp.ClientSession, lifetime: object
) -> None:
    async with http.post(
        f"{rendezvous.base_url}/cloud/environment/env-1/connect",
        json={"lifetime_s": lifetime},
        headers=auth(),
    ) as resp:
        assert resp.status == 400
        assert (await resp.json())["error"]["code"] == "invalid_request"


async def test_health_and_unknown_paths(
    rendezvous: RendezvousServer, http: aiohttp.ClientSession
) -> None:
    for path in ("/readyz", "/livez"):
        async with http.get(rendezvous.base_url + path) as resp:
            assert resp.status == 200
    async with http.get(rendezvous.base_url + "/nope") as resp:
        assert resp.status == 404
        assert (await resp.json())["error"]["code"] == "not_found"
    async with http.get(rendezvous.base_url + "/cloud/environment/env-1/register") as resp:
        assert resp.status == 405
        assert "error" in await resp.json()


async def test_registration_outcomes_are_counted(
    rendezvous: RendezvousServer, http: aiohttp.ClientSession
) -> None:
    base = rendezvous.base_url
    await register(http, base, "env-1")
    await register(http, base, "env-1", flavour="executor")
    async with http.post(f"{base}/cloud/environment/env-1/register") as resp:
        assert resp.status == 401
    async with http.post(f"{base}/cloud/environment/a.b/register", headers=auth()) as resp:
        assert resp.status == 400
    samples = await scrape(http, base)
    prefix = "exec_server_rendezvous_registrations_total"
    assert samples[f'{prefix}{{result="ok"}}'] == 2
    assert samples[f'{prefix}{{result="unauthorized"}}'] == 1
    assert samples[f'{prefix}{{result="invalid_environment_id"}}'] == 1


async def test_codex_auth_json_token_is_accepted_as_bearer(
    make_rendezvous: MakeRendezvous, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    codex_home = tmp_path / "codex-home"
    jwt = write_codex_auth_json(codex_home, account_id="acct-7")
    path = codex_home / "auth.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    document = json.loads(path.read_text())
    assert document["auth_mode"] == "chatgpt"
    assert document["tokens"]["access_token"] == jwt
    assert document["tokens"]["account_id"] == "acct-7"
    header, claims, signature = jwt.split(".")
    assert signature  # Codex rejects an empty signature segment (it never checks it)
    assert json.loads(_b64decode(header)) == {"alg": "none", "typ": "JWT"}
    decoded = json.loads(_b64decode(claims))
    assert decoded["https://api.openai.com/auth"]["chatgpt_account_id"] == "acct-7"
    assert decoded["exp"] > time.time()

    server = await make_rendezvous(token=jwt)
    await register(http, server.base_url, "env-codex", token=jwt)


def _b64decode(part: str) -> bytes:
    import base64

    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


async def test_unexpected_failures_keep_the_error_shape(
    rendezvous: RendezvousServer, http: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(*args: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(rendezvous.state, "upsert_registration", broken)
    async with http.post(
        f"{rendezvous.base_url}/cloud/environment/env-1/register", headers=auth()
    ) as resp:
        assert resp.status == 500
        assert await resp.json() == {
            "error": {"code": "internal_error", "message": "internal rendezvous error"}
        }
