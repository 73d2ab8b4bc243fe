"""Differential-testing support: server launchers, a raw JSON-RPC client, normalization.

Everything here is deliberately independent of ``exec_server``: the point of the interop
suite is to compare what is on the wire, so the client below speaks raw JSON text frames
and hands back the decoded messages untouched (plus the raw text).

Vocabulary:

* a **target** is a way to start a server (the real Codex binary or ours);
* a **script** is an ``async def script(ctx: ScriptContext) -> None`` that talks to one
  running target through :class:`RawClient` connections;
* every request/response pair a client makes is appended to the context's
  **transcript**; scripts add derived facts (e.g. per-process event summaries) with
  :meth:`ScriptContext.note`;
* transcripts from two targets are **normalized** (UUIDs, timestamps, temp paths, peer
  addresses, our extension-only fields) and must then be equal.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import difflib
import json
import os
import re
import shlex
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
OURS_CMD_ENV = "EXEC_SERVER_INTEROP_CMD"
MODE_ENV = "INTEROP_MODE"
STRICT_ENV = "INTEROP_STRICT"
RECORD_ENV = "INTEROP_RECORD_DIR"

#: How long a server may take to print its URL line.
SERVER_START_TIMEOUT_S = 20.0
#: Grace between SIGTERM and SIGKILL when stopping a server.
SERVER_STOP_GRACE_S = 5.0
#: Default wait for one response.
RESPONSE_TIMEOUT_S = 10.0
#: Largest frame the raw client accepts (codex sends whole files in one frame).
CLIENT_MAX_MSG_BYTES = 256 * 1024 * 1024

JSON = Any

# --------------------------------------------------------------------------------------
# locating and starting servers
# --------------------------------------------------------------------------------------


def ours_command() -> list[str]:
    """How to start our server (override with ``$EXEC_SERVER_INTEROP_CMD``)."""
    override = os.environ.get(OURS_CMD_ENV)
    if override:
        return shlex.split(override)
    return [sys.executable, "-m", "exec_server", "serve", "--listen", "ws://127.0.0.1:0"]


@dataclass(frozen=True)
class Target:
    """A way to start one exec-server (``env``: extra environment variables)."""

    name: str
    argv: tuple[str, ...]
    env: tuple[tuple[str, str], ...] = ()

    @staticmethod
    def codex(binary: Path, env: dict[str, str] | None = None) -> Target:
        argv = (str(binary), "exec-server", "--listen", "ws://127.0.0.1:0")
        return Target("codex", argv, tuple((env or {}).items()))

    @staticmethod
    def ours(env: dict[str, str] | None = None) -> Target:
        return Target("ours", tuple(ours_command()), tuple((env or {}).items()))


class ServerStartError(RuntimeError):
    pass


class RunningServer:
    """A started server process; ``url`` is the websocket URL it printed."""

    def __init__(self, target: Target, proc: asyncio.subprocess.Process, url: str, log: Path):
        self.target = target
        self.proc = proc
        self.url = url
        self.log_path = log

    @property
    def http_base(self) -> str:
        return "http://" + self.url.removeprefix("ws://").rstrip("/")

    def stderr_tail(self, limit: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-limit:]
        except OSError:
            return ""

    async def stop(self) -> None:
        proc = self.proc
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), SERVER_STOP_GRACE_S)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                await proc.wait()
        # Children left behind in the server's process group (it was started with
        # start_new_session) must not outlive the test.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(OSError):
            self.log_path.unlink()


async def start_server(target: Target, *, env: dict[str, str] | None = None) -> RunningServer:
    """Start ``target`` and wait for its one-line ``ws://`` URL on stdout."""
    fd, log_name = tempfile.mkstemp(prefix=f"interop-{target.name}-", suffix=".log")
    log = Path(log_name)
    if target.env:
        env = {**(env or os.environ), **dict(target.env)}
    with os.fdopen(fd, "wb") as log_file:
        proc = await asyncio.create_subprocess_exec(
            *target.argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=log_file,
            env=env,
            start_new_session=True,
        )
    server = RunningServer(target, proc, "", log)
    assert proc.stdout is not None
    try:
        line = await asyncio.wait_for(proc.stdout.readline(), SERVER_START_TIMEOUT_S)
    except TimeoutError:
        await server.stop()
        raise ServerStartError(
            f"{target.name}: no URL line within {SERVER_START_TIMEOUT_S}s"
        ) from None
    url = line.decode(errors="replace").strip()
    if not url.startswith("ws://"):
        tail = server.stderr_tail()
        await server.stop()
        raise ServerStartError(
            f"{target.name} ({shlex.join(target.argv)}) printed {url!r} instead of a ws:// URL"
            f"; stderr:\n{tail}"
        )
    server.url = url
    return server


