"""``http/request``: HTTP requests made from the environment on the harness's behalf.

One :class:`HttpHandler` belongs to one connection. It owns that connection's
``aiohttp`` client session, the requests in flight and the streamed response bodies,
and :meth:`HttpHandler.shutdown` cancels all of them when the connection ends (Codex's
``handler.shutdown`` aborts its body streams the same way).

What goes on the wire follows Codex 0.133 (reqwest/hyper), as observed on the binary:

* Validation, in Codex's order, all -32602: the ``requestId`` of a streamed request
  must not name an active stream (``http/request streamResponse requestId `<id>` is
  already active``); then ``http/request method is invalid: invalid HTTP method``,
  ``http/request url is invalid: <reason>`` (see :mod:`.http_url`), ``http/request
  only supports http and https URLs, got <scheme>``, ``http/request header name is
  invalid: invalid HTTP header name`` and ``http/request header value is invalid for
  <name>: failed to parse header value``.
* Request headers: the caller's, names lower-cased and repeats grouped under the
  first occurrence of their name (a ``HeaderMap``); then ``accept: */*`` unless given;
  ``host``; ``content-length`` for a non-empty body. Credentials in the URL become
  ``authorization: Basic ...`` unless an ``authorization`` header is given. Nothing
  else: no ``user-agent``, no ``accept-encoding``, no cookies. (aiohttp writes ``Host``
  first, and ``Content-Length: 0`` for a body-less POST/PUT/PATCH/DELETE.)
* Responses: the status as is (404 is a result, not an error); header names
  lower-cased, grouped by name in first-appearance order, values that are not visible
  ASCII dropped; the body exactly as sent (no decompression).
* Redirects (unless 0.171's ``redirectPolicy: "stop"`` answers the 3xx itself):
  at most 10 are followed (``error following redirect for url (<url>)``
  after that). 301/302 turn a POST into a GET, 303 turns anything but HEAD into a GET;
  both drop the body and its headers. ``referer`` names the previous URL (not from
  https to http); ``authorization``, ``cookie`` and similar are dropped when the host
  or port changes. A missing or unparseable ``Location`` returns the 3xx as is; a
  non-http(s) one fails with ``builder error for url (<url>)``.
* ``timeoutMs`` bounds the whole exchange, body included; omitted or null means none.
* Failures before the headers: -32603 ``http/request failed: error sending request
  for url (<url>)`` (refused, DNS, TLS, bad response, timeout). While buffering the
  body: -32603 ``failed to read http/request response body: error decoding response
  body``. While streaming: a final ``bodyDelta`` with ``done: true`` and ``error:
  "error decoding response body"``.
* Proxies come from ``HTTP_PROXY``/``HTTPS_PROXY``/``ALL_PROXY``/``NO_PROXY``.

Streaming: the result carries the status and headers with an empty body; then
``http/request/bodyDelta`` notifications ``{requestId, seq: 1.., deltaBase64, done:
false, error: null}`` follow as the body arrives, each at most
:attr:`HttpLimits.body_delta_bytes`, and a last one with ``done: true`` and an empty
delta. The next chunk is read only once the previous notification was handed to the
transport, so a slow harness slows the download instead of filling memory. The
``requestId`` is reserved until that last notification.

Deliberate differences from 0.133:

* Requests run beside the connection's other requests (as our long-polls do), so a
  slow server does not hold up ``process/*`` or ``fs/*`` calls, and a dropped
  connection is noticed while a request hangs. At most
  :attr:`HttpLimits.max_concurrent_requests` per connection wait for headers or
  buffer a body at once; more queue in arrival order.
* A buffered body larger than :attr:`HttpLimits.max_buffered_body_bytes` fails with
  -32603 instead of growing without bound; ``streamResponse`` has no size limit.
* The method is sent upper-cased (aiohttp does that); Codex sends it as given.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import urllib.parse
import urllib.request
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace

import aiohttp
import yarl

from ..protocol import messages as m
from ..protocol.errors import InternalError, InvalidParams, RpcError
from ..protocol.jsonrpc import RequestId
from .http_url import Url, UrlError, parse_url

log = logging.getLogger(__name__)

KIB = 1024
MIB = 1024 * KIB

#: Largest body returned in one buffered result (Codex has no limit).
DEFAULT_MAX_BUFFERED_BODY_BYTES = 256 * MIB
#: Largest body chunk carried by one ``bodyDelta`` notification.
DEFAULT_BODY_DELTA_BYTES = 64 * KIB
#: Requests of one connection that may wait for headers or buffer a body at once.
DEFAULT_MAX_CONCURRENT_REQUESTS = 4
#: reqwest's default redirect limit.
MAX_REDIRECTS = 10
#: Longest response header line accepted (aiohttp's default, 8 KiB, is below hyper's).
MAX_RESPONSE_HEADER_LINE_BYTES = 64 * KIB

BODY_ERROR = "error decoding response body"
BODY_FAILED_PREFIX = "failed to read http/request response body: "

#: Headers dropped with the body when a redirect turns a request into a GET.
_BODY_HEADERS = frozenset(
    {"transfer-encoding", "content-encoding", "content-type", "content-length"}
)
#: Headers that never follow a redirect to another host or port.
_SENSITIVE_HEADERS = frozenset(
    {"authorization", "cookie", "cookie2", "proxy-authorization", "www-authenticate"}
)
_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
#: RFC 9110 token characters: valid in methods and header names.
_TOKEN = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
#: Bytes a response header value may hold (anything else fails the response).
_FIELD_VALUE_BYTES = bytes([9, *range(32, 127), *range(128, 256)])
#: aiohttp would add these; Codex's client does not.
_SKIP_AUTO_HEADERS = ("Accept", "Accept-Encoding", "User-Agent", "Content-Type")

Reply = Callable[[RequestId, m.Message | RpcError], Awaitable[None]]
Notify = Callable[[str, m.Message], Awaitable[None]]
Header = tuple[str, str]


@dataclass(frozen=True)
class HttpLimits:
    """Per-connection bounds of :class:`HttpHandler`."""

    max_buffered_body_bytes: int = DEFAULT_MAX_BUFFERED_BODY_BYTES
    body_delta_bytes: int = DEFAULT_BODY_DELTA_BYTES
    max_concurrent_requests: int = DEFAULT_MAX_CONCURRENT_REQUESTS
    max_redirects: int = MAX_REDIRECTS


@dataclass
class _Exchange:
    """One validated request, updated as redirects are followed."""

    method: str
    url: Url
    headers: list[Header]
    body: bytes | None
    stream_id: str | None
    timeout_s: float | None
    #: Codex 0.171 ``redirectPolicy: "stop"``: answer a 3xx as it is.
    follow_redirects: bool = True
    #: Loop time when the whole exchange times out; set once it gets a slot.
    deadline: float | None = None
    #: The open response, once its headers arrived.
    response: aiohttp.ClientResponse | None = field(default=None, repr=False)
    #: Whether ``stream_id`` is still reserved by this exchange (and not by a later one).
    holds_stream_id: bool = False


class HttpHandler:
    """Runs the ``http/request`` calls of one connection.

    ``reply(request_id, result_or_error)`` answers a request; ``notify(method,
    params)`` sends a body delta. Both are the connection processor's and must not
    raise when the connection is gone.
    """

    def __init__(self, reply: Reply, notify: Notify, limits: HttpLimits | None = None) -> None:
        self._reply = reply
        self._notify = notify
        self._limits = limits or HttpLimits()
        self._session: aiohttp.ClientSession | None = None
        self._slots = asyncio.Semaphore(self._limits.max_concurrent_requests)
        self._active_streams: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False

    @property
    def active_streams(self) -> frozenset[str]:
        """``requestId``s of streamed requests that have not sent their last delta."""
        return frozenset(self._active_streams)

    def submit(self, request_id: RequestId, params: m.HttpRequestParams) -> None:
        """Validate ``params`` and start the request; the answer goes to ``reply``.

        Raises :class:`RpcError` at once for invalid params or a duplicate stream id,
        so those are answered in arrival order.
        """
        if self._closed:
            raise InternalError("http/request failed: connection is closing")
        stream_id = params.request_id if params.stream_response else None
        if stream_id is not None:
            if stream_id in self._active_streams:
                raise InvalidParams(
                    f"http/request streamResponse requestId `{stream_id}` is already active"
                )
            self._active_streams.add(stream_id)
        try:
            exchange = _prepare(params, stream_id)
        except RpcError:
            if stream_id is not None:
                self._active_streams.discard(stream_id)
            raise
        exchange.holds_stream_id = stream_id is not None
        task = asyncio.get_running_loop().create_task(self._run(request_id, exchange))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def shutdown(self) -> None:
        """Cancel every request and body stream and close the client session."""
        self._closed = True
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._active_streams.clear()
        if self._session is not None:
            await self._session.close()
            self._session = None

    # --- one request ---------------------------------------------------------------

    async def _run(self, request_id: RequestId, exchange: _Exchange) -> None:
        answered = False
        try:
            try:
                async with self._slots:
                    result: m.Message | RpcError = await self._fetch(exchange)
            except RpcError as err:
                result = err
            answered = True
            await self._reply(request_id, result)
            if exchange.stream_id is not None and not isinstance(result, RpcError):
                await self._stream_body(exchange)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug here must not leave the request unanswered
            log.exception("http/request %s failed unexpectedly", exchange.url)
            if not answered:
                await self._reply(request_id, InternalError(f"http/request failed: {exc}"))
        finally:
            if exchange.response is not None:
                # Back to the pool when the body was read to the end, closed otherwise.
                exchange.response.release()
            self._release_stream_id(exchange)

    def _release_stream_id(self, exchange: _Exchange) -> None:
        if exchange.holds_stream_id and exchange.stream_id is not None:
            self._active_streams.discard(exchange.stream_id)
        exchange.holds_stream_id = False

    async def _fetch(self, exchange: _Exchange) -> m.HttpRequestResult:
        if exchange.timeout_s is not None:
            exchange.deadline = asyncio.get_running_loop().time() + exchange.timeout_s
        try:
            async with asyncio.timeout_at(exchange.deadline):
                response = await self._send_following_redirects(exchange)
        except TimeoutError:
            raise _send_error(exchange.url) from None
        exchange.response = response
        headers = _response_headers(response.raw_headers)
        if exchange.stream_id is not None:
            return m.HttpRequestResult(status=response.status, headers=headers, body_base64=b"")
        body = await self._read_whole_body(response, exchange.deadline)
        return m.HttpRequestResult(status=response.status, headers=headers, body_base64=body)

    async def _send_following_redirects(self, exchange: _Exchange) -> aiohttp.ClientResponse:
        redirects = 0
        while True:
            response = await self._send_once(exchange)
            if not exchange.follow_redirects:
                return response
            target = _redirect_target(response, exchange.url)
            if target is None:
                return response
            response.release()
            if redirects >= self._limits.max_redirects:
                raise InternalError(
                    f"http/request failed: error following redirect for url ({exchange.url})"
                )
            if target.scheme not in ("http", "https"):
                raise InternalError(f"http/request failed: builder error for url ({target})")
            redirects += 1
            _follow_redirect(exchange, response.status, target)

    async def _send_once(self, exchange: _Exchange) -> aiohttp.ClientResponse:
        url = exchange.url
        target = yarl.URL(f"{url.scheme}://{url.authority}{url.target}", encoded=True)
        try:
            response = await self._client().request(
                exchange.method,
                target,
                headers=exchange.headers,
                data=exchange.body,
                allow_redirects=False,
                skip_auto_headers=_SKIP_AUTO_HEADERS,
                proxy=_env_proxy(url),
            )
        except (aiohttp.ClientError, OSError, ValueError) as exc:
            log.debug("http/request to %s failed: %r", url, exc)
            raise _send_error(url) from None
        if not all(_valid_response_header_value(value) for _, value in response.raw_headers):
            # hyper refuses such a response outright; aiohttp would pass it on.
            response.close()
            raise _send_error(url)
        return response

    async def _read_whole_body(
        self, response: aiohttp.ClientResponse, deadline: float | None
    ) -> bytes:
        limit = self._limits.max_buffered_body_bytes
        too_large = InternalError(
            f"{BODY_FAILED_PREFIX}response body exceeds the {limit}-byte limit for buffered"
            " responses; use streamResponse"
        )
        if response.content_length is not None and response.content_length > limit:
            raise too_large
        parts: list[bytes] = []
        size = 0
        try:
            async with asyncio.timeout_at(deadline):
                while chunk := await response.content.read(MIB):
                    size += len(chunk)
                    if size > limit:
                        raise too_large
                    parts.append(chunk)
        except (aiohttp.ClientError, OSError, TimeoutError):
            raise InternalError(BODY_FAILED_PREFIX + BODY_ERROR) from None
        return b"".join(parts)

    async def _stream_body(self, exchange: _Exchange) -> None:
        assert exchange.stream_id is not None and exchange.response is not None
        content = exchange.response.content
        seq = 1
        error: str | None = None
        while True:
            try:
                # Only the read is under the deadline: a send to the harness is never
                # interrupted half-way.
                async with asyncio.timeout_at(exchange.deadline):
                    chunk = await content.read(self._limits.body_delta_bytes)
            except (aiohttp.ClientError, OSError, TimeoutError):
                error = BODY_ERROR
                break
            if not chunk:
                break
            await self._notify(
                m.HTTP_REQUEST_BODY_DELTA,
                m.HttpRequestBodyDeltaNotification(
                    request_id=exchange.stream_id, seq=seq, delta_base64=chunk, done=False
                ),
            )
            seq += 1
        # Free the id before the last delta goes out: a client that reuses it as soon as
        # it sees `done` must not be refused.
        self._release_stream_id(exchange)
        await self._notify(
            m.HTTP_REQUEST_BODY_DELTA,
            m.HttpRequestBodyDeltaNotification(
                request_id=exchange.stream_id, seq=seq, delta_base64=b"", done=True, error=error
            ),
        )

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0),
                cookie_jar=aiohttp.DummyCookieJar(),
                auto_decompress=False,
                timeout=aiohttp.ClientTimeout(total=None),
                max_line_size=MAX_RESPONSE_HEADER_LINE_BYTES,
                max_field_size=MAX_RESPONSE_HEADER_LINE_BYTES,
            )
        return self._session


# --- validation and header shaping (pure) ---------------------------------------------


def _prepare(params: m.HttpRequestParams, stream_id: str | None) -> _Exchange:
    """Validate in Codex's order: method, URL, scheme, then each header."""
    method = params.method
    if not method or not all(ch in _TOKEN for ch in method):
        raise InvalidParams("http/request method is invalid: invalid HTTP method")
    try:
        url = parse_url(params.url)
    except UrlError as exc:
        raise InvalidParams(f"http/request url is invalid: {exc}") from None
    if url.scheme not in ("http", "https"):
        raise InvalidParams(f"http/request only supports http and https URLs, got {url.scheme}")
    grouped: dict[str, list[str]] = {}
    for header in params.headers:
        name = header.name
        if not name or not all(ch in _TOKEN for ch in name):
            raise InvalidParams("http/request header name is invalid: invalid HTTP header name")
        if not _valid_request_header_value(header.value):
            raise InvalidParams(
                f"http/request header value is invalid for {name}: failed to parse header value"
            )
        grouped.setdefault(name.lower(), []).append(header.value)
    headers: list[Header] = []
    if (url.username or url.password) and "authorization" not in grouped:
        headers.append(("authorization", _basic_auth(url)))
    headers.extend((name, value) for name, values in grouped.items() for value in values)
    if "accept" not in grouped:
        headers.append(("accept", "*/*"))
    timeout_s = None if params.timeout_ms is None else params.timeout_ms / 1000
    return _Exchange(
        method=method,
        url=url.without_credentials(),
        headers=headers,
        body=params.body_base64 or None,
        stream_id=stream_id,
        timeout_s=timeout_s,
        follow_redirects=params.redirect_policy == "follow",
    )


