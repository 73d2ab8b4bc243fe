"""Envelope, handshake gating and error answers: Codex 0.133.0 vs ours."""

from __future__ import annotations

import aiohttp
import pytest
from interop_support import CLOSED, Differ, ScriptContext

pytestmark = pytest.mark.interop

META = "fs/getMetadata"


async def test_calls_before_initialize(differ: Differ) -> None:
    async def script(ctx: ScriptContext) -> None:
        c = await ctx.connect()
        await c.call(META, {"path": ctx.path()})
        await c.call("fs/readFile", {"path": ctx.path("x")})
        await c.call(
            "process/start",
            {"processId": "p", "argv": ["true"], "cwd": ctx.path(), "env": {}, "tty": False},
        )
        await c.call("process/read", {"processId": "p"})
        await c.call("process/write", {"processId": "p", "chunk": ""})
        await c.call("process/terminate", {"processId": "p"})
        # Bad params are still refused by the gate first?
        await c.call("process/read", {"bogus": 1})
        await c.call(META, None)
        # The connection survives all of that.
        await c.initialize()

    await differ.check(script)


async def test_calls_between_initialize_and_initialized(differ: Differ) -> None:
    async def script(ctx: ScriptContext) -> None:
        c = await ctx.connect()
        await c.initialize()
        await c.call(META, {"path": ctx.path()})
        await c.call("process/read", {"processId": "p"})
        await c.call("process/write", {"processId": "p", "chunk": ""})
        await c.call("process/terminate", {"processId": "p"})
        await c.call("unknown/method", {})
        await c.notify("initialized", {})
        await c.call(META, {"path": ctx.path()})

    await differ.check(script)


async def test_second_initialize(differ: Differ) -> None:
    async def script(ctx: ScriptContext) -> None:
        c = await ctx.connect()
        await c.initialize()
        await c.initialize()
        await c.notify("initialized", {})
        await c.initialize(client_name="again")
        await c.call("initialize", {"clientName": "x", "resumeSessionId": "nope"})
        # A second `initialized` is harmless?
        await c.notify("initialized", {})
        await c.call(META, {"path": ctx.path()})

    await differ.check(script)


async def test_initialize_param_errors_and_retry(differ: Differ) -> None:
    async def script(ctx: ScriptContext) -> None:
        c = await ctx.connect()
        await c.call("initialize", {})
        await c.call("initialize", None)
        await c.call("initialize", omit_params=True)
        await c.call("initialize", {"clientName": 5})
        await c.call("initialize", {"clientName": "x", "resumeSessionId": 7})
        await c.call("initialize", [])
        # A failed resume does not consume the one initialize this connection gets.
        await c.call(
            "initialize",
            {"clientName": "x", "resumeSessionId": "00000000-0000-4000-8000-000000000000"},
        )
        await c.call("initialize", {"clientName": "x", "resumeSessionId": "not-a-uuid"})
        # Extra fields and a jsonrpc member are tolerated.
        await c.call("initialize", {"clientName": "x", "extra": True}, extra={"jsonrpc": "2.0"})
        await c.notify("initialized", {})
        await c.call(META, {"path": ctx.path()})

    await differ.check(script)


async def test_unknown_methods(differ: Differ) -> None:
    async def script(ctx: ScriptContext) -> None:
        c = await ctx.connect()
        await c.call("test/unknown-a", {})
        await c.call("", {})
        await c.call("process/Start", {})
        await c.handshake()
        await c.call("test/unknown-b", {})
        await c.call(META, {"path": ctx.path()})

    await differ.check(script)


async def test_absent_and_null_params_name_the_rust_type(differ: Differ) -> None:
    """``invalid type: null, expected struct <Rust type>``, per method, exactly as 0.133
    words it (recorded as notes, so the decoder text itself is compared)."""
    methods = [
        "initialize",
        "process/start",
        "process/read",
        "process/write",
        "process/terminate",
        "fs/readFile",
        "fs/writeFile",
        "fs/createDirectory",
        "fs/getMetadata",
        "fs/readDirectory",
        "fs/remove",
        "fs/copy",
        "http/request",
    ]

    async def script(ctx: ScriptContext) -> None:
        c = await ctx.connect()
        for method in methods:
            for label, omit in (("absent", True), ("null", False)):
                resp = await c.call(method, None, omit_params=omit, record=False)
                ctx.note(f"{method} {label}", resp.get("error"))

    await differ.check(script)


async def test_request_ids(differ: Differ) -> None:
    async def script(ctx: ScriptContext) -> None:
        c = await ctx.connect()
        await c.call("initialize", {"clientName": "x"}, request_id="init-1")
        await c.notify("initialized", {})
        await c.call(META, {"path": ctx.path()}, request_id="")
        await c.call(META, {"path": ctx.path()}, request_id=0)
        await c.call(META, {"path": ctx.path()}, request_id=-5)
        await c.call(META, {"path": ctx.path()}, request_id=2**53)
        await c.call(META, {"path": ctx.path()}, request_id=9223372036854775807)
        # Reusing an id is not policed.
        await c.call(META, {"path": ctx.path()}, request_id=0)

    await differ.check(script)