# --------------------------------------------------------------------------------------
# raw JSON-RPC websocket client
# --------------------------------------------------------------------------------------

CLOSED = "<connection closed>"
TIMEOUT = "<no response>"


def b64(data: bytes | str) -> str:
    if isinstance(data, str):
        data = data.encode()
    return base64.b64encode(data).decode()


def unb64(text: str) -> bytes:
    return base64.b64decode(text)


@dataclass
class Exchange:
    """One request (or raw frame) and what came back for it."""

    sent: JSON
    received: JSON
    raw: str | None = None


class RawClient:
    """A raw JSON-RPC client over one websocket connection.

    Requests get ids 1, 2, 3... like the Rust client. Responses are matched by id; error
    replies with id -1 (parse errors) are matched to the raw frame that caused them.
    Notifications are collected in :attr:`notifications` in arrival order.
    """

    def __init__(
        self,
        ws: aiohttp.ClientWebSocketResponse,
        http: aiohttp.ClientSession,
        transcript: list[JSON] | None,
        name: str,
    ) -> None:
        self.ws = ws
        self._http = http
        self._transcript = transcript
        self.name = name
        self._next_id = 1
        self._responses: list[tuple[JSON, str]] = []
        self._arrived = asyncio.Condition()
        self.notifications: list[JSON] = []
        self.closed = False
        self.close_code: int | None = None
        self._reader = asyncio.create_task(self._read_loop())

    # -- plumbing ------------------------------------------------------------------

    async def _read_loop(self) -> None:
        try:
            async for msg in self.ws:
                if msg.type == aiohttp.WSMsgType.TEXT:
                    text = msg.data
                elif msg.type == aiohttp.WSMsgType.BINARY:
                    text = msg.data.decode(errors="replace")
                else:  # pragma: no cover - errors end the iteration
                    break
                try:
                    obj = json.loads(text)
                except ValueError:
                    obj = {"<unparseable>": text}
                async with self._arrived:
                    if isinstance(obj, dict) and "method" in obj and "id" not in obj:
                        self.notifications.append(obj)
                    else:
                        self._responses.append((obj, text))
                    self._arrived.notify_all()
        finally:
            self.closed = True
            self.close_code = self.ws.close_code
            async with self._arrived:
                self._arrived.notify_all()

    def _record(self, exchange: Exchange) -> None:
        if self._transcript is not None:
            self._transcript.append(
                {"conn": self.name, "send": exchange.sent, "recv": exchange.received}
            )

    async def _wait_for(
        self, predicate: Callable[[JSON], bool], timeout: float
    ) -> tuple[JSON, str] | None:
        """Pop the first response satisfying ``predicate`` (None on close/timeout)."""
        deadline = time.monotonic() + timeout
        async with self._arrived:
            while True:
                for i, (obj, raw) in enumerate(self._responses):
                    if predicate(obj):
                        del self._responses[i]
                        return obj, raw
                remaining = deadline - time.monotonic()
                if self.closed or remaining <= 0:
                    return None
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._arrived.wait(), remaining)

    def next_id(self) -> int:
        request_id = self._next_id
        self._next_id += 1
        return request_id

    # -- sending -----------------------------------------------------------------------

    async def send_obj(self, obj: JSON, *, binary: bool = False) -> None:
        text = json.dumps(obj, separators=(",", ":"))
        await self.send_text(text, binary=binary)

    async def send_text(self, text: str, *, binary: bool = False) -> None:
        if self.closed or self.ws.closed:
            return  # the caller records CLOSED when no answer comes
        if binary:
            await self.ws.send_bytes(text.encode())
        else:
            await self.ws.send_str(text)

    async def call(
        self,
        method: str,
        params: JSON = None,
        *,
        omit_params: bool = False,
        request_id: JSON = None,
        extra: dict[str, JSON] | None = None,
        binary: bool = False,
        timeout: float = RESPONSE_TIMEOUT_S,
        view: Callable[[JSON], JSON] | None = None,
        record: bool = True,
    ) -> JSON:
        """Send a request and return the whole response message (or CLOSED/TIMEOUT).

        ``view`` maps the response to what goes into the transcript, for responses that
        are only comparable in part (e.g. output split into different chunks).
        """
        msg = await self.send_request(
            method,
            params,
            omit_params=omit_params,
            request_id=request_id,
            extra=extra,
            binary=binary,
        )
        return await self.response_to(msg, timeout=timeout, view=view, record=record)

    async def send_request(
        self,
        method: str,
        params: JSON = None,
        *,
        omit_params: bool = False,
        request_id: JSON = None,
        extra: dict[str, JSON] | None = None,
        binary: bool = False,
    ) -> dict[str, JSON]:
        """Send a request without waiting; pass the result to :meth:`response_to`."""
        msg: dict[str, JSON] = {"id": self.next_id() if request_id is None else request_id}
        msg["method"] = method
        if not omit_params:
            msg["params"] = params
        if extra:
            msg.update(extra)
        await self.send_obj(msg, binary=binary)
        return msg

    async def response_to(
        self,
        msg: dict[str, JSON],
        *,
        timeout: float = RESPONSE_TIMEOUT_S,
        view: Callable[[JSON], JSON] | None = None,
        record: bool = True,
    ) -> JSON:
        request_id = msg["id"]
        got = await self._wait_for(
            lambda o: (
                isinstance(o, dict)
                and o.get("id") == request_id
                and type(o.get("id")) is type(request_id)
            ),
            timeout,
        )
        received: JSON = (CLOSED if self.closed else TIMEOUT) if got is None else got[0]
        if record:
            shown = received
            if view is not None and got is not None:
                # Views read `result`; error replies are recorded as they are.
                with contextlib.suppress(KeyError, TypeError, IndexError, ValueError):
                    shown = view(received)
            self._record(Exchange(msg, shown, None if got is None else got[1]))
        return received

    async def poll_response(self, msg: dict[str, JSON], *, timeout: float) -> JSON | None:
        """The response to ``msg`` if it arrives within ``timeout`` (not recorded)."""
        request_id = msg["id"]
        got = await self._wait_for(
            lambda o: isinstance(o, dict) and o.get("id") == request_id, timeout
        )
        return None if got is None else got[0]

    async def send_raw_expect(
        self, text: str, *, binary: bool = False, timeout: float = 3.0, record: bool = True
    ) -> JSON:
        """Send a raw frame and return the next non-notification message, if any."""
        await self.send_text(text, binary=binary)
        got = await self._wait_for(lambda o: True, timeout)
        received: JSON = (CLOSED if self.closed else TIMEOUT) if got is None else got[0]
        if record:
            self._record(Exchange({"<raw frame>": text}, received))
        return received

    async def notify(self, method: str, params: JSON = None, *, record: bool = True) -> None:
        msg = {"method": method, "params": params}
        await self.send_obj(msg)
        if record:
            self._record(Exchange(msg, "<notification: no reply expected>"))

    async def expect_closed(self, timeout: float = 3.0) -> bool:
        """Whether the server closes the connection within ``timeout``."""
        deadline = time.monotonic() + timeout
        async with self._arrived:
            while not self.closed:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._arrived.wait(), remaining)
        return self.closed

    async def expect_silence(self, timeout: float = 0.3) -> JSON:
        """What arrives (a response) within ``timeout``, or ``"<silence>"``/CLOSED."""
        got = await self._wait_for(lambda o: True, timeout)
        if got is not None:
            return got[0]
        return CLOSED if self.closed else "<silence>"

    async def close(self) -> None:
        if not self.ws.closed:
            await self.ws.close()
        with contextlib.suppress(asyncio.CancelledError, aiohttp.ClientError):
            await self._reader

    async def abort(self) -> None:
        """Drop the TCP connection without a close frame (like the real harness)."""
        transport = self.ws._response.connection.transport if self.ws._response.connection else None
        if transport is not None:
            transport.abort()
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError, aiohttp.ClientError, Exception):
            await self._reader

    # -- protocol helpers -------------------------------------------------------------------

    async def initialize(
        self, *, client_name: str = "interop", resume: str | None = None, record: bool = True
    ) -> JSON:
        return await self.call(
            "initialize", {"clientName": client_name, "resumeSessionId": resume}, record=record
        )

    async def handshake(self, *, record: bool = False) -> str:
        """initialize + initialized; returns the session id."""
        resp = await self.initialize(record=record)
        await self.notify("initialized", {}, record=record)
        return str(resp["result"]["sessionId"])

    def events(self, process_id: str) -> list[JSON]:
        """The process/* notifications for ``process_id``, sorted by seq."""
        evs = [
            n["params"] | {"method": n["method"]}
            for n in self.notifications
            if n.get("method", "").startswith("process/")
            and isinstance(n.get("params"), dict)
            and n["params"].get("processId") == process_id
        ]
        return sorted(evs, key=lambda e: e.get("seq", 0))

    async def wait_closed(self, process_id: str, timeout: float = 10.0) -> bool:
        """Wait for ``process/closed`` of ``process_id``."""
        deadline = time.monotonic() + timeout
        async with self._arrived:
            while True:
                if any(e["method"] == "process/closed" for e in self.events(process_id)):
                    return True
                remaining = deadline - time.monotonic()
                if self.closed or remaining <= 0:
                    return False
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._arrived.wait(), remaining)

    async def wait_output(self, process_id: str, needle: bytes, timeout: float = 10.0) -> bool:
        """Wait until the concatenated output of ``process_id`` contains ``needle``."""
        deadline = time.monotonic() + timeout
        async with self._arrived:
            while True:
                out = b"".join(
                    unb64(e["chunk"])
                    for e in self.events(process_id)
                    if e["method"] == "process/output"
                )
                if needle in out:
                    return True
                remaining = deadline - time.monotonic()
                if self.closed or remaining <= 0:
                    return False
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._arrived.wait(), remaining)

    async def http_get(self, path: str) -> tuple[int, str]:
        url = self.ws._response.url
        async with self._http.get(f"http://{url.host}:{url.port}{path}") as resp:
            return resp.status, await resp.text()


