"""``http/request`` (spec section 8, item 36) against a local aiohttp server.

Expected texts are what the Codex 0.133 binary answered to the same requests (the
differential suite, ``tests/interop/test_http.py``, checks them against it).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import msgspec
import pytest
from aiohttp import web
from inprocess import InProcessServer

from exec_server.environment.http_handler import HttpHandler, HttpLimits
from exec_server.protocol import messages as m
from exec_server.protocol.errors import INTERNAL_ERROR, INVALID_PARAMS, RpcError
from exec_server.protocol.jsonrpc import RequestId, decode_params

MIB = 1024 * 1024
WAIT_S = 5.0


@dataclass
class Upstream:
    """The local HTTP server, and what its handlers observed."""

    base: str
    seen_headers: list[list[tuple[str, str]]] = field(default_factory=list)
    disconnects: asyncio.Event = field(default_factory=asyncio.Event)
    big_bytes_sent: int = 0


def _routes(up: Upstream) -> web.RouteTableDef:
    routes = web.RouteTableDef()

    @routes.route("*", "/echo")
    async def echo(request: web.Request) -> web.Response:
        up.seen_headers.append([(k.decode().lower(), v.decode()) for k, v in request.raw_headers])
        body = await request.read()
        return web.json_response(
            {"method": request.method, "path": request.path_qs, "body": body.decode()},
            headers=[("X-Multi", "1"), ("X-Other", "o"), ("X-Multi", "2")],
        )

    @routes.get("/status/{code}")
    async def status(request: web.Request) -> web.Response:
        return web.Response(status=int(request.match_info["code"]), text="st")

    @routes.route("*", "/redirect/{status}")
    async def redirect(request: web.Request) -> web.Response:
        return web.Response(
            status=int(request.match_info["status"]), headers={"Location": "/echo?hop=1"}
        )

    @routes.get("/loop")
    async def loop(request: web.Request) -> web.Response:
        raise web.HTTPFound("/loop")

    @routes.get("/slow")
    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(5)
        return web.Response(text="late")

    @routes.get("/stream")
    async def stream(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        await resp.prepare(request)
        for i in range(3):
            await resp.write(f"part{i};".encode())
            await asyncio.sleep(0.02)
        await resp.write_eof()
        return resp

    @routes.get("/endless")
    async def endless(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        await resp.prepare(request)
        try:
            while True:
                await resp.write(b"tick;")
                await asyncio.sleep(0.02)
        except (ConnectionError, asyncio.CancelledError):
            up.disconnects.set()
            raise

    @routes.get("/big/{size}")
    async def big(request: web.Request) -> web.StreamResponse:
        size = int(request.match_info["size"])
        resp = web.StreamResponse()
        if request.query.get("length") == "1":
            resp.content_length = size
        await resp.prepare(request)
        chunk = b"x" * (256 * 1024)
        sent = 0
        while sent < size:
            piece = chunk[: size - sent]
            await resp.write(piece)
            sent += len(piece)
            up.big_bytes_sent = sent
        await resp.write_eof()
        return resp

    @routes.get("/short")
    async def short(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Length": "10"})
        await resp.prepare(request)
        await resp.write(b"abc")
        assert request.transport is not None
        request.transport.close()
        return resp

    return routes


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    up = Upstream(base="")
    app = web.Application()
    app.add_routes(_routes(up))
    runner = web.AppRunner(app, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    up.base = f"http://127.0.0.1:{port}"
    try:
        yield up
    finally:
        await runner.cleanup()


class Recorder:
    """Stands in for the connection processor: collects answers and notifications."""

    def __init__(self) -> None:
        self.answers: dict[RequestId, m.Message | RpcError] = {}
        self.deltas: list[m.HttpRequestBodyDeltaNotification] = []
        self.changed = asyncio.Condition()
        #: Cleared to make ``notify`` block, like a harness that stopped reading.
        self.flowing = asyncio.Event()
        self.flowing.set()

    async def reply(self, request_id: RequestId, outcome: m.Message | RpcError) -> None:
        async with self.changed:
            self.answers[request_id] = outcome
            self.changed.notify_all()

    async def notify(self, method: str, params: m.Message) -> None:
        assert method == m.HTTP_REQUEST_BODY_DELTA
        assert isinstance(params, m.HttpRequestBodyDeltaNotification)
        async with self.changed:
            self.deltas.append(params)
            self.changed.notify_all()
        await self.flowing.wait()

    async def answer(self, request_id: RequestId) -> m.Message | RpcError:
        async with self.changed:
            await asyncio.wait_for(
                self.changed.wait_for(lambda: request_id in self.answers), WAIT_S
            )
        return self.answers[request_id]

    async def result(self, request_id: RequestId) -> m.HttpRequestResult:
        answer = await self.answer(request_id)
        assert isinstance(answer, m.HttpRequestResult), answer
        return answer

    async def error(self, request_id: RequestId) -> RpcError:
        answer = await self.answer(request_id)
        assert isinstance(answer, RpcError), answer
        return answer

    def stream(self, stream_id: str) -> list[m.HttpRequestBodyDeltaNotification]:
        return [d for d in self.deltas if d.request_id == stream_id]

    async def stream_done(self, stream_id: str) -> list[m.HttpRequestBodyDeltaNotification]:
        async with self.changed:
            await asyncio.wait_for(
                self.changed.wait_for(lambda: any(d.done for d in self.stream(stream_id))),
                WAIT_S,
            )
        return self.stream(stream_id)


@pytest.fixture
async def rec() -> Recorder:
    return Recorder()


@pytest.fixture
async def handler(rec: Recorder) -> AsyncIterator[HttpHandler]:
    h = HttpHandler(rec.reply, rec.notify)
    try:
        yield h
    finally:
        await h.shutdown()


def params(url: str, **extra: Any) -> m.HttpRequestParams:
    headers = [m.HttpHeader(name=n, value=v) for n, v in extra.pop("headers", [])]
    return m.HttpRequestParams(
        method=extra.pop("method", "GET"),
        url=url,
        request_id=extra.pop("request_id", "r"),
        headers=headers,
        **extra,
    )


def header_pairs(result: m.HttpRequestResult) -> list[tuple[str, str]]:
    return [(h.name, h.value) for h in result.headers]


# --- params ----------------------------------------------------------------------------


def test_params_defaults_and_no_timeout() -> None:
    base = {"method": "GET", "url": "https://example.test", "requestId": "r"}
    for extra in ({}, {"timeoutMs": None}):
        decoded = decode_params(msgspec.Raw(json.dumps(base | extra).encode()), m.HttpRequestParams)
        assert (decoded.timeout_ms, decoded.headers, decoded.body_base64) == (None, [], None)
        assert decoded.stream_response is False
    explicit = decode_params(
        msgspec.Raw(json.dumps(base | {"timeoutMs": 1234}).encode()), m.HttpRequestParams
    )
    assert explicit.timeout_ms == 1234
    for bad in ({"timeoutMs": -1}, {"headers": None}, {"requestId": None}, {"bodyBase64": "***"}):
        with pytest.raises(RpcError) as caught:
            decode_params(msgspec.Raw(json.dumps(base | bad).encode()), m.HttpRequestParams)
        assert caught.value.code == INVALID_PARAMS


def test_result_and_delta_wire_shape() -> None:
    result = m.HttpRequestResult(
        status=200, headers=[m.HttpHeader(name="a", value="b")], body_base64=b"hi"
    )
    assert msgspec.json.decode(msgspec.json.encode(result)) == {
        "status": 200,
        "headers": [{"name": "a", "value": "b"}],
        "bodyBase64": "aGk=",
    }
    delta = m.HttpRequestBodyDeltaNotification(request_id="r", seq=1, delta_base64=b"", done=True)
    assert msgspec.json.decode(msgspec.json.encode(delta)) == {
        "requestId": "r",
        "seq": 1,
        "deltaBase64": "",
        "done": True,
        "error": None,
    }


# --- buffered ------------------------------------------------------------------------


async def test_buffered_get(handler: HttpHandler, rec: Recorder, upstream: Upstream) -> None:
    handler.submit(1, params(upstream.base + "/echo?q=1"))
    result = await rec.result(1)
    assert result.status == 200
    assert json.loads(result.body_base64) == {"method": "GET", "path": "/echo?q=1", "body": ""}
    # Names lower-cased; repeats grouped under the first occurrence of their name.
    pairs = header_pairs(result)
    assert pairs[:3] == [("x-multi", "1"), ("x-multi", "2"), ("x-other", "o")]
    # Only accept and host from the client stack: no user-agent, accept-encoding.
    assert sorted(name for name, _ in upstream.seen_headers[-1]) == ["accept", "host"]
    assert ("accept", "*/*") in upstream.seen_headers[-1]


async def test_post_headers_in_order_and_body(
    handler: HttpHandler, rec: Recorder, upstream: Upstream
) -> None:
    handler.submit(
        1,
        params(
            upstream.base + "/echo",
            method="POST",
            headers=[("X-B", "1"), ("X-A", "2"), ("x-b", "3"), ("Accept", "text/plain")],
            body_base64=b"payload",
        ),
    )
    result = await rec.result(1)
    assert json.loads(result.body_base64)["body"] == "payload"
    sent = [(n, v) for n, v in upstream.seen_headers[-1] if n.startswith("x-") or n == "accept"]
    assert sent == [("x-b", "1"), ("x-b", "3"), ("x-a", "2"), ("accept", "text/plain")]


async def test_http_error_status_is_a_result(
    handler: HttpHandler, rec: Recorder, upstream: Upstream
) -> None:
    handler.submit(1, params(upstream.base + "/status/404"))
    result = await rec.result(1)
    assert (result.status, result.body_base64) == (404, b"st")


async def test_buffered_body_limit(rec: Recorder, upstream: Upstream) -> None:
    handler = HttpHandler(rec.reply, rec.notify, HttpLimits(max_buffered_body_bytes=1000))
    try:
        handler.submit(1, params(upstream.base + "/big/5000?length=1"))  # Content-Length
        handler.submit(2, params(upstream.base + "/big/5000"))  # chunked
        handler.submit(3, params(upstream.base + "/big/1000"))
        for request_id in (1, 2):
            err = await rec.error(request_id)
            assert err.code == INTERNAL_ERROR
            assert err.message == (
                "failed to read http/request response body: response body exceeds the"
                " 1000-byte limit for buffered responses; use streamResponse"
            )
        assert len((await rec.result(3)).body_base64) == 1000
    finally:
        await handler.shutdown()


async def test_body_cut_short(handler: HttpHandler, rec: Recorder, upstream: Upstream) -> None:
    handler.submit(1, params(upstream.base + "/short"))
    err = await rec.error(1)
    assert (err.code, err.message) == (
        INTERNAL_ERROR,
        "failed to read http/request response body: error decoding response body",
    )
    handler.submit(2, params(upstream.base + "/short", stream_response=True, request_id="s"))
    await rec.result(2)
    deltas = await rec.stream_done("s")
    assert b"".join(d.delta_base64 for d in deltas) == b"abc"
    assert (deltas[-1].done, deltas[-1].error) == (True, "error decoding response body")


# --- transport errors ------------------------------------------------------------------


async def test_timeout_and_refused(handler: HttpHandler, rec: Recorder, upstream: Upstream) -> None:
    handler.submit(1, params(upstream.base + "/slow", timeout_ms=100))
    handler.submit(2, params("http://127.0.0.1:9/x"))
    handler.submit(3, params(upstream.base + "/echo", timeout_ms=0))
    for request_id, url in ((1, upstream.base + "/slow"), (2, "http://127.0.0.1:9/x")):
        err = await rec.error(request_id)
        assert (err.code, err.message) == (
            INTERNAL_ERROR,
            f"http/request failed: error sending request for url ({url})",
        )
    assert (await rec.error(3)).message.startswith("http/request failed: error sending")


# --- redirects -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "status", "method_after", "body_after"),
    [
        ("GET", 302, "GET", ""),
        ("POST", 302, "GET", ""),
        ("POST", 303, "GET", ""),
        ("DELETE", 302, "DELETE", "data"),
        ("PUT", 303, "GET", ""),
        ("POST", 307, "POST", "data"),
        ("PUT", 308, "PUT", "data"),
    ],
)
async def test_redirects_follow_reqwest_rules(
    handler: HttpHandler,
    rec: Recorder,
    upstream: Upstream,
    method: str,
    status: int,
    method_after: str,
    body_after: str,
) -> None:
    body = b"data" if method != "GET" else None
    handler.submit(1, params(f"{upstream.base}/redirect/{status}", method=method, body_base64=body))
    result = await rec.result(1)
    echoed = json.loads(result.body_base64)
    assert (echoed["method"], echoed["path"], echoed["body"]) == (
        method_after,
        "/echo?hop=1",
        body_after,
    )
    assert ("referer", f"{upstream.base}/redirect/{status}") in upstream.seen_headers[-1]


async def test_too_many_redirects(handler: HttpHandler, rec: Recorder, upstream: Upstream) -> None:
    handler.submit(1, params(upstream.base + "/loop"))
    err = await rec.error(1)
    assert err.message == (
        f"http/request failed: error following redirect for url ({upstream.base}/loop)"
    )


# --- validation ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"method": "BAD METHOD"}, "http/request method is invalid: invalid HTTP method"),
        ({"method": ""}, "http/request method is invalid: invalid HTTP method"),
        ({"url": "/relative"}, "http/request url is invalid: relative URL without a base"),
        ({"url": "http://"}, "http/request url is invalid: empty host"),
        ({"url": "http://a:99999/"}, "http/request url is invalid: invalid port number"),
        ({"url": "ftp://x/"}, "http/request only supports http and https URLs, got ftp"),
        (
            {"headers": [("bad header", "v")]},
            "http/request header name is invalid: invalid HTTP header name",
        ),
        (
            {"headers": [("X-Ok", "a\nb")]},
            "http/request header value is invalid for X-Ok: failed to parse header value",
        ),
        # Method first, then URL, then headers.
        (
            {"method": "BAD METHOD", "url": "ftp://x", "headers": [("bad header", "v")]},
            "http/request method is invalid: invalid HTTP method",
        ),
    ],
)
async def test_invalid_params_are_refused_at_once(
    handler: HttpHandler, overrides: dict[str, Any], message: str
) -> None:
    url = overrides.pop("url", "http://127.0.0.1:9/")
    with pytest.raises(RpcError) as caught:
        handler.submit(1, params(url, stream_response=True, request_id="s", **overrides))
    assert (caught.value.code, caught.value.message) == (INVALID_PARAMS, message)
    assert handler.active_streams == frozenset()  # the reservation was released


async def test_duplicate_active_stream_id(
    handler: HttpHandler, rec: Recorder, upstream: Upstream
) -> None:
    handler.submit(1, params(upstream.base + "/stream", stream_response=True, request_id="dup"))
    with pytest.raises(RpcError) as caught:
        handler.submit(2, params(upstream.base + "/stream", stream_response=True, request_id="dup"))
    assert (caught.value.code, caught.value.message) == (
        INVALID_PARAMS,
        "http/request streamResponse requestId `dup` is already active",
    )
    # Checked before the other params, as in Codex.
    with pytest.raises(RpcError, match="already active"):
        handler.submit(3, params("/relative", stream_response=True, request_id="dup"))
    # A buffered request may reuse an active stream's id.
    handler.submit(4, params(upstream.base + "/echo", request_id="dup"))
    await rec.result(4)
    await rec.stream_done("dup")
    assert handler.active_streams == frozenset()


# --- streaming -------------------------------------------------------------------------


async def test_streamed_body(handler: HttpHandler, rec: Recorder, upstream: Upstream) -> None:
    handler.submit(1, params(upstream.base + "/stream", stream_response=True, request_id="s"))
    result = await rec.result(1)
    assert (result.status, result.body_base64) == (200, b"")
    deltas = await rec.stream_done("s")
    assert [d.seq for d in deltas] == list(range(1, len(deltas) + 1))
    assert b"".join(d.delta_base64 for d in deltas) == b"part0;part1;part2;"
    assert [d.done for d in deltas[:-1]] == [False] * (len(deltas) - 1)
    assert (deltas[-1].delta_base64, deltas[-1].done, deltas[-1].error) == (b"", True, None)
    # The id is free again, and a new stream starts at seq 1.
    assert handler.active_streams == frozenset()
    handler.submit(2, params(upstream.base + "/stream", stream_response=True, request_id="s"))
    await rec.result(2)
    again = await rec.stream_done("s")
    assert again[len(deltas)].seq == 1


async def test_stream_id_reused_while_last_delta_is_in_flight(upstream: Upstream) -> None:
    """The id is free once ``done`` is out; the old stream must not free the new one's."""
    rec = Recorder()
    last_delta_sent = asyncio.Event()

    async def notify(method: str, params: m.Message) -> None:
        await rec.notify(method, params)
        assert isinstance(params, m.HttpRequestBodyDeltaNotification)
        if params.done and params.seq > 1:
            await last_delta_sent.wait()

    handler = HttpHandler(rec.reply, notify)
    try:
        handler.submit(1, params(upstream.base + "/stream", stream_response=True, request_id="s"))
        await rec.stream_done("s")
        handler.submit(2, params(upstream.base + "/endless", stream_response=True, request_id="s"))
        last_delta_sent.set()
        await rec.result(2)
        await asyncio.sleep(0.05)
        assert handler.active_streams == frozenset({"s"})
        with pytest.raises(RpcError, match="already active"):
            handler.submit(
                3, params(upstream.base + "/stream", stream_response=True, request_id="s")
            )
    finally:
        await handler.shutdown()


