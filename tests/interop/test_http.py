"""``http/request`` (present in 0.133): buffered and streamed, against a local HTTP server."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
from aiohttp import web
from interop_support import Differ, ScriptContext, b64, result_of, unb64

pytestmark = pytest.mark.interop

#: Response headers that vary per run or per HTTP stack.
VOLATILE_HEADERS = frozenset({"date", "server"})
#: Request headers the client stack adds; recorded separately (strict mode only).
STACK_HEADERS = frozenset({"host", "user-agent", "accept", "accept-encoding", "connection"})


async def _handler(request: web.Request) -> web.StreamResponse:
    body = await request.read()
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
        await asyncio.sleep(2)
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