# --------------------------------------------------------------------------------------
# summaries of process output (chunk boundaries may legitimately differ)
# --------------------------------------------------------------------------------------


def result_of(resp: JSON) -> dict[str, JSON]:
    """The ``result`` object of a response, or ``{}`` for errors/timeouts."""
    result = resp.get("result") if isinstance(resp, dict) else None
    return result if isinstance(result, dict) else {}


def _text(data: bytes) -> str:
    return data.decode("utf-8", errors="backslashreplace")


def summarize_events(events: list[JSON], *, with_seq: bool = False) -> JSON:
    """Per-stream concatenated output plus the terminal events.

    With ``with_seq`` the exact event sequence ``[seq, kind]`` is kept (only for scripts
    whose chunking and exit timing are deterministic). Otherwise only what must hold
    whatever the timing is kept: 0.133 may give ``exited`` a lower seq than output read
    just before the exit (``/bin/echo`` gets exited=1, output=2 in some runs).
    """
    streams: dict[str, bytes] = {}
    summary: dict[str, JSON] = {}
    order: list[str] = []
    seqs: list[JSON] = []
    for e in events:
        method = e["method"]
        if method == "process/output":
            streams[e["stream"]] = streams.get(e["stream"], b"") + unb64(e["chunk"])
            kind = f"output:{e['stream']}"
        elif method == "process/exited":
            summary["exitCode"] = e["exitCode"]
            kind = "exited"
        elif method == "process/closed":
            summary["closed"] = True
            kind = "closed"
        else:
            kind = method
        order.append(kind)
        seqs.append(e.get("seq"))
    summary["output"] = {k: _text(v) for k, v in sorted(streams.items())}
    if with_seq:
        summary["events"] = [[seq, kind] for seq, kind in zip(seqs, order, strict=True)]
    else:
        summary["kinds"] = sorted(set(order))
        summary["closed is last"] = bool(order) and order[-1] == "closed"
        summary["seqs are 1..n"] = seqs == list(range(1, len(seqs) + 1))
    return summary


