"""The one client for the registry HTTP API (``exec-server rendezvous`` or Codex's cloud).

Used by the environment's remote mode (``register``), the harness SDK and the CLI
(``connect`` for a harness URL, ``list_environments``). Every failure is one
:class:`RegistryError` carrying the HTTP status, the error body's ``code`` and
``message`` (the registry answers ``{"error": {"code", "message"}}``) and whether
trying again may help; callers decide by those fields, never by reading text.

The API (see :mod:`exec_server.rendezvous.server` for the server side):

``POST {base}/cloud/{environment|executor}/{id}/register``
    :meth:`RegistryClient.register` -> :class:`Registration` (the signed
    ``role=environment`` websocket URL the environment dials).
``POST {base}/cloud/{environment|executor}/{id}/connect``
    :meth:`RegistryClient.connect` -> :class:`HarnessUrl` (a signed ``role=harness``
    URL, its expiry and whether the environment is online).
``GET {base}/cloud/environments``
    :meth:`RegistryClient.list_environments` -> a list of :class:`EnvironmentRecord`.

Codex's Noise contract (``security_profile: "noise_hybrid_ik_v1"``, codex-0171.md §3.3),
spoken by ``exec-server rendezvous`` and by Codex's own registry:

``POST .../register`` with the executor's public key
    :meth:`RegistryClient.register` with ``noise_key=`` -> a :class:`Registration` with
    ``executor_registration_id`` (a registry that answers without ``security_profile``
    does not speak Noise: :class:`RegistryError` code ``noise_unsupported``).
``POST .../connect`` with the harness's public key
    :meth:`RegistryClient.connect_noise` -> a :class:`NoiseConnectBundle` (executor key,
    registration id, single-use ``harness_key_authorization``, websocket URL), or a
    :class:`HarnessUrl` when the registry ignored the key (a 0.133-era registry).
``POST .../validate`` (``x-codex-noise-stream-id``)
    :meth:`RegistryClient.validate` -> whether the registry vouches for a harness key.

Requests carry ``Authorization: Bearer <token>`` (and ``chatgpt-account-id`` when an
``account_id`` is given, as Codex sends it) and never follow redirects (a
registry that redirects is refused: the bearer must not travel to another host). The
response objects are frozen dataclasses; new optional request arguments and response
fields (e.g. Noise public keys) are added without breaking callers.

aiohttp is imported on the first request, not with this module, so that importing
the SDK stays cheap for the common local case.

Limits: every request has a timeout (``timeout_s``, 10 s by default, or per call);
a response body above :data:`MAX_RESPONSE_BYTES` is refused.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal

import msgspec

from ..errors import ExecServerError

if TYPE_CHECKING:
    from aiohttp import ClientSession

    from ..relay.noise import NoisePublicKey

#: Seconds one registry request may take, unless the caller says otherwise.
REGISTRY_TIMEOUT_S = 10.0
#: Largest response body read from the registry.
MAX_RESPONSE_BYTES = 16 * 1024 * 1024
#: Characters of an unparseable error body kept in the error message.
ERROR_BODY_PREVIEW_CHARS = 300

PathFlavor = Literal["environment", "executor"]
#: The ``security_profile`` of Codex's Noise contract.
NOISE_SECURITY_PROFILE = "noise_hybrid_ik_v1"

_ID_PATTERN = re.compile(r"^[A-Za-z0-9_-]{1,256}$")


def is_valid_environment_id(environment_id: str) -> bool:
    """Ids are 1-256 characters of ``[A-Za-z0-9_-]`` (they are URL path segments)."""
    return _ID_PATTERN.match(environment_id) is not None


class RegistryError(ExecServerError):
    """The registry refused a request, answered something unusable, or was not reached.

    ``status`` is the HTTP status, or 0 when no answer came (``code`` is then
    ``unreachable`` or ``timeout``) or the request was refused before it was sent
    (``invalid_environment_id``). ``code`` and ``message`` are the error body's
    (``code`` is ``""`` when the body had none). ``url`` is the endpoint.
    ``transient`` is true for no answer, 408, 429 and 5xx: trying again later may help.
    """

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        url: str = "",
        transient: bool | None = None,
    ) -> None:
        if transient is None:
            transient = status in (0, 408, 429) or status >= 500
        super().__init__(status, code, message, url, transient)
        self.status = status
        self.code = code
        self.message = message
        self.url = url
        self.transient = transient

    @property
    def unauthorized(self) -> bool:
        """The registry did not accept the bearer token (401 or 403)."""
        return self.status in (401, 403)

    def __str__(self) -> str:
        where = f" at {self.url}" if self.url else ""
        if self.status == 0:
            return f"registry{where}: {self.message}"
        if not 200 <= self.status < 300:
            code = f" {self.code}" if self.code else ""
            return f"registry{where} answered {self.status}{code}: {self.message}"
        return f"registry{where} {self.message}"


class Registration(msgspec.Struct, frozen=True):
    """An accepted registration: dial ``url`` (signed, ``role=environment``).

    ``executor_registration_id`` is set for a Noise registration (``noise_key=``): it
    goes into every handshake's prologue."""

    environment_id: str
    url: str
    executor_registration_id: str | None = None


