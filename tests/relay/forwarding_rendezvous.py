"""Test support: a registry plus a forwarding rendezvous on loopback that can misbehave.

:class:`ForwardingRendezvous` answers the environment's registration with its own
websocket URL, accepts one environment socket (a newer one replaces it) and any number
of harness sockets (``?role=harness``), and forwards binary frames between them by
``stream_id``, the only field it reads (hand-parsed, like a real rendezvous would).
It also speaks Codex's Noise registry contract with our
:class:`~exec_server.rendezvous.noise_registry.NoiseRegistry` (a registration with a
key, ``/connect`` with a harness key answering the bundle, ``/validate``), so the
encrypted relay runs through the same faults.

Faults, each direction with its own seeded ``random.Random`` (:class:`FaultPlan`):

* loss: the frame is dropped;
* duplication: the frame is sent twice;
* reordering: the frame is held back and released after the next 1..``max_hold_frames``
  frames of that direction (or after ``max_hold_s`` if traffic stops).

It can also force-disconnect sockets (:meth:`ForwardingRendezvous.kick_harnesses`,
:meth:`ForwardingRendezvous.kick_environment`: the TCP connection is aborted without a
close frame, like a dropped connection) and inject raw messages into the environment
socket (:meth:`ForwardingRendezvous.inject_to_environment`).

The seeds make the fault decisions a fixed sequence per direction; which frame meets
which decision still depends on task scheduling, so runs are reproducible in kind,
not bit for bit.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSMsgType, web
from frame_peek import peek_stream_id as frame_stream_id

from exec_server.environment.remote import (
    RemoteEnvironment,
    RemoteEnvironmentConfig,
    RemoteTransport,
)
from exec_server.environment.server import ExecServer
from exec_server.rendezvous.noise_registry import (
    SECURITY_PROFILE,
    AuthorizationRefused,
    HarnessKeyAuthorizer,
    NoiseRegistry,
    RegistryRefusal,
)

ENVIRONMENT_ID = "env-faults"
REGISTRY_TOKEN = "registry-token"


@dataclass(frozen=True)
class FaultPlan:
    """Per-frame fault probabilities of one direction (exclusive, checked in this order)."""

    loss: float = 0.0
    duplicate: float = 0.0
    reorder: float = 0.0
    max_hold_frames: int = 4
    max_hold_s: float = 0.05

    @property
    def faulty(self) -> bool:
        return self.loss + self.duplicate + self.reorder > 0


LOSSLESS = FaultPlan()


@dataclass
class _Held:
    data: bytes
    stream_id: str | None
    countdown: int
    release_at: float


class FaultyLink:
    """One direction of the rendezvous: applies a :class:`FaultPlan` before delivery."""

    def __init__(self, name: str, plan: FaultPlan, seed: int, deliver: Any) -> None:
        self.name = name
        self.plan = plan
        self._rng = random.Random(seed)
        self._deliver = deliver  # async (stream_id, data) -> None
        self._held: list[_Held] = []
        self.stats: Counter[str] = Counter()

    async def forward(self, stream_id: str | None, data: bytes) -> None:
        self.stats["frames"] += 1
        plan = self.plan
        if not plan.faulty:
            await self._deliver(stream_id, data)
            return
        roll = self._rng.random()
        if roll < plan.loss:
            self.stats["lost"] += 1
        elif roll < plan.loss + plan.duplicate:
            self.stats["duplicated"] += 1
            await self._deliver(stream_id, data)
            await self._deliver(stream_id, data)
        elif roll < plan.loss + plan.duplicate + plan.reorder:
            self.stats["reordered"] += 1
            loop = asyncio.get_running_loop()
            self._held.append(
                _Held(
                    data,
                    stream_id,
                    self._rng.randint(1, plan.max_hold_frames),
                    loop.time() + plan.max_hold_s,
                )
            )
            return
        else:
            await self._deliver(stream_id, data)
        await self._release(countdown=True)

    async def _release(self, *, countdown: bool) -> None:
        if not self._held:
            return
        now = asyncio.get_running_loop().time()
        due: list[_Held] = []
        keep: list[_Held] = []
        for held in self._held:
            if countdown:
                held.countdown -= 1
            (due if held.countdown <= 0 or now >= held.release_at else keep).append(held)
        self._held = keep
        for held in due:
            await self._deliver(held.stream_id, held.data)

    async def flush_expired(self) -> None:
        await self._release(countdown=False)


@dataclass
class ForwardingRendezvous:
    """See the module docstring. Use :meth:`start`/:meth:`close` (or ``async with``)."""

    to_environment: FaultPlan = LOSSLESS
    to_harness: FaultPlan = LOSSLESS
    seed: int = 0
    environment_id: str = ENVIRONMENT_ID
    registrations: int = 0
    environment_sockets: int = 0
    harness_sockets: int = 0
    unroutable: Counter[str] = field(default_factory=Counter)
    base_url: str = ""
    harness_url: str = ""
    _env_ws: web.WebSocketResponse | None = None
    _env_ready: asyncio.Event = field(default_factory=asyncio.Event)
    _harnesses: set[web.WebSocketResponse] = field(default_factory=set)
    _routes: dict[str, web.WebSocketResponse] = field(default_factory=dict)
    _runner: web.AppRunner | None = None
    _flusher: asyncio.Task[None] | None = None
    _stopping: asyncio.Event = field(default_factory=asyncio.Event)
    noise: NoiseRegistry = field(
        default_factory=lambda: NoiseRegistry(HarnessKeyAuthorizer(b"forwarding-rendezvous-secret"))
    )

    def __post_init__(self) -> None:
        self.up = FaultyLink("to_environment", self.to_environment, self.seed, self._to_env)
        self.down = FaultyLink("to_harness", self.to_harness, self.seed + 1, self._to_harness)

    async def __aenter__(self) -> ForwardingRendezvous:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post(f"/cloud/environment/{self.environment_id}/register", self._register)
        app.router.add_post(f"/cloud/environment/{self.environment_id}/connect", self._connect)
        app.router.add_post(f"/cloud/environment/{self.environment_id}/validate", self._validate)
        app.router.add_get("/relay/environment", self._environment)
        app.router.add_get("/relay/harness", self._harness)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = int(self._runner.addresses[0][1])
        self.base_url = f"http://127.0.0.1:{port}"
        self.harness_url = f"ws://127.0.0.1:{port}/relay/harness?role=harness&sig=test"
        self._flusher = asyncio.ensure_future(self._flush_loop())

    async def close(self) -> None:
        self._stopping.set()
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
        for ws in [*self._harnesses, *([self._env_ws] if self._env_ws else [])]:
            _abort(ws)
        if self._runner is not None:
            await self._runner.cleanup()

    @property
    def link_stats(self) -> dict[str, Counter[str]]:
        return {self.up.name: self.up.stats, self.down.name: self.down.stats}

    async def wait_environment(self, timeout_s: float = 10.0) -> None:
        await asyncio.wait_for(self._env_ready.wait(), timeout_s)

    # --- faults on demand --------------------------------------------------------

    def kick_harnesses(self) -> int:
        """Abort every harness socket (no close frame); returns how many."""
        sockets = list(self._harnesses)
        for ws in sockets:
            _abort(ws)
        return len(sockets)

    def kick_environment(self) -> bool:
        """Abort the environment socket (no close frame)."""
        ws = self._env_ws
        if ws is None:
            return False
        self._env_ready.clear()
        _abort(ws)
        return True

    async def inject_to_environment(self, message: bytes | str) -> None:
        """Write one raw websocket message (binary for bytes, text for str)."""
        ws = self._env_ws
        assert ws is not None, "no environment socket"
        if isinstance(message, str):
            await ws.send_str(message)
        else:
            await ws.send_bytes(message)

    # --- delivery ------------------------------------------------------------------

    async def _to_env(self, stream_id: str | None, data: bytes) -> None:
        ws = self._env_ws
        if ws is None or ws.closed:
            self.unroutable["no_environment"] += 1
            return
        with contextlib.suppress(ConnectionError, RuntimeError):
            await ws.send_bytes(data)

    async def _to_harness(self, stream_id: str | None, data: bytes) -> None:
        ws = self._routes.get(stream_id) if stream_id is not None else None
        if ws is None or ws.closed:
            self.unroutable["no_harness"] += 1
            return
        with contextlib.suppress(ConnectionError, RuntimeError):
            await ws.send_bytes(data)

    async def _flush_loop(self) -> None:
        while True:
            await asyncio.sleep(0.01)
            await self.up.flush_expired()
            await self.down.flush_expired()

    # --- endpoints -----------------------------------------------------------------

    async def _register(self, request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != f"Bearer {REGISTRY_TOKEN}":
            return web.json_response({"error": {"message": "bad token"}}, status=401)
        self.registrations += 1
        port = request.url.port
        answer = {
            "environment_id": self.environment_id,
            "url": f"ws://127.0.0.1:{port}/relay/environment?role=environment&sig=test",
        }
        body = await request.json() if request.can_read_body else {}
        if body:
            registration = self.noise.register(self.environment_id, body)
            answer["security_profile"] = SECURITY_PROFILE
            answer["executor_registration_id"] = registration.registration_id
        return web.json_response(answer)

    async def _connect(self, request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != f"Bearer {REGISTRY_TOKEN}":
            return web.json_response({"error": {"message": "bad token"}}, status=401)
        body = await request.json() if request.can_read_body else {}
        if "harness_public_key" not in body:
            return web.json_response(
                {"environment_id": self.environment_id, "url": self.harness_url}
            )
        try:
            registration, authorization = self.noise.connect(self.environment_id, body, time.time())
        except RegistryRefusal as exc:
            error = {"code": exc.code, "message": exc.message}
            return web.json_response({"error": error}, status=exc.status)
        return web.json_response(
            {
                "environment_id": self.environment_id,
                "url": self.harness_url,
                "security_profile": SECURITY_PROFILE,
                "executor_registration_id": registration.registration_id,
                "executor_public_key": registration.executor_key.to_json_obj(),
                "harness_key_authorization": authorization,
            }
        )

    async def _validate(self, request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != f"Bearer {REGISTRY_TOKEN}":
            return web.json_response({"error": {"message": "bad token"}}, status=401)
        stream_id = request.headers.get("x-codex-noise-stream-id", "")
        try:
            self.noise.validate(self.environment_id, await request.json(), stream_id, time.time())
        except AuthorizationRefused as exc:
            return web.json_response({"valid": False, "reason": exc.reason.value})
        return web.json_response({"valid": True})

    async def _environment(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(compress=False, max_msg_size=0, autoping=True)
        await ws.prepare(request)
        previous, self._env_ws = self._env_ws, ws
        if previous is not None:
            _abort(previous)
        self.environment_sockets += 1
        self._env_ready.set()
        try:
            async for msg in ws:
                if msg.type is WSMsgType.BINARY:
                    data: bytes = msg.data
                    await self.down.forward(frame_stream_id(data), data)
        finally:
            if self._env_ws is ws:
                self._env_ws = None
                self._env_ready.clear()
        return ws

    async def _harness(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(compress=False, max_msg_size=0, autoping=True)
        await ws.prepare(request)
        self._harnesses.add(ws)
        self.harness_sockets += 1
        owned: set[str] = set()
        try:
            async for msg in ws:
                if msg.type is WSMsgType.BINARY:
                    data: bytes = msg.data
                    stream_id = frame_stream_id(data)
                    if stream_id is not None and stream_id not in owned:
                        # A reconnecting harness claims its stream from the new socket.
                        owned.add(stream_id)
                        self._routes[stream_id] = ws
                    await self.up.forward(stream_id, data)
        finally:
            self._harnesses.discard(ws)
            for stream_id in owned:
                if self._routes.get(stream_id) is ws:
                    del self._routes[stream_id]
        return ws


def _abort(ws: web.WebSocketResponse) -> None:
    """Drop the TCP connection under ``ws`` without a websocket close handshake."""
    req = ws._req
    transport = req.transport if req is not None else None
    if transport is not None:
        transport.abort()


@contextlib.asynccontextmanager
async def serve_remote_environment(
    rendezvous: ForwardingRendezvous,
    server: ExecServer | None = None,
    *,
    transport: RemoteTransport = "legacy",
) -> AsyncIterator[RemoteEnvironment]:
    """Our environment, in process, registered with ``rendezvous`` and connected to it
    (the cleartext relay unless ``transport="noise"``: most tests here write cleartext
    frames of their own).

    Reconnect backoff is shortened (50 ms doubling to 200 ms) so a forced disconnect
    costs the test little time. The server is closed on exit.
    """
    server = server or ExecServer()
    remote = RemoteEnvironment(
        server,
        RemoteEnvironmentConfig(
            base_url=rendezvous.base_url,
            environment_id=rendezvous.environment_id,
            token=REGISTRY_TOKEN,
            initial_backoff_s=0.05,
            max_backoff_s=0.2,
            transport=transport,
        ),
    )
    task = asyncio.ensure_future(remote.run())
    try:
        await rendezvous.wait_environment()
        yield remote
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await server.close()