def read_view(resp: JSON) -> JSON:
    """A process/read response with chunks merged per stream (seqs dropped)."""
    if not isinstance(resp, dict) or not isinstance(resp.get("result"), dict):
        return resp
    result = dict(resp["result"])
    streams: dict[str, bytes] = {}
    for chunk in result.pop("chunks", []):
        streams[chunk["stream"]] = streams.get(chunk["stream"], b"") + unb64(chunk["chunk"])
    result["output"] = {k: _text(v) for k, v in sorted(streams.items())}
    result.pop("nextSeq", None)
    return {**resp, "result": result}


def read_view_exact(resp: JSON) -> JSON:
    """A process/read response with each chunk decoded (seqs kept)."""
    if not isinstance(resp, dict) or not isinstance(resp.get("result"), dict):
        return resp
    result = dict(resp["result"])
    result["chunks"] = [{**c, "chunk": _text(unb64(c["chunk"]))} for c in result.get("chunks", [])]
    return {**resp, "result": result}


def read_view_joined(resp: JSON) -> JSON:
    """A process/read response reduced to what does not depend on how the output was cut
    into chunks: each stream's text joined, seqs increasing, and the rest of the result
    (nextSeq, which counts chunks, is dropped with the seqs)."""
    if not isinstance(resp, dict) or not isinstance(resp.get("result"), dict):
        return resp
    result = dict(resp["result"])
    chunks = result.pop("chunks", [])
    result.pop("nextSeq", None)
    joined: dict[str, str] = {}
    for c in chunks:
        joined[c["stream"]] = joined.get(c["stream"], "") + _text(unb64(c["chunk"]))
    seqs = [c["seq"] for c in chunks]
    result["output"] = joined
    result["seqsIncrease"] = seqs == sorted(set(seqs))
    return {**resp, "result": result}