@dataclass(frozen=True)
class NoiseConnectBundle:
    """The registry's answer to a harness key: everything one encrypted connection needs.

    ``harness_key_authorization`` is single use and short-lived: fetch a new bundle for
    every connection attempt (as Codex's harness does)."""

    environment_id: str
    url: str
    executor_registration_id: str
    executor_public_key: NoisePublicKey
    harness_key_authorization: str = field(repr=False)


class HarnessUrl(msgspec.Struct, frozen=True):
    """A signed ``role=harness`` URL for one environment.

    ``expires_at`` (RFC 3339) and ``online`` are ``None`` when the registry does not
    report them (Codex's does not).
    """

    environment_id: str
    url: str
    expires_at: str | None = None
    online: bool | None = None


class EnvironmentRecord(msgspec.Struct, frozen=True):
    """One environment the registry knows."""

    id: str
    name: str | None = None
    online: bool = False
    streams: int = 0
    last_seen: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return msgspec.structs.asdict(self)


class RegistryClient:
    """A client for one registry base URL and bearer token.

    Use as an async context manager or call :meth:`close`. Pass ``session`` to share
    an aiohttp session (it is then not closed here); otherwise one is created on the
    first request. ``flavor`` picks Codex's path spelling: ``environment`` (E2+) or
    ``executor`` (E1 registries).
    """

    def __init__(
        self,
        base_url: str,
        token: str | None,
        *,
        flavor: PathFlavor = "environment",
        timeout_s: float = REGISTRY_TIMEOUT_S,
        session: ClientSession | None = None,
        account_id: str | None = None,
    ) -> None:
        self.base_url = base_url.strip().rstrip("/")
        if not self.base_url.startswith(("http://", "https://")):
            raise ValueError(f"registry URL must be http:// or https://, got {base_url!r}")
        self.flavor: PathFlavor = flavor
        self.timeout_s = timeout_s
        self._token = token
        self._account_id = account_id
        self._session = session
        self._owns_session = session is None

    async def __aenter__(self) -> RegistryClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        if self._owns_session and self._session is not None:
            session, self._session = self._session, None
            await session.close()

    # --- the API ----------------------------------------------------------------------

    def endpoint(self, environment_id: str, action: str) -> str:
        """``{base}/cloud/{flavor}/{id}/{action}``; refuses ids that are not path-safe."""
        if not is_valid_environment_id(environment_id):
            raise RegistryError(
                0,
                f"invalid_{self.flavor}_id",
                f"invalid {self.flavor} id {environment_id!r}: "
                "expected 1-256 characters of [A-Za-z0-9_-]",
                transient=False,
            )
        return f"{self.base_url}/cloud/{self.flavor}/{environment_id}/{action}"

    async def register(
        self,
        environment_id: str,
        *,
        name: str | None = None,
        timeout_s: float | None = None,
        noise_key: NoisePublicKey | None = None,
    ) -> Registration:
        """Register an environment; returns the websocket URL it must dial.

        Codex 0.133 sends no body; a display ``name`` goes in the query string. With
        ``noise_key`` (the process's Noise public key) the body is Codex 0.171's, and the
        answer must carry ``security_profile`` and ``executor_registration_id``.
        """
        url = self.endpoint(environment_id, "register")
        params = {"name": name} if name else None
        body = (
            None
            if noise_key is None
            else {
                "security_profile": NOISE_SECURITY_PROFILE,
                "executor_public_key": noise_key.to_json_obj(),
            }
        )
        data = await self._request("POST", url, json_body=body, params=params, timeout_s=timeout_s)
        returned = data.get(f"{self.flavor}_id")
        if returned is not None and returned != environment_id:
            raise RegistryError(
                200, "invalid_response", f"returned a different {self.flavor} id", url
            )
        ws_url = _required_str(data, "url", url)
        if noise_key is None:
            return Registration(environment_id, ws_url)
        if data.get("security_profile") != NOISE_SECURITY_PROFILE:
            raise RegistryError(
                200,
                "noise_unsupported",
                "answered a Noise registration without security_profile "
                f"{NOISE_SECURITY_PROFILE!r}: it only speaks the legacy cleartext relay "
                "(use --remote-transport legacy for it)",
                url,
                transient=False,
            )
        registration_id = _required_str(data, "executor_registration_id", url)
        return Registration(environment_id, ws_url, registration_id)

    async def connect_noise(
        self,
        environment_id: str,
        harness_key: NoisePublicKey,
        *,
        timeout_s: float | None = None,
    ) -> NoiseConnectBundle | HarnessUrl:
        """Ask for an encrypted connection with ``harness_key`` (a fresh key per
        connection). A registry of Codex's Noise contract answers the bundle; one that
        ignores the key (0.133-era) answers a plain :class:`HarnessUrl`. Our rendezvous
        answers 409 ``no_noise_registration`` when the environment registered for the
        legacy cleartext relay (:class:`RegistryError`; the caller decides)."""
        from ..relay.noise import NoiseKeyError, NoisePublicKey

        url = self.endpoint(environment_id, "connect")
        body = {"harness_public_key": harness_key.to_json_obj()}
        data = await self._request("POST", url, json_body=body, timeout_s=timeout_s)
        if data.get("security_profile") is None and "executor_public_key" not in data:
            expires_at, online = data.get("expires_at"), data.get("online")
            return HarnessUrl(
                environment_id,
                _required_str(data, "url", url),
                expires_at if isinstance(expires_at, str) else None,
                online if isinstance(online, bool) else None,
            )
        if data.get("security_profile") != NOISE_SECURITY_PROFILE:
            raise RegistryError(
                200, "invalid_response", "answered an unknown security_profile", url
            )
        try:
            executor_key = NoisePublicKey.from_json_obj(data.get("executor_public_key"))
        except NoiseKeyError as exc:
            raise RegistryError(
                200, "invalid_response", f"answered a bad executor_public_key: {exc}", url
            ) from None
        return NoiseConnectBundle(
            _required_str(data, "environment_id", url),
            _required_str(data, "url", url),
            _required_str(data, "executor_registration_id", url),
            executor_key,
            _required_str(data, "harness_key_authorization", url),
        )

    async def validate(
        self,
        environment_id: str,
        *,
        executor_registration_id: str,
        harness_key: NoisePublicKey,
        authorization: str,
        stream_id: str,
        timeout_s: float | None = None,
    ) -> bool:
        """Whether the registry vouches for ``harness_key`` on this registration and
        stream (the executor's ``/validate``). Raises :class:`RegistryError` when it
        cannot say; the caller must then refuse the harness (fail closed)."""
        url = self.endpoint(environment_id, "validate")
        body = {
            "executor_registration_id": executor_registration_id,
            "harness_public_key": harness_key.to_json_obj(),
            "harness_key_authorization": authorization,
        }
        data = await self._request(
            "POST",
            url,
            json_body=body,
            timeout_s=timeout_s,
            headers={"x-codex-noise-stream-id": stream_id},
        )
        return data.get("valid") is True

    async def connect(
        self,
        environment_id: str,
        *,
        lifetime_s: float | None = None,
        timeout_s: float | None = None,
    ) -> HarnessUrl:
        """Ask for a harness URL for an environment (valid ``lifetime_s`` seconds, or
        the registry's default)."""
        url = self.endpoint(environment_id, "connect")
        body = {"lifetime_s": lifetime_s} if lifetime_s is not None else None
        data = await self._request("POST", url, json_body=body, timeout_s=timeout_s)
        expires_at = data.get("expires_at")
        online = data.get("online")
        return HarnessUrl(
            environment_id,
            _required_str(data, "url", url),
            expires_at if isinstance(expires_at, str) else None,
            online if isinstance(online, bool) else None,
        )

    async def list_environments(self, *, timeout_s: float | None = None) -> list[EnvironmentRecord]:
        """Every environment the registry knows, in its order."""
        url = f"{self.base_url}/cloud/environments"
        data = await self._request("GET", url, timeout_s=timeout_s, want=list)
        rows = data.get("environments", []) if isinstance(data, dict) else data
        if not isinstance(rows, list):
            raise RegistryError(200, "invalid_response", "listed no environments", url)
        return [_record(row) for row in rows if isinstance(row, dict) and "id" in row]

    # --- plumbing ---------------------------------------------------------------------

    async def _request(
        self,
        method: str,
        url: str,
        *,
        json_body: Mapping[str, Any] | None = None,
        params: Mapping[str, str] | None = None,
        timeout_s: float | None,
        want: type = dict,
        headers: Mapping[str, str] | None = None,
    ) -> Any:
        import aiohttp

        if self._session is None:
            self._session = aiohttp.ClientSession()
        sent = dict(headers or {})
        if self._token:
            sent["Authorization"] = f"Bearer {self._token}"
        if self._account_id:
            sent["chatgpt-account-id"] = self._account_id
        limit = self.timeout_s if timeout_s is None else timeout_s
        try:
            async with (
                asyncio.timeout(limit),
                self._session.request(
                    method,
                    url,
                    json=json_body,
                    params=params,
                    headers=sent,
                    allow_redirects=False,
                ) as resp,
            ):
                status = resp.status
                body = await _read_limited(resp.content, url)
        except TimeoutError:
            raise RegistryError(0, "timeout", f"no answer within {limit:g}s", url) from None
        except (aiohttp.ClientError, OSError, ValueError) as exc:
            raise RegistryError(0, "unreachable", str(exc) or type(exc).__name__, url) from None
        if not 200 <= status < 300:
            raise _error_from_body(status, body, url)
        try:
            data = json.loads(body) if body.strip() else {}
        except ValueError:
            raise RegistryError(status, "invalid_response", "returned invalid JSON", url) from None
        if not isinstance(data, dict | want):
            raise RegistryError(status, "invalid_response", "returned unexpected JSON", url)
        return data


