"""The Noise registry contract of our rendezvous: /register with a key, /connect bundles,
/validate, and harness key authorizations (forged, replayed, expired, misbound)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
import pytest
from rendezvous_support import TOKEN, MakeRendezvous, auth, scrape

from exec_server.relay.noise import NoiseIdentity, NoisePublicKey
from exec_server.rendezvous import RendezvousServer
from exec_server.rendezvous.noise_registry import (
    AuthorizationRefused,
    HarnessKeyAuthorizer,
    RefusalReason,
)

SECRET = b"s" * 32
EXECUTOR = NoiseIdentity.generate().public_key
HARNESS = NoiseIdentity.generate().public_key
OTHER = NoiseIdentity.generate().public_key


def verify(authorizer: HarnessKeyAuthorizer, token: str, **overrides: Any) -> None:
    args: dict[str, Any] = {
        "environment_id": "env-1",
        "registration_id": "reg_1",
        "harness_key": HARNESS,
        "stream_id": "s-1",
        "now": 1000.0,
    }
    args.update(overrides)
    authorizer.verify(token, **args)


def refused(authorizer: HarnessKeyAuthorizer, token: str, **overrides: Any) -> RefusalReason:
    with pytest.raises(AuthorizationRefused) as info:
        verify(authorizer, token, **overrides)
    return info.value.reason


# --------------------------------------------------------------------------- authorizer


def test_an_authorization_is_accepted_once_for_its_key_registration_and_environment() -> None:
    authorizer = HarnessKeyAuthorizer(SECRET, lifetime_s=60)
    token = authorizer.issue("env-1", "reg_1", HARNESS, now=1000.0)
    assert token.startswith("v1.") and len(token) < 4096
    for wrong in (
        {"environment_id": "env-2"},
        {"registration_id": "reg_2"},
        {"harness_key": OTHER},
    ):
        assert refused(authorizer, token, **wrong) is RefusalReason.INVALID_SIGNATURE
    verify(authorizer, token)
    assert refused(authorizer, token) is RefusalReason.REPLAYED
    assert refused(authorizer, token, stream_id="s-2") is RefusalReason.REPLAYED


def test_forged_tampered_and_foreign_authorizations_are_refused() -> None:
    authorizer = HarnessKeyAuthorizer(SECRET, epoch="e1")
    token = authorizer.issue("env-1", "reg_1", HARNESS, now=1000.0)
    _, expiry, nonce, mac = token.split(".")
    assert refused(authorizer, f"v1.{int(expiry) + 3600}.{nonce}.{mac}") is (
        RefusalReason.INVALID_SIGNATURE
    )
    assert refused(authorizer, f"v1.{expiry}.{'A' * 22}.{mac}") is RefusalReason.INVALID_SIGNATURE
    assert refused(authorizer, f"v1.{expiry}.{nonce}.{'A' * 43}") is RefusalReason.INVALID_SIGNATURE
    other_secret = HarnessKeyAuthorizer(b"t" * 32, epoch="e1")
    assert refused(other_secret, token) is RefusalReason.INVALID_SIGNATURE
    restarted = HarnessKeyAuthorizer(SECRET, epoch="e2")  # same secret, new process
    assert refused(restarted, token) is RefusalReason.INVALID_SIGNATURE
    for garbage in ("", "harness-key-authorization", token + "x", "v2" + token[2:]):
        assert refused(authorizer, garbage) is RefusalReason.MALFORMED
    verify(authorizer, token)  # the genuine one still works after all that


def test_authorizations_expire_and_consumed_nonces_are_forgotten_after_expiry() -> None:
    authorizer = HarnessKeyAuthorizer(SECRET, lifetime_s=30, max_tracked=2)
    token = authorizer.issue("env-1", "reg_1", HARNESS, now=1000.0)
    assert refused(authorizer, token, now=1031.0) is RefusalReason.EXPIRED
    a = authorizer.issue("env-1", "reg_1", HARNESS, now=1000.0)
    b = authorizer.issue("env-1", "reg_1", HARNESS, now=1000.0)
    c = authorizer.issue("env-1", "reg_1", HARNESS, now=1000.0)
    verify(authorizer, a)
    verify(authorizer, b)
    assert refused(authorizer, c) is RefusalReason.BUSY  # fails closed when full
    later = authorizer.issue("env-1", "reg_1", HARNESS, now=1040.0)
    verify(authorizer, later, now=1040.0)  # a and b expired and were pruned
    assert "consumed=1" in repr(authorizer)


# --------------------------------------------------------------------------- HTTP


async def post(
    http: aiohttp.ClientSession,
    url: str,
    body: Any,
    *,
    token: str = TOKEN,
    headers: dict[str, str] | None = None,
) -> tuple[int, Any]:
    async with http.post(url, json=body, headers={**auth(token), **(headers or {})}) as resp:
        return resp.status, await resp.json()


def noise_body(key: NoisePublicKey = EXECUTOR) -> dict[str, Any]:
    return {"security_profile": "noise_hybrid_ik_v1", "executor_public_key": key.to_json_obj()}


async def register_noise(
    http: aiohttp.ClientSession, base: str, key: NoisePublicKey = EXECUTOR
) -> dict[str, Any]:
    status, body = await post(http, f"{base}/cloud/environment/env-1/register", noise_body(key))
    assert status == 200, body
    return body  # type: ignore[no-any-return]


async def connect(
    http: aiohttp.ClientSession, base: str, key: NoisePublicKey = HARNESS
) -> dict[str, Any]:
    status, body = await post(
        http, f"{base}/cloud/environment/env-1/connect", {"harness_public_key": key.to_json_obj()}
    )
    assert status == 200, body
    return body  # type: ignore[no-any-return]


async def validate(
    http: aiohttp.ClientSession, base: str, bundle: dict[str, Any], **overrides: Any
) -> dict[str, Any]:
    body = {
        "executor_registration_id": bundle["executor_registration_id"],
        "harness_public_key": HARNESS.to_json_obj(),
        "harness_key_authorization": bundle["harness_key_authorization"],
    }
    body.update(overrides)
    status, answer = await post(
        http,
        f"{base}/cloud/environment/env-1/validate",
        body,
        headers={"x-codex-noise-stream-id": "stream-1"},
    )
    assert status == 200, answer
    return answer  # type: ignore[no-any-return]


async def test_noise_register_connect_validate(
    rendezvous: RendezvousServer, http: aiohttp.ClientSession
) -> None:
    base = rendezvous.base_url
    registered = await register_noise(http, base)
    assert set(registered) == {
        "environment_id",
        "url",
        "security_profile",
        "executor_registration_id",
    }
    assert registered["security_profile"] == "noise_hybrid_ik_v1"
    assert registered["executor_registration_id"].startswith("reg_")
    assert "role=environment" in registered["url"]
    bundle = await connect(http, base)
    assert bundle["environment_id"] == "env-1"
    assert bundle["executor_registration_id"] == registered["executor_registration_id"]
    assert NoisePublicKey.from_json_obj(bundle["executor_public_key"]) == EXECUTOR
    assert "role=harness" in bundle["url"]
    assert await validate(http, base, bundle) == {"valid": True}
    assert await validate(http, base, bundle) == {"valid": False, "reason": "replayed"}
    # Wrong key, wrong registration id, forged authorization.
    fresh = await connect(http, base)
    assert await validate(http, base, fresh, harness_public_key=OTHER.to_json_obj()) == {
        "valid": False,
        "reason": "invalid_signature",
    }
    assert await validate(http, base, fresh, executor_registration_id="reg_forged") == {
        "valid": False,
        "reason": "unknown_registration",
    }
    assert await validate(http, base, fresh, harness_key_authorization="trust-me") == {
        "valid": False,
        "reason": "malformed",
    }
    assert await validate(http, base, fresh) == {"valid": True}  # still unused
    samples = await scrape(http, base)
    key = "exec_server_rendezvous_harness_key_validations_total"
    assert samples[f'{key}{{result="valid"}}'] == 2
    assert samples[f'{key}{{result="replayed"}}'] == 1


async def test_registration_ids_follow_the_key_and_legacy_registration_drops_it(
    rendezvous: RendezvousServer, http: aiohttp.ClientSession
) -> None:
    base = rendezvous.base_url
    first = await register_noise(http, base)
    bundle = await connect(http, base)
    assert (await register_noise(http, base))["executor_registration_id"] == (
        first["executor_registration_id"]
    )
    rotated = await register_noise(http, base, NoiseIdentity.generate().public_key)
    assert rotated["executor_registration_id"] != first["executor_registration_id"]
    # Authorizations for the old registration die with it.
    assert await validate(http, base, bundle) == {"valid": False, "reason": "unknown_registration"}
    async with http.post(f"{base}/cloud/environment/env-1/register", headers=auth()) as resp:
        assert resp.status == 200
        assert set(await resp.json()) == {"environment_id", "url"}
    status, body = await post(
        http,
        f"{base}/cloud/environment/env-1/connect",
        {"harness_public_key": HARNESS.to_json_obj()},
    )
    assert (status, body["error"]["code"]) == (409, "no_noise_registration")


@pytest.mark.parametrize(
    ("path", "body", "code"),
    [
        ("connect", {"harness_public_key": {"suite": "x"}}, "invalid_harness_public_key"),
        ("connect", {"harness_public_key": HARNESS.to_json_obj(), "x": 1}, "invalid_request"),
        ("register", {**noise_body(), "extra": True}, "invalid_request"),
        (
            "register",
            {"executor_public_key": EXECUTOR.to_json_obj()},
            "unsupported_security_profile",
        ),
        ("validate", {"harness_key_authorization": 5}, "invalid_request"),
    ],
)
async def test_bad_noise_bodies_are_400(
    rendezvous: RendezvousServer,
    http: aiohttp.ClientSession,
    path: str,
    body: dict[str, Any],
    code: str,
) -> None:
    await register_noise(http, rendezvous.base_url)
    status, answer = await post(http, f"{rendezvous.base_url}/cloud/environment/env-1/{path}", body)
    assert (status, answer["error"]["code"]) == (400, code)


async def test_noise_endpoints_require_the_bearer(
    rendezvous: RendezvousServer, http: aiohttp.ClientSession
) -> None:
    base = rendezvous.base_url
    await register_noise(http, base)
    bundle = await connect(http, base)
    for path, body in (
        ("register", noise_body()),
        ("connect", {"harness_public_key": HARNESS.to_json_obj()}),
        ("validate", {"harness_key_authorization": bundle["harness_key_authorization"]}),
    ):
        status, answer = await post(
            http, f"{base}/cloud/environment/env-1/{path}", body, token="wrong"
        )
        assert (status, answer["error"]["code"]) == (401, "unauthorized")
    assert await validate(http, base, bundle) == {"valid": True}


async def test_noise_registrations_survive_a_restart_with_a_data_dir(
    make_rendezvous: MakeRendezvous, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    first = await make_rendezvous(data_dir=tmp_path)
    registered = await register_noise(http, first.base_url)
    stale = await connect(http, first.base_url)
    await first.close()
    second = await make_rendezvous(data_dir=tmp_path)
    bundle = await connect(http, second.base_url)
    assert bundle["executor_registration_id"] == registered["executor_registration_id"]
    assert NoisePublicKey.from_json_obj(bundle["executor_public_key"]) == EXECUTOR
    assert await validate(http, second.base_url, bundle) == {"valid": True}
    # An authorization from the previous process is refused: its replay state is gone.
    assert await validate(http, second.base_url, stale) == {
        "valid": False,
        "reason": "invalid_signature",
    }