def read_file_view(resp: JSON) -> JSON:
    """An fs/readFile response with ``dataBase64`` decoded for readability."""
    if isinstance(resp, dict) and isinstance(resp.get("result"), dict):
        data = resp["result"].get("dataBase64")
        if isinstance(data, str):
            return {**resp, "result": {"data": _text(unb64(data))}}
    return resp


# --------------------------------------------------------------------------------------
# normalization
# --------------------------------------------------------------------------------------

UUID_RE = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
PEER_RE = re.compile(r"127\.0\.0\.1:\d+")
TIMESTAMP_KEYS = frozenset({"createdAtMs", "modifiedAtMs"})
#: The two Codex releases the suite compares with.
ERA_0133 = "0.133"
ERA_0171 = "0.171"
#: Fields only our server emits to clients of that era; dropped before comparing (keyed
#: by a sibling field that identifies the object they live in, or None for "anywhere").
EXTENSION_FIELDS_BY_ERA: dict[str, dict[str, str | None]] = {
    ERA_0133: {
        "size": "isDirectory",  # fs/getMetadata (Codex added it in later versions)
        "firstRetainedSeq": None,  # process/read gap marker
        "environmentInfo": "sessionId",  # initialize: 0.171's field, ignored by 0.133
    },
    ERA_0171: {"firstRetainedSeq": None},
}
EXTENSION_FIELDS = EXTENSION_FIELDS_BY_ERA[ERA_0133]