async def _read_limited(content: Any, url: str) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while chunk := await content.read(64 * 1024):
        size += len(chunk)
        if size > MAX_RESPONSE_BYTES:
            raise RegistryError(
                200,
                "invalid_response",
                f"answered more than {MAX_RESPONSE_BYTES} bytes",
                url,
                transient=False,
            )
        chunks.append(chunk)
    return b"".join(chunks)


def _error_from_body(status: int, body: bytes, url: str) -> RegistryError:
    text = body.decode(errors="replace")
    try:
        data = json.loads(text)
    except ValueError:
        data = None
    error = data.get("error") if isinstance(data, dict) else None
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        code = error.get("code")
        return RegistryError(status, code if isinstance(code, str) else "", error["message"], url)
    if 300 <= status < 400:
        return RegistryError(status, "redirect", "redirects are not followed", url)
    preview = text[:ERROR_BODY_PREVIEW_CHARS].strip() or "empty or malformed error body"
    return RegistryError(status, "", preview, url)


def _required_str(data: Mapping[str, Any], key: str, url: str) -> str:
    value = data.get(key)
    if not isinstance(value, str) or not value:
        raise RegistryError(200, "invalid_response", f"response is missing field `{key}`", url)
    return value


def _record(row: Mapping[str, Any]) -> EnvironmentRecord:
    name, streams, last_seen = row.get("name"), row.get("streams"), row.get("last_seen")
    return EnvironmentRecord(
        id=str(row["id"]),
        name=name if isinstance(name, str) else None,
        online=row.get("online") is True,
        streams=streams if isinstance(streams, int) and not isinstance(streams, bool) else 0,
        last_seen=last_seen if isinstance(last_seen, str) else None,
    )