async def test_large_stream_has_backpressure(upstream: Upstream) -> None:
    rec = Recorder()
    handler = HttpHandler(rec.reply, rec.notify, HttpLimits(body_delta_bytes=64 * 1024))
    size = 48 * MIB
    try:
        rec.flowing.clear()  # the harness is not reading
        handler.submit(1, params(f"{upstream.base}/big/{size}", stream_response=True))
        await rec.result(1)
        await asyncio.sleep(0.5)
        # Socket buffers and aiohttp's read buffer hold a few MiB, not the body.
        stalled_at = upstream.big_bytes_sent
        assert stalled_at < 24 * MIB
        assert len(rec.deltas) == 1
        rec.flowing.set()
        deltas = await rec.stream_done("r")
        assert upstream.big_bytes_sent == size
        assert sum(len(d.delta_base64) for d in deltas) == size
        assert max(len(d.delta_base64) for d in deltas) <= 64 * 1024
        assert [d.seq for d in deltas] == list(range(1, len(deltas) + 1))
    finally:
        await handler.shutdown()


async def test_shutdown_cancels_streams(
    handler: HttpHandler, rec: Recorder, upstream: Upstream
) -> None:
    handler.submit(1, params(upstream.base + "/endless", stream_response=True, request_id="e"))
    await rec.result(1)
    async with rec.changed:
        await asyncio.wait_for(rec.changed.wait_for(lambda: len(rec.deltas) >= 2), WAIT_S)
    await handler.shutdown()
    await asyncio.wait_for(upstream.disconnects.wait(), WAIT_S)
    seen = len(rec.deltas)
    await asyncio.sleep(0.1)
    assert len(rec.deltas) == seen
    assert not any(d.done for d in rec.deltas)
    assert handler.active_streams == frozenset()
    with pytest.raises(RpcError):
        handler.submit(2, params(upstream.base + "/echo"))


