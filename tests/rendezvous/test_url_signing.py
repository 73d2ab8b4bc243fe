"""Signed relay URLs: the signer itself, and refusal before the websocket upgrade."""

from __future__ import annotations

import hmac
import re
from urllib.parse import urlsplit

import aiohttp
import pytest
from rendezvous_support import dial, harness_url, query_param, register, scrape

from exec_server.rendezvous import (
    RendezvousServer,
    UrlRejected,
    UrlRejectReason,
    UrlRole,
    UrlSigner,
    sign_url,
    verify_url,
)
from exec_server.rendezvous import url_signing as url_signing_module

SECRET = b"s" * 32
NOW = 1_800_000_000.0


def _signed(role: UrlRole = UrlRole.ENVIRONMENT, lifetime_s: float = 60) -> str:
    return UrlSigner(SECRET).sign("ws://rdv.test:1", role, "env-1", lifetime_s=lifetime_s, now=NOW)


def _verify(url: str, now: float = NOW, secret: bytes = SECRET) -> object:
    parts = urlsplit(url)
    environment_id = parts.path.rsplit("/", 1)[1]
    return UrlSigner(secret).verify(environment_id, parts.query, now=now)


def _swap(url: str, key: str, value: str) -> str:
    return re.sub(rf"([?&]{key}=)[^&]*", rf"\g<1>{value}", url)


def test_round_trip_carries_role_environment_expiry_and_nonce() -> None:
    url = _signed(UrlRole.HARNESS, lifetime_s=59.2)
    assert url.startswith("ws://rdv.test:1/relay/env-1?role=harness&exp=")
    grant = _verify(url)
    assert grant == url_signing_module.SignedGrant(
        UrlRole.HARNESS, "env-1", int(NOW) + 60, query_param(url, "nonce")
    )
    assert _signed() != _signed()  # fresh nonce every time


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda u: _swap(u, "role", "harness"), UrlRejectReason.INVALID_SIGNATURE),
        (lambda u: _swap(u, "exp", str(int(NOW) + 10**6)), UrlRejectReason.INVALID_SIGNATURE),
        (lambda u: _swap(u, "nonce", "A" * 22), UrlRejectReason.INVALID_SIGNATURE),
        (lambda u: _swap(u, "sig", "A" * 43), UrlRejectReason.INVALID_SIGNATURE),
        (lambda u: u.replace("/relay/env-1", "/relay/env-2"), UrlRejectReason.INVALID_SIGNATURE),
        (lambda u: re.sub(r"&sig=[^&]*", "", u), UrlRejectReason.MISSING_SIGNATURE),
        (lambda u: u.split("?")[0] + "?role=environment", UrlRejectReason.MISSING_SIGNATURE),
        (lambda u: _swap(u, "sig", "not base64!"), UrlRejectReason.MALFORMED),
        (lambda u: _swap(u, "sig", "AAAA"), UrlRejectReason.MALFORMED),
        (lambda u: _swap(u, "exp", "soon"), UrlRejectReason.MALFORMED),
        (lambda u: u + "&sig=" + query_param(u, "sig"), UrlRejectReason.MALFORMED),
    ],
    ids=[
        "role",
        "expiry",
        "nonce",
        "sig",
        "environment",
        "no-sig",
        "bare",
        "sig-charset",
        "sig-length",
        "exp-text",
        "repeated",
    ],
)
def test_tampering_is_rejected(mutate: object, reason: UrlRejectReason) -> None:
    url = mutate(_signed())  # type: ignore[operator]
    with pytest.raises(UrlRejected) as info:
        _verify(url)
    assert info.value.reason is reason


def test_other_secret_and_expiry() -> None:
    url = _signed(lifetime_s=60)
    with pytest.raises(UrlRejected) as info:
        _verify(url, secret=b"t" * 32)
    assert info.value.reason is UrlRejectReason.INVALID_SIGNATURE
    _verify(url, now=NOW + 59)
    with pytest.raises(UrlRejected) as info:
        _verify(url, now=NOW + 61)
    assert info.value.reason is UrlRejectReason.EXPIRED
    assert UrlRejectReason.EXPIRED.http_status == 401
    assert UrlRejectReason.INVALID_SIGNATURE.http_status == 403


