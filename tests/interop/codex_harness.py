"""Running the real Codex 0.171 harness (``codex exec``) against an exec-server.

Three pieces, all on loopback:

* :class:`FakeModel`: a scripted Responses-API server (``POST /v1/responses``,
  answered as server-sent events). Each request gets the next :class:`Step`: the
  output items it streams (function calls, then a final message). A step may be a
  function of the request so far, e.g. to reuse a session id the harness reported.
* :class:`RecordingProxy`: a websocket proxy between the harness and the server that
  keeps every JSON-RPC frame both ways, so a test can assert what the harness called
  and that no error other than the expected ones came back.
* :func:`run_codex_exec`: ``codex exec`` with a throwaway ``CODEX_HOME``, the fake
  model as its provider and ``CODEX_EXEC_SERVER_URL`` pointing at the proxy.

Sandbox assertions (a write outside the workspace denied, inside allowed, reads
outside allowed, the network refused) are steps like any other: a command's
output comes back to the fake model in the next request's ``function_call_output``
(:meth:`FakeModel.tool_output`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

JSON = Any


def exec_command(call_id: str, cmd: str, **extra: Any) -> JSON:
    """A function call of 0.171's ``exec_command`` tool (its unified exec)."""
    return {
        "type": "function_call",
        "call_id": call_id,
        "name": "exec_command",
        "arguments": json.dumps({"cmd": cmd, **extra}),
    }


def write_stdin(call_id: str, session_id: int, chars: str, **extra: Any) -> JSON:
    arguments = {"session_id": session_id, "chars": chars, **extra}
    return {
        "type": "function_call",
        "call_id": call_id,
        "name": "write_stdin",
        "arguments": json.dumps(arguments),
    }


def apply_patch(call_id: str, patch: str) -> JSON:
    """``apply_patch`` as the model invokes it through the shell; the harness
    intercepts it and applies it with fs/* calls to the environment."""
    return exec_command(call_id, f"apply_patch <<'EOF'\n{patch}\nEOF\n")


def message(text: str) -> JSON:
    return {
        "type": "message",
        "role": "assistant",
        "id": "msg_final",
        "content": [{"type": "output_text", "text": text}],
    }


Step = list[JSON] | Callable[["FakeModel"], list[JSON]]


