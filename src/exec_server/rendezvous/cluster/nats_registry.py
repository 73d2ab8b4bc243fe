"""The cold-path records of a cluster, in JetStream KV: :class:`SharedRegistry`.

What any node needs to serve any request of the registry API, read on demand (no
watch, no cache but the secrets'):

* ``secrets``: named random secrets (URL signing, the bearer token unless one is
  configured, the authorization epoch), hex in the bucket. The first node to create one
  wins; everyone then reads the same value.
* ``registrations``: registered environments (name, created, last seen), updated with
  compare-and-set so concurrent registrations on two nodes keep ``created``.
* ``noise``: the executor public key of each Noise registration.
* ``authorizations``: harness key authorization nonces already used, written with a
  create (the first ``/validate`` of a nonce on any node wins); they age out after
  ``authorization_ttl_s``.
"""

from __future__ import annotations

import contextlib
import re
import secrets as secrets_module

from nats.js.errors import KeyWrongLastSequenceError

from ..registration_store import Registration
from ..url_signing import MIN_SECRET_BYTES
from .kv_buckets import Buckets
from .nats_connection import NatsClusterConfig
from .records import NoiseRecord, RegistrationRecord, encode_record
from .state import Conflict, check_secret_name

__all__ = ["SharedRegistry"]

_MAX_CAS_ATTEMPTS = 16
_NONCE_KEY = re.compile(r"^[A-Za-z0-9_-]{1,128}$")


class SharedRegistry:
    """Secrets, registrations, Noise keys and used authorizations (module docstring)."""

    def __init__(self, buckets: Buckets, config: NatsClusterConfig) -> None:
        self._buckets = buckets
        self._config = config
        self._secrets: dict[str, bytes] = {}

    async def secret(self, name: str, size: int = 32) -> bytes:
        check_secret_name(name)
        cached = self._secrets.get(name)
        if cached is not None:
            return cached
        if size < MIN_SECRET_BYTES:
            raise ValueError(f"secrets are at least {MIN_SECRET_BYTES} bytes")
        kv = self._buckets["secrets"]
        # Whoever creates it first wins; everyone then reads the same value.
        with contextlib.suppress(KeyWrongLastSequenceError):
            await kv.create(name, secrets_module.token_hex(size).encode())
        entry = await kv.get(name)
        try:
            value = bytes.fromhex((entry.value or b"").decode())
        except ValueError:
            value = b""
        if len(value) < MIN_SECRET_BYTES:
            raise ValueError(
                f"secret {name!r} in {self._config.bucket('secrets')} is not a hex secret "
                f"of at least {MIN_SECRET_BYTES} bytes"
            )
        return self._secrets.setdefault(name, value)

    # --- registrations -------------------------------------------------------------------

    async def upsert_registration(
        self, environment_id: str, name: str | None, now: float
    ) -> Registration:
        kv = self._buckets["registrations"]
        for _ in range(_MAX_CAS_ATTEMPTS):
            current = await self._buckets.get("registrations", environment_id, RegistrationRecord)
            if current is None:
                record = RegistrationRecord(name, now, now)
            else:
                old = current.value
                record = RegistrationRecord(
                    name if name is not None else old.name, old.created, now
                )
            try:
                if current is None:
                    await kv.create(environment_id, encode_record(record))
                else:
                    await kv.update(environment_id, encode_record(record), last=current.revision)
            except KeyWrongLastSequenceError:
                continue
            return Registration(environment_id, record.name, record.created, record.last_seen)
        raise Conflict(f"registration {environment_id}")

    async def get_registration(self, environment_id: str) -> Registration | None:
        current = await self._buckets.get("registrations", environment_id, RegistrationRecord)
        if current is None:
            return None
        record = current.value
        return Registration(environment_id, record.name, record.created, record.last_seen)

    async def list_registrations(self) -> list[Registration]:
        rows = await self._buckets.snapshot("registrations", RegistrationRecord)
        return [
            Registration(key, value.value.name, value.value.created, value.value.last_seen)
            for key, value in sorted(rows.items())
        ]

    async def put_noise_registration(
        self, environment_id: str, registration_id: str, key_json: str
    ) -> None:
        record = NoiseRecord(registration_id, key_json)
        await self._buckets["noise"].put(environment_id, encode_record(record))

    async def get_noise_registration(self, environment_id: str) -> tuple[str, str] | None:
        current = await self._buckets.get("noise", environment_id, NoiseRecord)
        if current is None:
            return None
        return current.value.registration_id, current.value.executor_public_key

    async def delete_noise_registration(self, environment_id: str) -> None:
        await self._buckets.delete_if("noise", environment_id, None)

    async def consume_authorization(self, nonce: str, stream_id: str) -> bool:
        if not _NONCE_KEY.match(nonce):
            return False
        try:
            await self._buckets["authorizations"].create(nonce, stream_id.encode())
        except KeyWrongLastSequenceError:
            return False
        return True