def _valid_request_header_value(value: str) -> bool:
    # http's HeaderValue::from_str: no control characters except tab, no DEL.
    return all(ch == "\t" or (ch >= " " and ch != "\x7f") for ch in value)


def _valid_response_header_value(value: bytes) -> bool:
    # httparse: tab, visible ASCII, space and obs-text only.
    return not value.translate(None, _FIELD_VALUE_BYTES)


def _basic_auth(url: Url) -> str:
    user = urllib.parse.unquote_to_bytes(url.username)
    password = urllib.parse.unquote_to_bytes(url.password)
    return "Basic " + base64.b64encode(user + b":" + password).decode("ascii")


def _response_headers(raw: tuple[tuple[bytes, bytes], ...]) -> list[m.HttpHeader]:
    """Lower-cased names grouped in first-appearance order; non-ASCII values dropped."""
    grouped: dict[str, list[str]] = {}
    for raw_name, raw_value in raw:
        values = grouped.setdefault(raw_name.decode("latin-1").lower(), [])
        value = raw_value.strip(b" \t")
        if value.isascii() and all(b == 9 or 32 <= b < 127 for b in value):
            values.append(value.decode("ascii"))
    return [m.HttpHeader(name=n, value=v) for n, values in grouped.items() for v in values]


def _redirect_target(response: aiohttp.ClientResponse, current: Url) -> Url | None:
    """Where a 3xx points, or None when it is to be returned as the answer."""
    if response.status not in _REDIRECT_STATUSES:
        return None
    location = next(
        (value for name, value in response.raw_headers if name.lower() == b"location"), None
    )
    if location is None or not location.isascii():
        return None
    try:
        return parse_url(location.decode("ascii"), base=current)
    except UrlError:
        return None


