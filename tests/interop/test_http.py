"""``http/request`` (present in 0.133): buffered and streamed, against a local HTTP server."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
from aiohttp import web
from interop_support import Differ, ScriptContext, b64, result_of, unb64
from multidict import CIMultiDict

pytestmark = pytest.mark.interop

#: Response headers that vary per run or per HTTP stack.
VOLATILE_HEADERS = frozenset({"date", "server"})
#: Request headers the client stack adds; recorded separately (strict mode only).
STACK_HEADERS = frozenset({"host", "user-agent", "accept", "accept-encoding", "connection"})


#: Request headers the echo endpoint leaves out: per-stack, or placed differently.
ECHO_SKIPPED = frozenset({"host", "user-agent", "accept-encoding", "connection"})
GZIP_BODY = gzip.compress(b"compressed body", mtime=0)


async def _misbehaving(request: web.Request) -> web.StreamResponse | None:
    """Endpoints whose response is cut short or slow; None for the ordinary ones."""
    if request.path == "/short":  # promises 10 bytes, sends 3, hangs up
        resp = web.StreamResponse(headers={"Content-Length": "10"})
        await resp.prepare(request)
        await resp.write(b"abc")
        assert request.transport is not None
        request.transport.close()
        return resp
    if request.path == "/stall":  # promises 10 bytes, sends 3, then stalls
        resp = web.StreamResponse(headers={"Content-Length": "10"})
        await resp.prepare(request)
        await resp.write(b"abc")
        with contextlib.suppress(ConnectionError):
            await asyncio.sleep(2)
            await resp.write(b"0123456")
        return resp
    return None


async def _handler(request: web.Request) -> web.StreamResponse:
    body = await request.read()
    odd = await _misbehaving(request)
    if odd is not None:
        return odd
    if request.path == "/echo":
        seen = sorted(
            [k.lower(), v] for k, v in request.headers.items() if k.lower() not in ECHO_SKIPPED
        )
        echo = {"method": request.method, "path": request.path_qs, "body": body.decode()}
        return web.json_response({**echo, "headers": seen})
    if request.path == "/redirect-to":
        status = int(request.query.get("status", "302"))
        to = request.query.get("to")
        return web.Response(status=status, headers={"Location": to} if to else {})
    if request.path == "/loop":
        raise web.HTTPFound("/loop")
    if request.path == "/headers":
        headers = CIMultiDict(
            [
                ("Set-Cookie", "a=1"),
                ("X-Other", "b"),
                ("Set-Cookie", "c=2"),
                ("X-Utf8", "caf\u00e9"),
                ("X-Empty", ""),
            ]
        )
        return web.Response(body=b"", headers=headers)
    if request.path == "/gzip":
        return web.Response(body=GZIP_BODY, headers={"Content-Encoding": "gzip"})
    if request.path == "/empty":
        return web.Response(status=204)
    echoed = {
        "method": request.method,
        "path": request.path_qs,
        "body": body.decode(errors="replace"),
        "x-headers": [
            [k.lower(), v] for k, v in request.headers.items() if k.lower().startswith("x-")
        ],
        "stack-headers": sorted(k.lower() for k in request.headers if k.lower() in STACK_HEADERS),
    }
    if request.path == "/stream":
        resp = web.StreamResponse(headers={"X-Stream": "1"})
        await resp.prepare(request)
        with contextlib.suppress(ConnectionError):  # the exec-server may go away mid-stream
            for i in range(3):
                await resp.write(f"part{i};".encode())
                await asyncio.sleep(0.05)
            await resp.write_eof()
        return resp
    if request.path == "/slow":
        await asyncio.sleep(float(request.query.get("delay", "2")))
    if request.path == "/redirect":
        raise web.HTTPFound("/target")
    status = int(request.query.get("status", "200"))
    return web.Response(
        status=status,
        body=json.dumps(echoed).encode(),
        headers={"X-Resp": "r", "Set-Cookie": "a=1"},
        content_type="application/json",
    )


@pytest_asyncio.fixture
async def http_base() -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", _handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


def response_view(resp: Any) -> Any:
    """Drop volatile headers and decode the JSON echo body."""
    if not isinstance(resp, dict) or not isinstance(resp.get("result"), dict):
        return resp
    result = dict(resp["result"])
    result["headers"] = [
        h for h in result.get("headers", []) if h["name"].lower() not in VOLATILE_HEADERS
    ]
    body = unb64(result.pop("bodyBase64", ""))
    try:
        decoded: Any = json.loads(body) if body else ""
    except ValueError:
        decoded = body.decode(errors="replace")
    if isinstance(decoded, dict):
        decoded.pop("stack-headers", None)
    result["body"] = decoded
    return {**resp, "result": result}


async def test_http_request_buffered(differ: Differ, http_base: str) -> None:
    async def script(ctx: ScriptContext) -> None:
        c = await ctx.connect()
        await c.call("http/request", {"method": "GET", "url": http_base + "/", "requestId": "g"})
        await c.handshake()
        await c.call(
            "http/request",
            {"method": "GET", "url": http_base + "/x?q=1", "requestId": "a"},
            view=response_view,
        )
        await c.call(
            "http/request",
            {
                "method": "POST",
                "url": http_base + "/post?status=201",
                "requestId": "b",
                "headers": [
                    {"name": "X-One", "value": "1"},
                    {"name": "X-One", "value": "2"},
                    {"name": "X-Two", "value": "b"},
                ],
                "bodyBase64": b64("payload"),
            },
            view=response_view,
        )
        await c.call(
            "http/request",
            {
                "method": "DELETE",
                "url": http_base + "/d?status=404",
                "requestId": "c",
                "timeoutMs": None,
            },
            view=response_view,
        )
        await c.call(
            "http/request",
            {"method": "GET", "url": http_base + "/redirect", "requestId": "r"},
            view=response_view,
        )
        resp = await c.call(
            "http/request",
            {"method": "GET", "url": http_base + "/h", "requestId": "h"},
            record=False,
        )
        body = unb64(result_of(resp).get("bodyBase64", ""))
        ctx.note(
            "request headers added by the client stack",
            json.loads(body)["stack-headers"] if body else None,
            strict_only=True,
        )

    await differ.check(script)


async def test_http_request_streamed(differ: Differ, http_base: str) -> None:
    async def script(ctx: ScriptContext) -> None:
        c = await ctx.connect_ready()
        await c.call(
            "http/request",
            {
                "method": "GET",
                "url": http_base + "/stream",
                "requestId": "s",
                "streamResponse": True,
            },
            view=response_view,
        )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 5
        deltas: list[Any] = []
        while loop.time() < deadline:
            deltas = [
                n["params"] for n in c.notifications if n["method"] == "http/request/bodyDelta"
            ]
            if deltas and deltas[-1]["done"]:
                break
            await asyncio.sleep(0.02)
        ctx.note("body", b"".join(unb64(d["deltaBase64"]) for d in deltas).decode())
        ctx.note("seqs are 1..n", [d["seq"] for d in deltas] == list(range(1, len(deltas) + 1)))
        ctx.note(
            "last delta", {k: v for k, v in deltas[-1].items() if k != "seq"} if deltas else None
        )
        ctx.note(
            "only the last is done", [d["done"] for d in deltas[:-1]] == [False] * (len(deltas) - 1)
        )
        # The finished stream's id can be reused.
        await c.call(
            "http/request",
            {
                "method": "GET",
                "url": http_base + "/stream",
                "requestId": "s",
                "streamResponse": True,
            },
            view=response_view,
        )

    await differ.check(script)


async def test_http_request_errors(differ: Differ, http_base: str) -> None:
    async def script(ctx: ScriptContext) -> None:
        c = await ctx.connect_ready()
        await c.call(
            "http/request",
            {"method": "GET", "url": http_base + "/slow", "requestId": "t", "timeoutMs": 200},
        )
        await c.call(
            "http/request", {"method": "GET", "url": "ftp://example.invalid/", "requestId": "f"}
        )
        await c.call("http/request", {"method": "GET", "url": "/relative", "requestId": "r"})
        await c.call(
            "http/request", {"method": "BAD METHOD", "url": http_base + "/", "requestId": "m"}
        )
        await c.call("http/request", {"method": "GET", "url": http_base + "/"})
        await c.call(
            "http/request", {"method": "GET", "url": "http://127.0.0.1:9/", "requestId": "refused"}
        )
        await c.call(
            "http/request",
            {"method": "GET", "url": http_base + "/", "requestId": "b", "bodyBase64": "***"},
        )
        await c.call(
            "http/request",
            {
                "method": "GET",
                "url": http_base + "/",
                "requestId": "h",
                "headers": [{"name": "bad header", "value": "v"}],
            },
        )
        # Two concurrent streams with the same requestId.
        first = await c.send_request(
            "http/request",
            {
                "method": "GET",
                "url": http_base + "/stream",
                "requestId": "dup",
                "streamResponse": True,
            },
        )
        second = await c.send_request(
            "http/request",
            {
                "method": "GET",
                "url": http_base + "/stream",
                "requestId": "dup",
                "streamResponse": True,
            },
        )
        await c.response_to(first, view=response_view)
        await c.response_to(second, view=response_view)

    await differ.check(script)


def _deltas(c: Any) -> list[Any]:
    return [n["params"] for n in c.notifications if n["method"] == "http/request/bodyDelta"]


async def _wait_stream_done(c: Any, request_id: str, timeout: float = 5) -> list[Any]:
    """The body deltas of ``request_id`` once its ``done`` delta arrived (or timeout)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        deltas = [d for d in _deltas(c) if d["requestId"] == request_id]
        if (deltas and deltas[-1]["done"]) or loop.time() > deadline:
            return deltas
        await asyncio.sleep(0.02)