def test_signature_comparison_is_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(url_signing_module.hmac, "compare_digest", spy)
    url = _signed()
    _verify(url)
    with pytest.raises(UrlRejected):
        _verify(_swap(url, "sig", "B" * 43))
    assert len(calls) == 2 and all(len(a) == len(b) == 32 for a, b in calls)


def test_one_shot_helpers() -> None:
    url = sign_url(
        SECRET, "wss://rdv.test/prefix/", UrlRole.HARNESS, "env-9", lifetime_s=5, now=NOW
    )
    assert url.startswith("wss://rdv.test/prefix/relay/env-9?role=harness&")
    grant = verify_url(SECRET, url, now=NOW)
    assert (grant.role, grant.environment_id) == (UrlRole.HARNESS, "env-9")
    with pytest.raises(UrlRejected):
        verify_url(SECRET, "ws://rdv.test/elsewhere?role=harness", now=NOW)


def test_short_secret_is_refused() -> None:
    with pytest.raises(ValueError):
        UrlSigner(b"short")


# --- over HTTP: refused before the upgrade -------------------------------------------


async def _status_of(http: aiohttp.ClientSession, url: str) -> tuple[int, str]:
    with pytest.raises(aiohttp.WSServerHandshakeError) as info:
        await dial(http, url)
    http_url = url.replace("ws://", "http://", 1)
    async with http.get(http_url) as resp:  # same refusal, readable body
        code = (await resp.json())["error"]["code"]
    return info.value.status, code


async def test_forged_tampered_expired_and_wrong_role_urls_are_refused(
    rendezvous: RendezvousServer, http: aiohttp.ClientSession
) -> None:
    base = rendezvous.base_url
    good = await register(http, base, "env-1")
    harness = await harness_url(http, base, "env-1")
    forged = UrlSigner(b"x" * 32).sign(
        good.split("/relay/")[0], UrlRole.ENVIRONMENT, "env-1", lifetime_s=60, now=NOW + 10**8
    )
    expired = rendezvous.environment_url("env-1", lifetime_s=1, now=1_000_000_000)
    cases = {
        "forged": (forged, 403, "invalid_signature"),
        "tampered-exp": (_swap(good, "exp", "9999999999"), 403, "invalid_signature"),
        "wrong-role": (_swap(harness, "role", "environment"), 403, "invalid_signature"),
        "other-environment": (harness.replace("/env-1?", "/env-2?"), 403, "invalid_signature"),
        "expired": (expired, 401, "expired"),
        "missing-signature": (re.sub(r"&sig=[^&]*", "", good), 401, "missing_signature"),
        "no-query": (good.split("?")[0], 401, "missing_signature"),
    }
    for name, (url, status, code) in cases.items():
        assert await _status_of(http, url) == (status, code), name
    samples = await scrape(http, base)
    prefix = "exec_server_rendezvous_websocket_upgrades_total"
    assert samples[f'{prefix}{{result="invalid_signature"}}'] == 2 * 4
    assert samples[f'{prefix}{{result="expired"}}'] == 2
    assert samples[f'{prefix}{{result="missing_signature"}}'] == 2 * 2
    assert samples[f'{prefix}{{result="accepted"}}'] == 0
    assert samples['exec_server_rendezvous_sockets_accepted_total{role="environment"}'] == 0
    # The genuine ones still work.
    for url in (good, harness):
        ws = await dial(http, url)
        await ws.close()


async def test_plain_http_get_on_a_valid_url_is_not_an_upgrade(
    rendezvous: RendezvousServer, http: aiohttp.ClientSession
) -> None:
    url = await register(http, rendezvous.base_url, "env-1")
    async with http.get(url.replace("ws://", "http://", 1)) as resp:
        assert resp.status == 400
        assert (await resp.json())["error"]["code"] == "websocket_required"