def _follow_redirect(exchange: _Exchange, status: int, target: Url) -> None:
    """Rewrite ``exchange`` for the next hop, as reqwest's redirect policy does."""
    previous = exchange.url
    if status == 303 or (status in (301, 302) and exchange.method == "POST"):
        if exchange.method != "HEAD":
            exchange.method = "GET"
        exchange.body = None
        exchange.headers = [h for h in exchange.headers if h[0] not in _BODY_HEADERS]
    if target.origin_key() != previous.origin_key():
        exchange.headers = [h for h in exchange.headers if h[0] not in _SENSITIVE_HEADERS]
    if not (previous.scheme == "https" and target.scheme == "http"):
        referer = str(replace(previous.without_credentials(), fragment=None))
        kept = [h for h in exchange.headers if h[0] != "referer"]
        at = next((i for i, h in enumerate(exchange.headers) if h[0] == "referer"), len(kept))
        kept.insert(at, ("referer", referer))
        exchange.headers = kept
    exchange.url = target.without_credentials()


def _send_error(url: Url) -> InternalError:
    return InternalError(f"http/request failed: error sending request for url ({url})")


def _env_proxy(url: Url) -> str | None:
    """The proxy ``HTTP_PROXY``/``HTTPS_PROXY``/``ALL_PROXY`` name for ``url``, if any."""
    proxies = urllib.request.getproxies_environment()
    if not proxies:
        return None
    if urllib.request.proxy_bypass(url.host.strip("[]")):  # honours NO_PROXY
        return None
    return proxies.get(url.scheme) or proxies.get("all")