def _stream_summary(deltas: list[Any]) -> Any:
    return {
        "body": b"".join(unb64(d["deltaBase64"]) for d in deltas).decode(errors="replace"),
        "seqs are 1..n": [d["seq"] for d in deltas] == list(range(1, len(deltas) + 1)),
        "last": {k: v for k, v in deltas[-1].items() if k != "seq"} if deltas else None,
    }


REDIRECT_HEADERS = [
    {"name": "Authorization", "value": "Bearer secret"},
    {"name": "Cookie", "value": "c=1"},
    {"name": "Content-Type", "value": "text/plain"},
    {"name": "X-Keep", "value": "k"},
]


async def test_http_request_redirects(differ: Differ, http_base: str) -> None:
    """reqwest's policy: which method, body and headers survive each kind of redirect."""
    port = http_base.rsplit(":", 1)[1]

    async def script(ctx: ScriptContext) -> None:
        c = await ctx.connect_ready()
        cases = [("POST", 301), ("POST", 302), ("POST", 303), ("POST", 307), ("PUT", 308)]
        cases += [("DELETE", 302), ("PUT", 303), ("GET", 303)]
        for method, status in cases:
            await c.call(
                "http/request",
                {
                    "method": method,
                    "url": f"{http_base}/redirect-to?status={status}&to=/echo%3Fhop%3D1",
                    "requestId": f"{method}-{status}",
                    "headers": REDIRECT_HEADERS,
                    "bodyBase64": b64("BODY"),
                },
                view=response_view,
            )
        # Another host (localhost vs 127.0.0.1): credentials are dropped.
        await c.call(
            "http/request",
            {
                "method": "GET",
                "url": f"{http_base}/redirect-to?to=http://localhost:{port}/echo",
                "requestId": "cross",
                "headers": REDIRECT_HEADERS,
            },
            view=response_view,
        )
        for path in ("/loop", "/redirect-to?to=ftp://example.invalid/x", "/redirect-to?status=302"):
            await c.call(
                "http/request",
                {"method": "GET", "url": http_base + path, "requestId": "r"},
                view=response_view,
            )
        # A redirected stream.
        await c.call(
            "http/request",
            {
                "method": "GET",
                "url": http_base + "/redirect-to?status=307&to=/stream",
                "requestId": "rs",
                "streamResponse": True,
            },
            view=response_view,
        )
        ctx.note("redirected stream", _stream_summary(await _wait_stream_done(c, "rs")))

    await differ.check(script)