MALFORMED_FRAMES = [
    "not json",
    "",
    "{",
    "42",
    '"str"',
    "null",
    "{}",
    '{"id":1}',
    '{"id":1,"method":5}',
    '{"params":{}}',
    '{"id":"1","method":"initialize","params":{"clientName":"x"},"result":{}}',
    "\xff\xfe",
    '{"id":1,"method":"x"} trailing',
    '{"id":1,"method":"x"}\n{"id":2,"method":"y"}',
    "[]",
    '[{"id":1,"method":"initialize","params":{"clientName":"x"}}]',
]


async def test_malformed_frames(differ: Differ) -> None:
    """Each frame on a fresh connection: the reply, then whether the connection lives."""

    async def script(ctx: ScriptContext) -> None:
        for frame in MALFORMED_FRAMES:
            c = await ctx.connect()
            await c.send_raw_expect(frame, timeout=1.0)
            if not c.closed:
                # Only whether it worked: session numbering must not cascade into a diff.
                await c.call(
                    "initialize",
                    {"clientName": "after"},
                    timeout=2.0,
                    view=lambda r: {"id": r["id"], "initialized": "sessionId" in r["result"]},
                )
            await c.close()

    await differ.check(script)


#: Requests whose id is neither an integer nor a string.
ODD_ID_FRAMES = [
    '{"id":1.5,"method":"initialize","params":{"clientName":"x"}}',
    '{"id":true,"method":"initialize","params":{"clientName":"x"}}',
    '{"id":[1],"method":"initialize","params":{"clientName":"x"}}',
]


async def test_non_integer_non_string_ids(differ: Differ) -> None:
    """Intentional difference: a request whose id is 1.5, true or [1].

    0.133 drops the connection without a word. Ours treats the frame like any other
    malformed input: an id -1 parse error, and the connection stays usable.
    """

    async def script(ctx: ScriptContext) -> None:
        for frame in ODD_ID_FRAMES:
            c = await ctx.connect()
            await c.send_raw_expect(frame, timeout=1.0)
            if not c.closed:
                await c.call(
                    "initialize",
                    {"clientName": "after"},
                    timeout=2.0,
                    view=lambda r: {"id": r["id"], "initialized": "sessionId" in r["result"]},
                )
            await c.close()

    runs = await differ.each(script)
    codex = runs["codex"].normalized()
    assert [e["recv"] for e in codex] == [CLOSED] * len(ODD_ID_FRAMES), codex
    if "ours" in runs:
        ours = runs["ours"].normalized()
        parse_error = {
            "error": {
                "code": -32600,
                "message": "failed to parse websocket JSON-RPC message from exec-server "
                "websocket: <decoder message>",
            },
            "id": -1,
        }
        after = {"id": 1, "initialized": True}
        assert [e["recv"] for e in ours] == [parse_error, after] * len(ODD_ID_FRAMES), ours


async def test_binary_frames_accepted(differ: Differ) -> None:
    async def script(ctx: ScriptContext) -> None:
        c = await ctx.connect()
        await c.call("initialize", {"clientName": "bin"}, binary=True)
        await c.notify("initialized", {})
        await c.call(META, {"path": ctx.path()}, binary=True)
        await c.send_raw_expect("garbage", binary=True)
        await c.call(META, {"path": ctx.path()})

    await differ.check(script)


@pytest.mark.parametrize(
    "frame",
    [
        pytest.param('{"id":null,"method":"initialize","params":{"clientName":"x"}}', id="id-null"),
        pytest.param('{"id":99,"result":{}}', id="response-from-client"),
        pytest.param('{"id":99,"error":{"code":1,"message":"m"}}', id="error-from-client"),
        pytest.param('{"method":"bogus/notification","params":{}}', id="unknown-notification"),
        pytest.param('{"method":"initialized","params":{}}', id="initialized-before-initialize"),
    ],
)
async def test_connection_fatal_frames(differ: Differ, frame: str) -> None:
    """Frames after which Codex drops the connection (or not): compare."""

    async def script(ctx: ScriptContext) -> None:
        c = await ctx.connect()
        await c.send_raw_expect(frame, timeout=1.5)
        ctx.note("connection closed", c.closed)
        # 0.133 drops TCP (1006) instead of sending a close frame.
        ctx.note("websocket close code", c.close_code, strict_only=True)
        # The server itself survives: a new connection works.
        d = await ctx.connect()
        await d.initialize()

    await differ.check(script)


async def test_connection_fatal_after_handshake(differ: Differ) -> None:
    async def script(ctx: ScriptContext) -> None:
        c = await ctx.connect()
        await c.handshake()
        await c.notify("process/output", {"processId": "x"})
        ctx.note("connection closed", await c.expect_closed(timeout=1.5))
        ctx.note("websocket close code", c.close_code, strict_only=True)

    await differ.check(script)