@dataclass
class FakeModel:
    """A scripted model: request N is answered with ``steps[N]``'s output items."""

    steps: list[Step]
    requests: list[JSON] = field(default_factory=list)
    url: str = ""
    _runner: web.AppRunner | None = None

    async def __aenter__(self) -> FakeModel:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/responses", self._responses)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}/v1"
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def tool_output(self, call_id: str) -> str | None:
        """What the harness reported for ``call_id`` (the latest request holds it)."""
        for request in reversed(self.requests):
            for item in request.get("input", []):
                if item.get("type") == "function_call_output" and item.get("call_id") == call_id:
                    output = item.get("output")
                    if isinstance(output, list):
                        return "".join(part.get("text", "") for part in output)
                    return str(output)
        return None

    def session_id(self, call_id: str) -> int:
        """The unified-exec session a still-running command was left in."""
        output = self.tool_output(call_id) or ""
        found = re.search(r"session ID (\d+)", output)
        if found is None:
            raise AssertionError(f"no session id in the output of {call_id}: {output!r}")
        return int(found.group(1))

    async def _responses(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.requests.append(body)
        index = len(self.requests) - 1
        if index < len(self.steps):
            step = self.steps[index]
            items = step(self) if callable(step) else step
        else:
            items = [message("no more steps")]
        response = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await response.prepare(request)
        response_id = f"resp_{index}"

        async def event(obj: JSON) -> None:
            await response.write(f"event: {obj['type']}\ndata: {json.dumps(obj)}\n\n".encode())

        await event({"type": "response.created", "response": {"id": response_id}})
        for item in items:
            await event({"type": "response.output_item.done", "item": item})
        usage = {"input_tokens": 1, "output_tokens": 1, "total_tokens": 2}
        await event({"type": "response.completed", "response": {"id": response_id, "usage": usage}})
        await response.write_eof()
        return response


class RecordingProxy:
    """A websocket proxy that records every frame between a harness and a server."""

    def __init__(
        self, upstream: str, *, drop_after: Callable[[str, JSON], bool] | None = None
    ) -> None:
        self.upstream = upstream
        #: Drop the harness's connection (TCP abort, no close frame) once, right after
        #: forwarding the first frame this predicate accepts: a network failure.
        self.drop_after = drop_after
        self.connections = 0
        self.frames: list[tuple[str, JSON]] = []
        self.url = ""
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> RecordingProxy:
        self._session = aiohttp.ClientSession()
        app = web.Application()
        app.router.add_get("/", self._proxy)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"ws://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    async def _proxy(self, request: web.Request) -> web.StreamResponse:
        assert self._session is not None
        downstream = web.WebSocketResponse(max_msg_size=256 * 1024 * 1024, compress=False)
        await downstream.prepare(request)
        self.connections += 1
        async with self._session.ws_connect(
            self.upstream, max_msg_size=256 * 1024 * 1024, compress=0
        ) as upstream:

            async def pump(
                src: web.WebSocketResponse | aiohttp.ClientWebSocketResponse,
                dst: web.WebSocketResponse | aiohttp.ClientWebSocketResponse,
                direction: str,
            ) -> None:
                async for msg in src:
                    if msg.type not in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
                        break
                    data = msg.data if isinstance(msg.data, str) else msg.data.decode()
                    frame: JSON = None
                    with contextlib.suppress(ValueError):
                        frame = json.loads(data)
                        self.frames.append((direction, frame))
                    await dst.send_str(data)
                    if self.drop_after is not None and self.drop_after(direction, frame):
                        self.drop_after = None
                        self.frames.append(("--", {"dropped": True}))
                        if request.transport is not None:
                            request.transport.abort()
                        break
                await dst.close()

            tasks = [
                asyncio.ensure_future(pump(downstream, upstream, "c2s")),
                asyncio.ensure_future(pump(upstream, downstream, "s2c")),
            ]
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        return downstream

    # -- what happened ---------------------------------------------------------------------

    def requests(self, method: str | None = None) -> list[JSON]:
        return [
            frame
            for direction, frame in self.frames
            if direction == "c2s" and "id" in frame and "method" in frame
            if method is None or frame["method"] == method
        ]

    def initializes(self) -> list[JSON]:
        return [frame["params"] for frame in self.requests("initialize")]

    def methods(self) -> list[str]:
        return [frame["method"] for frame in self.requests()]

    def errors(self) -> list[tuple[str, JSON]]:
        """(method, error) for every error answer the harness got."""
        method_of = {frame["id"]: frame["method"] for frame in self.requests()}
        return [
            (method_of.get(frame.get("id"), "?"), frame["error"])
            for direction, frame in self.frames
            if direction == "s2c" and "error" in frame
        ]

    def result_of(self, request: JSON) -> JSON:
        for direction, frame in self.frames:
            if direction == "s2c" and frame.get("id") == request["id"] and "method" not in frame:
                return frame.get("result", frame.get("error"))
        return None


@dataclass
class ExecRun:
    returncode: int
    stdout: str
    stderr: str


async def run_codex_exec(
    codex: str,
    *,
    model: FakeModel,
    exec_server_url: str | None,
    workdir: Path,
    codex_home: Path,
    sandbox: str,
    prompt: str = "run the scripted steps",
    timeout: float = 180.0,
    extra_env: dict[str, str] | None = None,
) -> ExecRun:
    """``codex exec`` (0.171) with ``model`` as its provider and its tools executed by
    the exec-server at ``exec_server_url`` (or wherever ``extra_env`` says: the
    ``CODEX_EXEC_SERVER_NOISE_*`` variables reach one through a registry)."""
    codex_home.mkdir(parents=True, exist_ok=True)
    provider = f'{{name="fake",base_url="{model.url}",wire_api="responses"}}'
    argv = [
        codex,
        "exec",
        "--skip-git-repo-check",
        "-c",
        "model_provider=fake",
        "-c",
        f"model_providers.fake={provider}",
        "-c",
        "model=gpt-5.1-codex",
        "--sandbox",
        sandbox,
        prompt,
    ]
    env = {**os.environ, "CODEX_HOME": str(codex_home), "NO_COLOR": "1", **(extra_env or {})}
    if exec_server_url is not None:
        env["CODEX_EXEC_SERVER_URL"] = exec_server_url
    proc = await asyncio.create_subprocess_exec(
        *argv,
        cwd=workdir,
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
    )
    try:
        stdout, stderr = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, 9)
        stdout, stderr = await proc.communicate()
    return ExecRun(
        proc.returncode or 0, stdout.decode(errors="replace"), stderr.decode(errors="replace")
    )