async def test_http_request_headers_and_bodies(differ: Differ, http_base: str) -> None:
    """Header grouping and filtering, raw (undecoded) bodies, credentials from the URL."""

    async def script(ctx: ScriptContext) -> None:
        c = await ctx.connect_ready()
        await c.call(
            "http/request",
            {
                "method": "PATCH",
                "url": http_base + "/echo",
                "requestId": "e",
                "headers": [
                    {"name": "X-B", "value": "1"},
                    {"name": "X-A", "value": "2"},
                    {"name": "x-b", "value": "3"},
                    {"name": "Accept", "value": "text/plain"},
                    {"name": "X-Utf8", "value": "caf\u00e9\t "},
                ],
                "bodyBase64": b64("patched"),
            },
            view=response_view,
        )
        await c.call(
            "http/request",
            {"method": "GET", "url": http_base + "/headers", "requestId": "h"},
            view=response_view,
        )
        await c.call(
            "http/request",
            {"method": "GET", "url": http_base + "/gzip", "requestId": "g"},
            view=lambda r: {**response_view(r), "raw": result_of(r)["bodyBase64"]},
        )
        await c.call(
            "http/request",
            {"method": "HEAD", "url": http_base + "/echo", "requestId": "head"},
            view=response_view,
        )
        userinfo = http_base.replace("http://", "http://us%65r:p%3Ass@")
        await c.call(
            "http/request",
            {"method": "GET", "url": userinfo + "/echo", "requestId": "u"},
            view=response_view,
        )
        await c.call(
            "http/request",
            {
                "method": "GET",
                "url": userinfo + "/echo",
                "requestId": "u2",
                "headers": [{"name": "authorization", "value": "mine"}],
            },
            view=response_view,
        )
        # URL normalization: the request reaches the same endpoint.
        await c.call(
            "http/request",
            {
                "method": "GET",
                "url": " HTTP:" + http_base.removeprefix("http:") + "\\a\\..\\echo?q=a b#frag",
                "requestId": "n",
            },
            view=response_view,
        )
        await c.call(
            "http/request",
            {
                "method": "GET",
                "url": http_base + "/empty",
                "requestId": "s",
                "streamResponse": True,
            },
            view=response_view,
        )
        ctx.note("empty stream", _stream_summary(await _wait_stream_done(c, "s")))

    await differ.check(script)