# --- through the connection processor ------------------------------------------------


async def test_processor_gates_and_answers(server: InProcessServer, upstream: Upstream) -> None:
    conn = server.connect()
    request = {"method": "GET", "url": upstream.base + "/echo", "requestId": "a"}
    reply = await conn.request("http/request", request)
    assert reply["error"] == {
        "code": -32600,
        "message": "client must call initialize before using http methods",
    }
    await conn.initialize()
    reply = await conn.request("http/request", request)
    assert reply["result"]["status"] == 200
    assert json.loads(base64.b64decode(reply["result"]["bodyBase64"]))["path"] == "/echo"
    reply = await conn.request("http/request", {"method": "GET", "url": upstream.base})
    assert reply["error"] == {"code": -32602, "message": "missing field `requestId`"}


async def test_processor_streams_and_does_not_block(
    server: InProcessServer, upstream: Upstream
) -> None:
    conn = server.connect()
    await conn.initialize()
    slow = {"method": "GET", "url": upstream.base + "/slow", "requestId": "slow"}
    await conn.send({"id": 100, "method": "http/request", "params": slow})
    # Answered while the slow request is still waiting.
    reply = await conn.request("fs/getMetadata", {"path": "/"})
    assert reply["result"]["isDirectory"] is True
    stream = {
        "method": "GET",
        "url": upstream.base + "/stream",
        "requestId": "s",
        "streamResponse": True,
    }
    reply = await conn.request("http/request", stream)
    assert reply["result"]["bodyBase64"] == ""
    deltas: list[dict[str, Any]] = [
        n["params"] for n in conn.notifications if n.get("method") == "http/request/bodyDelta"
    ]
    while not (deltas and deltas[-1]["done"]):
        note = await conn.recv()
        if note.get("method") == "http/request/bodyDelta":
            deltas.append(note["params"])
    assert b"".join(base64.b64decode(d["deltaBase64"]) for d in deltas) == b"part0;part1;part2;"
    assert deltas[-1] == {
        "requestId": "s",
        "seq": len(deltas),
        "deltaBase64": "",
        "done": True,
        "error": None,
    }


async def test_connection_close_cancels_streams(
    server: InProcessServer, upstream: Upstream
) -> None:
    conn = server.connect()
    await conn.initialize()
    endless = {
        "method": "GET",
        "url": upstream.base + "/endless",
        "requestId": "e",
        "streamResponse": True,
    }
    reply = await conn.request("http/request", endless)
    assert reply["result"]["status"] == 200
    note = await conn.recv()
    assert note["method"] == "http/request/bodyDelta"
    await conn.close()
    await asyncio.wait_for(upstream.disconnects.wait(), WAIT_S)
    with contextlib.suppress(Exception):
        await asyncio.wait_for(conn.task, WAIT_S)
    assert conn.task.done()
