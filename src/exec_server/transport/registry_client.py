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

Requests carry ``Authorization: Bearer <token>`` and never follow redirects (a
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
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal

import msgspec

from ..errors import ExecServerError

if TYPE_CHECKING:
    from aiohttp import ClientSession

#: Seconds one registry request may take, unless the caller says otherwise.
REGISTRY_TIMEOUT_S = 10.0
#: Largest response body read from the registry.
MAX_RESPONSE_BYTES = 16 * 1024 * 1024
#: Characters of an unparseable error body kept in the error message.
ERROR_BODY_PREVIEW_CHARS = 300

PathFlavor = Literal["environment", "executor"]

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
    """An accepted registration: dial ``url`` (signed, ``role=environment``)."""

    environment_id: str
    url: str


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
    ) -> None:
        self.base_url = base_url.strip().rstrip("/")
        if not self.base_url.startswith(("http://", "https://")):
            raise ValueError(f"registry URL must be http:// or https://, got {base_url!r}")
        self.flavor: PathFlavor = flavor
        self.timeout_s = timeout_s
        self._token = token
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
        self, environment_id: str, *, name: str | None = None, timeout_s: float | None = None
    ) -> Registration:
        """Register an environment; returns the websocket URL it must dial.

        Codex sends no body; a display ``name`` goes in the query string.
        """
        url = self.endpoint(environment_id, "register")
        params = {"name": name} if name else None
        data = await self._request("POST", url, params=params, timeout_s=timeout_s)
        returned = data.get(f"{self.flavor}_id")
        if returned is not None and returned != environment_id:
            raise RegistryError(
                200, "invalid_response", f"returned a different {self.flavor} id", url
            )
        return Registration(environment_id, _required_str(data, "url", url))

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
    ) -> Any:
        import aiohttp

        if self._session is None:
            self._session = aiohttp.ClientSession()
        headers = {"Authorization": f"Bearer {self._token}"} if self._token else {}
        limit = self.timeout_s if timeout_s is None else timeout_s
        try:
            async with (
                asyncio.timeout(limit),
                self._session.request(
                    method,
                    url,
                    json=json_body,
                    params=params,
                    headers=headers,
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