async def test_http_request_body_failures(differ: Differ, http_base: str) -> None:
    """A body cut short or too slow: -32603 when buffered, an error delta when streamed."""

    async def script(ctx: ScriptContext) -> None:
        c = await ctx.connect_ready()
        await c.call(
            "http/request", {"method": "GET", "url": http_base + "/short", "requestId": "a"}
        )
        await c.call(
            "http/request",
            {"method": "GET", "url": http_base + "/stall", "requestId": "b", "timeoutMs": 300},
        )
        for path, timeout in (("/short", None), ("/stall", 300)):
            request_id = f"stream{path}"
            await c.call(
                "http/request",
                {
                    "method": "GET",
                    "url": http_base + path,
                    "requestId": request_id,
                    "streamResponse": True,
                    "timeoutMs": timeout,
                },
                view=response_view,
            )
            ctx.note(f"{path} stream", _stream_summary(await _wait_stream_done(c, request_id)))

    await differ.check(script)


async def test_http_request_validation(differ: Differ, http_base: str) -> None:
    """Parameter checks, in Codex's order, and the URL texts of the url crate."""

    async def script(ctx: ScriptContext) -> None:
        c = await ctx.connect_ready()
        urls = [
            "",
            "example.com/x",
            "http://",
            "http://user@/",
            "http://a:99999/",
            "http://a:8x/",
            "http://[::1",
            "http://999.1.1.1/",
            "http://08/",
            "http://exa mple.com/",
            "http://xn--a/",
            "mailto:x",
            "file:///etc/passwd",
            "ws://a/",
            # Valid, unreachable: the error names the normalized URL.
            "http://127.0.0.1:9",
            "http://0x7f.0.0.1:9/a/./b/../c",
            "http://[0:0:0:0:0:0:0:1]:9/",
            "http://4294967295:9/",
        ]
        for url in urls:
            await c.call(
                "http/request", {"method": "GET", "url": url, "requestId": "v", "timeoutMs": 2000}
            )
        for method in ("", "GE T", "G\u00c9T"):
            await c.call("http/request", {"method": method, "url": "ftp://x/", "requestId": "m"})
        for name, value in (("", "v"), ("a:b", "v"), ("ok", "a\nb"), ("ok", "a\x7fb")):
            await c.call(
                "http/request",
                {
                    "method": "GET",
                    "url": http_base + "/",
                    "requestId": "h",
                    "headers": [{"name": name, "value": value}],
                },
            )
        # Method before URL before headers.
        await c.call(
            "http/request",
            {
                "method": "BAD METHOD",
                "url": "ftp://x",
                "requestId": "o",
                "headers": [{"name": "bad name", "value": "v"}],
            },
        )
        await c.call(
            "http/request",
            {
                "method": "GET",
                "url": "ftp://x",
                "requestId": "o",
                "headers": [{"name": "bad name", "value": "v"}],
            },
        )
        await c.call(
            "http/request",
            {"method": "GET", "url": http_base + "/", "requestId": "z", "timeoutMs": 0},
        )

    await differ.check(script)


async def test_http_request_does_not_block_other_requests(differ: Differ, http_base: str) -> None:
    """Intentional difference: 0.133 answers one request at a time, so a slow HTTP
    server holds up everything behind it; ours answers the others at once."""

    async def script(ctx: ScriptContext) -> None:
        c = await ctx.connect_ready()
        slow = await c.send_request(
            "http/request",
            {"method": "GET", "url": http_base + "/slow?delay=0.6", "requestId": "slow"},
        )
        meta = await c.send_request("fs/getMetadata", {"path": ctx.path()})
        early = await c.poll_response(meta, timeout=0.3)
        ctx.note("getMetadata answered while http/request is pending", early is not None)
        await c.response_to(slow, view=lambda r: {"status": result_of(r).get("status")})
        if early is None:
            await c.response_to(meta, view=lambda r: {"answered": "result" in r})

    runs = await differ.each(script)
    codex = runs["codex"].normalized()
    assert codex[0] == {
        "note": "getMetadata answered while http/request is pending",
        "value": False,
    }, codex
    # ... and getMetadata came after the slow response.
    assert [e["recv"] for e in codex[1:]] == [{"status": 200}, {"answered": True}], codex
    if "ours" in runs:
        ours = runs["ours"].normalized()
        assert ours[0]["value"] is True, ours
        assert [e["recv"] for e in ours[1:]] == [{"status": 200}], ours
