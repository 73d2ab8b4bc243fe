"""Sessions: detach on disconnect, resume within the TTL, expiry: Codex 0.133.0 vs ours."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from interop_support import Differ, ScriptContext, b64, pids_with_marker, read_view

pytestmark = pytest.mark.interop

#: 0.133's detached-session TTL (measured 10.08-10.09 s).
DETACHED_SESSION_TTL_S = 10.0


def start_params(ctx: ScriptContext, pid: str, argv: list[str], **extra: object) -> dict:
    return {"processId": pid, "argv": argv, "cwd": ctx.path(), "env": {}, "tty": False} | extra


async def test_resume_within_ttl(differ: Differ) -> None:
    async def script(ctx: ScriptContext) -> None:
        a = await ctx.connect(name="a")
        first = await a.initialize()
        session_id = first["result"]["sessionId"]
        await a.notify("initialized", {})
        await a.call(
            "process/start",
            start_params(
                ctx, "bg", ["/bin/sh", "-c", "echo before; sleep 0.5; echo during; sleep 0.5"]
            ),
        )
        await a.call(
            "process/start",
            start_params(ctx, "cat", ["/bin/sh", "-c", "read x; echo got:$x"], pipeStdin=True),
        )
        await a.wait_output("bg", b"before\n")
        await a.close()
        await asyncio.sleep(1.5)  # "during" is written and the process exits while detached
        b = await ctx.connect(name="b")
        await b.initialize(resume=session_id)
        await b.notify("initialized", {})
        await b.call("process/read", {"processId": "bg"}, view=read_view)
        await b.call("process/write", {"processId": "cat", "chunk": b64("after-resume\n")})
        ctx.note("cat closed after resume", await b.wait_closed("cat"))
        ctx.note("notifications for bg replayed on resume", bool(b.events("bg")))
        await b.call("process/read", {"processId": "cat"}, view=read_view)
        # The process ids still belong to the session.
        await b.call("process/start", start_params(ctx, "bg", ["/bin/true"]))

    await differ.check(script)


async def test_resume_after_abrupt_disconnect(differ: Differ) -> None:
    """The real harness drops TCP without a close frame; the session must still detach."""

    async def script(ctx: ScriptContext) -> None:
        a = await ctx.connect(name="a")
        session_id = (await a.initialize())["result"]["sessionId"]
        await a.notify("initialized", {})
        await a.call("process/start", start_params(ctx, "s", ["/bin/sleep", "30"]))
        await a.abort()
        await asyncio.sleep(0.3)
        b = await ctx.connect(name="b")
        await b.initialize(resume=session_id)
        await b.notify("initialized", {})
        await b.call("process/read", {"processId": "s"}, view=read_view)
        await b.call("process/terminate", {"processId": "s"})
        await b.wait_closed("s")
        await b.call("process/read", {"processId": "s"}, view=read_view)

    await differ.check(script)


async def test_resume_attached_session_refused(differ: Differ) -> None:
    async def script(ctx: ScriptContext) -> None:
        a = await ctx.connect(name="a")
        session_id = (await a.initialize())["result"]["sessionId"]
        await a.notify("initialized", {})
        b = await ctx.connect(name="b")
        await b.initialize(resume=session_id)
        # The refused connection may initialize afresh; the owner keeps working.
        await b.initialize()
        await b.notify("initialized", {})
        await a.call("fs/getMetadata", {"path": ctx.path()})
        # Resuming before `initialized` was sent on the owner: still attached.
        c = await ctx.connect(name="c")
        c_session = (await c.initialize())["result"]["sessionId"]
        d = await ctx.connect(name="d")
        await d.initialize(resume=c_session)

    await differ.check(script)


async def test_resume_twice_and_resume_own_session(differ: Differ) -> None:
    async def script(ctx: ScriptContext) -> None:
        a = await ctx.connect(name="a")
        session_id = (await a.initialize())["result"]["sessionId"]
        await a.notify("initialized", {})
        await a.close()
        await asyncio.sleep(0.2)
        b = await ctx.connect(name="b")
        await b.initialize(resume=session_id)
        await b.notify("initialized", {})
        c = await ctx.connect(name="c")
        await c.initialize(resume=session_id)
        await b.close()
        await asyncio.sleep(0.2)
        await c.initialize(resume=session_id)  # second initialize on c: refused anyway
        e = await ctx.connect(name="e")
        await e.initialize(resume=session_id)
        await e.call("fs/getMetadata", {"path": ctx.path()})  # before initialized
        await e.notify("initialized", {})
        await e.call("fs/getMetadata", {"path": ctx.path()})
        await e.initialize(resume=session_id.upper())

    await differ.check(script)


async def test_resume_with_live_long_poll_on_dropped_connection(differ: Differ) -> None:
    """A long-poll read in flight when the connection drops must not block the resume."""

    async def script(ctx: ScriptContext) -> None:
        a = await ctx.connect(name="a")
        session_id = (await a.initialize())["result"]["sessionId"]
        await a.notify("initialized", {})
        await a.call("process/start", start_params(ctx, "idle", ["/bin/sleep", "30"]))
        await a.send_request("process/read", {"processId": "idle", "waitMs": 20000})
        await asyncio.sleep(0.2)
        await a.abort()
        b = await ctx.connect(name="b")
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        await b.initialize(resume=session_id)
        ctx.note("resume answered within 2 s", loop.time() - t0 < 2)
        await b.notify("initialized", {})
        await b.call("process/terminate", {"processId": "idle"})

    await differ.check(script)


@pytest.mark.slow
async def test_session_expires_after_ttl(differ: Differ) -> None:
    """After the TTL the session is gone and its processes are killed."""
    marker = f"{DETACHED_SESSION_TTL_S + 20.0 + uuid.uuid4().int % 1000 / 1000:.3f}"

    async def script(ctx: ScriptContext) -> None:
        a = await ctx.connect(name="a")
        session_id = (await a.initialize())["result"]["sessionId"]
        await a.notify("initialized", {})
        await a.call("process/start", start_params(ctx, "s", ["/bin/sleep", marker]))
        await a.close()
        await asyncio.sleep(DETACHED_SESSION_TTL_S - 2.0)
        ctx.note("process alive shortly before the TTL", bool(pids_with_marker(marker)))
        await asyncio.sleep(3.5)
        ctx.note("process killed after the TTL", not pids_with_marker(marker))
        b = await ctx.connect(name="b")
        await b.initialize(resume=session_id)
        await b.initialize()

    await differ.check(script, timeout=40)