#: "failed to parse ... from exec-server websocket 127.0.0.1:PORT: <decoder detail>"; the
#: authored prefix is compared, the peer address and the decoder detail are not.
PARSE_ERROR_RE = re.compile(
    r"^(failed to parse .*? from exec-server (?:websocket|stdio))"
    r"(?: \d+\.\d+\.\d+\.\d+:\d+| <peer>)?: .*$",
    re.DOTALL,
)
#: Texts produced by JSON/base64 decoders (serde and the base64 crate in 0.133; msgspec
#: in ours). Server-authored -32602 texts ("argv must not be empty", "http/request only
#: supports ...") do not match and are always compared.
DECODER_MESSAGE_RE = re.compile(
    r"^(invalid type: |invalid value: |invalid length |unknown variant |missing field |"
    r"unknown field |duplicate field |Invalid symbol |Invalid padding|Invalid last symbol |"
    r"Invalid byte |Encoded text cannot have a 6-bit remainder|"
    r"AbsolutePathBuf deserialized without a base path|"
    r"Expected `|Invalid enum value |Object missing required field |Invalid base64 |"
    r"Input data was truncated|JSON is malformed)"
)
BASE64_ERROR_PREFIX = "fs/writeFile requires valid base64 dataBase64: "


def strict_messages() -> bool:
    """``$INTEROP_STRICT=1``: compare decoder error texts and close codes exactly too."""
    return os.environ.get(STRICT_ENV, "") not in ("", "0")


class Normalizer:
    """Maps run-specific values to stable placeholders.

    UUIDs become ``<uuid1>``, ``<uuid2>``... in order of first appearance, so "the
    resumed session has the same id" survives normalization.

    Unless ``strict``, texts produced by a JSON decoder are masked: serde's wording
    (``invalid type: integer `5`, expected a string``) cannot reasonably be reproduced
    by a Python decoder, so only the error code is compared for -32602 and for the id -1
    parse errors; notes marked ``strict_only`` (e.g. websocket close codes) are dropped.
    """

    def __init__(
        self, tmp_dirs: list[str], *, strict: bool | None = None, era: str = ERA_0133
    ) -> None:
        self._tmp_dirs = sorted(
            {d for t in tmp_dirs for d in (t, os.path.realpath(t))}, key=len, reverse=True
        )
        self._uuids: dict[str, str] = {}
        self.strict = strict_messages() if strict is None else strict
        self._extension_fields = EXTENSION_FIELDS_BY_ERA[era]

    def _uuid(self, match: re.Match[str]) -> str:
        key = match.group(0).lower()
        if key not in self._uuids:
            self._uuids[key] = f"<uuid{len(self._uuids) + 1}>"
        return self._uuids[key]

    def string(self, s: str) -> str:
        for tmp in self._tmp_dirs:
            s = s.replace(tmp, "<tmp>")
        s = UUID_RE.sub(self._uuid, s)
        return PEER_RE.sub("<peer>", s)

    def _error(self, err: dict[str, JSON]) -> dict[str, JSON]:
        message = err.get("message")
        if self.strict or not isinstance(message, str):
            return err
        code = err.get("code")
        if code == -32602 and DECODER_MESSAGE_RE.match(message):
            return {**err, "message": "<decoder message>"}
        parse_error = PARSE_ERROR_RE.match(message) if code == -32600 else None
        if parse_error:
            return {**err, "message": parse_error.group(1) + ": <decoder message>"}
        if code == -32600 and message.startswith(BASE64_ERROR_PREFIX):
            return {**err, "message": BASE64_ERROR_PREFIX + "<decoder message>"}
        return err

    def transcript(self, entries: list[JSON]) -> list[JSON]:
        kept = [e for e in entries if self.strict or not e.get("strict_only")]
        return [self.value({k: v for k, v in e.items() if k != "strict_only"}) for e in kept]

    def value(self, v: JSON) -> JSON:
        if isinstance(v, str):
            return self.string(v)
        if isinstance(v, list):
            return [self.value(x) for x in v]
        if isinstance(v, dict):
            out: dict[str, JSON] = {}
            for k, x in v.items():
                owner = self._extension_fields.get(k, "")
                if owner is None or (owner and owner in v):
                    continue
                if k in TIMESTAMP_KEYS and isinstance(x, int) and not isinstance(x, bool):
                    out[k] = "<ms>"
                    continue
                if k == "error" and isinstance(x, dict):
                    x = self._error(x)
                out[k] = self.value(x)
            return out
        return v


# --------------------------------------------------------------------------------------
# running scripts
# --------------------------------------------------------------------------------------