async def test_pipelined_requests_answered_in_order(differ: Differ) -> None:
    """Intentional difference: a request pipelined behind a waiting long-poll.

    0.133 handles one request at a time per connection, so a ``process/read`` that
    waits blocks everything behind it. Ours parks the waiting read and answers the
    rest at once.
    """

    async def script(ctx: ScriptContext) -> None:
        c = await ctx.connect_ready()
        await c.call(
            "process/start",
            {
                "processId": "s",
                "argv": ["/bin/sleep", "0.5"],
                "cwd": ctx.path(),
                "env": {},
                "tty": False,
            },
        )
        read = await c.send_request("process/read", {"processId": "s", "waitMs": 3000})
        meta = await c.send_request(META, {"path": ctx.path()})
        early = await c.poll_response(meta, timeout=0.25)
        ctx.note("getMetadata answered while the long-poll read is pending", early is not None)
        await c.response_to(read, view=lambda r: {"id": r["id"], "exited": r["result"]["exited"]})
        if early is None:
            await c.response_to(meta, view=lambda r: {"id": r["id"], "answered": "result" in r})
        await c.wait_closed("s")

    runs = await differ.each(script)
    codex = runs["codex"].normalized()
    read_answer = {"id": 3, "exited": True}
    assert [e.get("value", e.get("recv")) for e in codex] == [
        {"id": 2, "result": {"processId": "s"}},
        False,
        read_answer,
        {"id": 4, "answered": True},
    ], codex
    if "ours" in runs:
        ours = runs["ours"].normalized()
        assert [e.get("value", e.get("recv")) for e in ours] == [
            {"id": 2, "result": {"processId": "s"}},
            True,
            read_answer,
        ], ours


async def test_http_routes(differ: Differ) -> None:
    async def script(ctx: ScriptContext) -> None:
        c = await ctx.connect()
        ctx.note("GET /readyz", await c.http_get("/readyz"))
        status, _ = await c.http_get("/")
        ctx.note("GET / without upgrade: is client error", 400 <= status < 500)
        ctx.note("GET /nope status", (await c.http_get("/nope"))[0])

    await differ.check(script)


async def test_permessage_deflate_offer(differ: Differ) -> None:
    """A compression offer is accepted but not negotiated (0.133 answers 101 without
    Sec-WebSocket-Extensions; codex-observed.md says it drops such handshakes, which did not
    reproduce with aiohttp's or hand-written offers)."""

    async def script(ctx: ScriptContext) -> None:
        for offer in (15, 12, 9):
            try:
                ws = await ctx.http.ws_connect(ctx.server.url, compress=offer)
            except (aiohttp.ClientError, OSError) as exc:
                ctx.note(f"offer window bits {offer}", type(exc).__name__)
                continue
            ctx.note(f"offer window bits {offer}: negotiated", ws.compress)
            ctx.note(
                "response extensions header",
                ws._response.headers.get("Sec-WebSocket-Extensions"),
            )
            await ws.send_str('{"id":1,"method":"initialize","params":{"clientName":"z"}}')
            msg = await ws.receive(timeout=5)
            ctx.note("initialize over it", msg.type.name)
            await ws.close()

    await differ.check(script)


async def test_methods_added_after_0133(differ: Differ) -> None:
    """Later-Codex methods we implement: 0.133 answers -32601 for each."""

    async def script(ctx: ScriptContext) -> None:
        c = await ctx.connect_ready()
        await c.call("environment/info", None)
        await c.call(
            "process/start",
            {
                "processId": "s",
                "argv": ["/bin/sleep", "5"],
                "cwd": ctx.path(),
                "env": {},
                "tty": True,
            },
        )
        await c.call("process/resize", {"processId": "s", "rows": 30, "cols": 100})
        await c.call("process/signal", {"processId": "s", "signal": "interrupt"})
        await c.call("process/terminate", {"processId": "s"})
        await c.call("fs/canonicalize", {"path": ctx.path()})
        await c.call("fs/open", {"handleId": "h", "path": ctx.path()})
        await c.call("environment/status", None)

    runs = await differ.each(script)
    codex = [e["recv"] for e in runs["codex"].normalized(strict=True)]
    for reply, method in zip(
        (codex[0], codex[2], codex[3], codex[5], codex[6], codex[7]),
        (
            "environment/info",
            "process/resize",
            "process/signal",
            "fs/canonicalize",
            "fs/open",
            "environment/status",
        ),
        strict=True,
    ):
        assert reply["error"] == {
            "code": -32601,
            "message": f"exec-server stub does not implement `{method}` yet",
        }, codex
    if "ours" in runs:
        ours = [e["recv"] for e in runs["ours"].normalized(strict=True)]
        assert set(ours[0]["result"]["shell"]) == {"name", "path"}, ours
        assert ours[2] == {"id": 4, "result": {}}, ours
        assert ours[3] == {"id": 5, "result": {}}, ours
        assert ours[5] == {"id": 7, "result": {"path": "<tmp>"}}, ours
        assert ours[6]["error"]["message"] == "path `<tmp>` is not a file", ours
        assert ours[7] == {"id": 9, "result": {"status": "ready"}}, ours