@dataclass
class ScriptContext:
    """What a script gets: a fresh server, a temp dir and a transcript."""

    server: RunningServer
    tmp: Path
    http: aiohttp.ClientSession
    transcript: list[JSON] = field(default_factory=list)
    clients: list[RawClient] = field(default_factory=list)

    @property
    def target(self) -> str:
        return self.server.target.name

    async def connect(self, *, name: str | None = None, record: bool = True) -> RawClient:
        ws = await self.http.ws_connect(
            self.server.url, compress=0, max_msg_size=CLIENT_MAX_MSG_BYTES, autoping=True
        )
        _set_nodelay(ws)
        client = RawClient(
            ws, self.http, self.transcript if record else None, name or f"c{len(self.clients) + 1}"
        )
        self.clients.append(client)
        return client

    async def connect_ready(self, *, name: str | None = None) -> RawClient:
        """A connection that has completed initialize/initialized (not recorded)."""
        client = await self.connect(name=name)
        await client.handshake(record=False)
        return client

    def note(self, label: str, value: JSON, *, strict_only: bool = False) -> None:
        """Add a derived fact; ``strict_only`` facts are compared only in strict mode."""
        entry: dict[str, JSON] = {"note": label, "value": value}
        if strict_only:
            entry["strict_only"] = True
        self.transcript.append(entry)

    def path(self, *parts: str) -> str:
        return str(self.tmp.joinpath(*parts))

    # Direct looks at the disk, to check what a request really did (tiny, synchronous).

    def exists(self, *parts: str) -> bool:
        return os.path.exists(self.path(*parts))

    def lexists(self, *parts: str) -> bool:
        return os.path.lexists(self.path(*parts))

    def islink(self, *parts: str) -> bool:
        return os.path.islink(self.path(*parts))

    def isdir(self, *parts: str) -> bool:
        return os.path.isdir(self.path(*parts))

    def readlink(self, *parts: str) -> str | None:
        return os.readlink(self.path(*parts)) if self.islink(*parts) else None

    def read_bytes(self, *parts: str) -> bytes | None:
        try:
            return Path(self.path(*parts)).read_bytes()
        except OSError:
            return None

    def read_text(self, *parts: str) -> str | None:
        data = self.read_bytes(*parts)
        return None if data is None else data.decode(errors="replace")

    def write_text(self, text: str, *parts: str) -> None:
        Path(self.path(*parts)).write_text(text)

    def mode(self, *parts: str) -> str:
        return oct(os.stat(self.path(*parts)).st_mode & 0o777)

    def mtime_ms(self, *parts: str) -> int:
        return int(os.stat(self.path(*parts)).st_mtime * 1000)


def _set_nodelay(ws: aiohttp.ClientWebSocketResponse) -> None:
    conn = ws._response.connection
    sock = conn.transport.get_extra_info("socket") if conn and conn.transport else None
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


Script = Callable[[ScriptContext], Awaitable[None]]


@dataclass
class ScriptRun:
    target: str
    transcript: list[JSON]
    tmp: str
    stderr: str

    def normalized(self, *, strict: bool | None = None, era: str = ERA_0133) -> list[JSON]:
        return Normalizer([self.tmp], strict=strict, era=era).transcript(self.transcript)


async def run_script(target: Target, script: Script, *, timeout: float = 60.0) -> ScriptRun:
    """Start ``target``, run ``script`` against it, stop it and return the transcript."""
    tmp = Path(tempfile.mkdtemp(prefix=f"interop-{target.name}-"))
    server = await start_server(target)
    ctx: ScriptContext | None = None
    try:
        async with aiohttp.ClientSession() as http:
            ctx = ScriptContext(server=server, tmp=tmp, http=http)
            try:
                await asyncio.wait_for(script(ctx), timeout)
            finally:
                for client in ctx.clients:
                    with contextlib.suppress(Exception):
                        await client.close()
    finally:
        stderr = server.stderr_tail()
        await server.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    return ScriptRun(target.name, ctx.transcript if ctx else [], str(tmp), stderr)


def diff_transcripts(a: ScriptRun, b: ScriptRun, era: str = ERA_0133) -> str | None:
    """A readable description of the differences, or None when equal."""
    problem = diff_transcripts_plain(
        a.target, a.normalized(era=era), b.target, b.normalized(era=era)
    )
    if problem and b.stderr.strip():
        problem += f"\n  {b.target} stderr tail:\n{b.stderr[-2000:]}"
    return problem


def diff_transcripts_plain(name_a: str, na: list[JSON], name_b: str, nb: list[JSON]) -> str | None:
    """Aligned differences between two normalized transcripts, or None when equal."""
    if na == nb:
        return None
    ja = [json.dumps(e, ensure_ascii=False) for e in na]
    jb = [json.dumps(e, ensure_ascii=False) for e in nb]
    lines = [f"transcripts differ ({name_a} vs {name_b}):"]
    matcher = difflib.SequenceMatcher(a=ja, b=jb, autojunk=False)
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        if tag == "equal":
            continue
        lines.append(f"  @ {name_a} steps {i1}..{i2 - 1}, {name_b} steps {j1}..{j2 - 1}:")
        lines.extend(f"    {name_a:>6}: {line}" for line in ja[i1:i2])
        lines.extend(f"    {name_b:>6}: {line}" for line in jb[j1:j2])
    return "\n".join(lines)


def record_transcript(test_name: str, run: ScriptRun, era: str = ERA_0133) -> None:
    """Append a normalized codex transcript to ``$INTEROP_RECORD_DIR`` (for the README)."""
    out_dir = os.environ.get(RECORD_ENV)
    if not out_dir:
        return
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", test_name)
    path = Path(out_dir) / f"{safe}.{run.target}.json"
    path.write_text(json.dumps(run.normalized(strict=True, era=era), indent=1) + "\n")


def pids_in_dir(directory: str) -> list[int]:
    """Live (non-zombie) pids whose working directory is ``directory``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cwd = os.readlink(entry / "cwd")
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        state = stat.rsplit(")", 1)[-1].split()[0] if ")" in stat else "?"
        if cwd == directory and state != "Z":
            found.append(int(entry.name))
    return found


def pids_with_marker(marker: str) -> list[int]:
    """Live (non-zombie) pids whose command line contains ``marker``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        state = stat.rsplit(")", 1)[-1].split()[0] if ")" in stat else "?"
        if marker.encode() in cmdline and state != "Z":
            found.append(int(entry.name))
    return found


# --------------------------------------------------------------------------------------
# differential runs
# --------------------------------------------------------------------------------------

MODES = ("diff", "codex")


def interop_mode() -> str:
    mode = os.environ.get(MODE_ENV, "diff")
    if mode not in MODES:
        raise ValueError(f"{MODE_ENV}={mode!r}; expected one of {MODES}")
    return mode


@dataclass
class Differ:
    """Runs scripts against the reference (Codex) and the candidate target."""

    reference: Target
    candidate: Target
    test_name: str
    #: Which Codex release the reference is (decides which fields are our extensions).
    era: str = ERA_0133

    @property
    def candidate_is_ours(self) -> bool:
        return self.candidate.name == "ours"

    async def check(self, script: Script, *, timeout: float = 60.0) -> tuple[ScriptRun, ScriptRun]:
        """Run ``script`` on both targets and assert equal normalized transcripts."""
        ref = await run_script(self.reference, script, timeout=timeout)
        record_transcript(self.test_name, ref, self.era)
        cand = await run_script(self.candidate, script, timeout=timeout)
        problem = diff_transcripts(ref, cand, self.era)
        if problem:
            pytest.fail(problem, pytrace=False)
        return ref, cand

    async def each(self, script: Script, *, timeout: float = 60.0) -> dict[str, ScriptRun]:
        """Run ``script`` on Codex and (in diff mode) on ours; no comparison.

        For behaviour where our server intentionally differs: the test asserts each
        side's answer explicitly. Keys are ``"codex"`` and, in diff mode, ``"ours"``.
        """
        runs = {"codex": await run_script(self.reference, script, timeout=timeout)}
        record_transcript(self.test_name, runs["codex"], self.era)
        if self.candidate_is_ours:
            runs["ours"] = await run_script(self.candidate, script, timeout=timeout)
        return runs
