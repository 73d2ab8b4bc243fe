"""Sessions: the state a harness keeps across connections.

A session owns its processes. One connection at a time is *attached* and receives
the session's process notifications. When that connection ends the session is
*detached*: processes keep running, notifications are dropped (output stays
retained for ``process/read``), and a timer starts. A new connection may resume the
session with ``initialize{resumeSessionId}`` before the timer fires; after it fires
the session's processes are killed and the id is forgotten.

Each attachment is a :class:`Lease`. A resume revokes the previous lease, which is
how a long-poll still running for the old connection learns that it lost the
session ("session has been resumed by another connection").
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from ..protocol.errors import InvalidRequest, SessionAlreadyAttached
from ..protocol.messages import Message
from .process import ProcessLimits
from .process_manager import ProcessManager

log = logging.getLogger(__name__)

#: How long a detached session survives (Codex 0.133 measured 10.08 s).
DETACHED_SESSION_TTL_S = 10.0
#: ... and a session that spoke Codex 0.171's URIs (the 0.171 binary still resumed one
#: after 75 s and had forgotten it after 85 s; its harness reconnects and resumes).
DETACHED_SESSION_TTL_0171_S = 80.0
#: Sessions one server holds at most (attached or detached).
MAX_SESSIONS = 4096

NotificationSender = Callable[[str, Message], Awaitable[None]]


@dataclass(frozen=True)
class SessionConfig:
    detached_ttl_s: float = DETACHED_SESSION_TTL_S
    detached_ttl_0171_s: float = DETACHED_SESSION_TTL_0171_S
    max_sessions: int = MAX_SESSIONS
    process_limits: ProcessLimits = field(default_factory=ProcessLimits)


class Lease:
    """One connection's hold on a session; revoked when another connection resumes it."""

    def __init__(self, session: Session, sender: NotificationSender) -> None:
        self.session = session
        self.sender = sender
        self.revoked = asyncio.Event()
        self.active = True


class Session:
    def __init__(self, session_id: str, config: SessionConfig) -> None:
        self.id = session_id
        self._config = config
        self.processes = ProcessManager(self._notify, config.process_limits)
        self._lease: Lease | None = None
        self._expiry: asyncio.TimerHandle | None = None
        #: A request of this session spoke Codex 0.171's ``file://`` URIs: it is kept
        #: detached as long as 0.171 keeps its sessions.
        self.speaks_uris = False

    @property
    def attached(self) -> bool:
        return self._lease is not None and self._lease.active

    async def _notify(self, method: str, params: Message) -> None:
        lease = self._lease
        if lease is not None and lease.active:
            await lease.sender(method, params)

    def _attach(self, sender: NotificationSender) -> Lease:
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        if self._lease is not None:
            self._lease.revoked.set()
        self._lease = Lease(self, sender)
        return self._lease

    def _detach(self, lease: Lease, on_expire: Callable[[], None]) -> None:
        lease.active = False
        if self._lease is not lease:
            return
        loop = asyncio.get_running_loop()
        config = self._config
        ttl = config.detached_ttl_0171_s if self.speaks_uris else config.detached_ttl_s
        self._expiry = loop.call_later(ttl, on_expire)

    def _cancel_expiry(self) -> None:
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None


class SessionRegistry:
    """All sessions of one server, shared by every connection and relay stream."""

    def __init__(self, config: SessionConfig | None = None) -> None:
        self.config = config or SessionConfig()
        self._sessions: dict[str, Session] = {}
        self._closing: set[asyncio.Task[None]] = set()
        self._closed = False

    def __len__(self) -> int:
        return len(self._sessions)

    def get(self, session_id: str) -> Session | None:
        return self._sessions.get(session_id)

    def create(self, sender: NotificationSender) -> Lease:
        if self._closed:
            raise InvalidRequest("exec-server is shutting down")
        if len(self._sessions) >= self.config.max_sessions:
            raise InvalidRequest(
                f"too many sessions: limit is {self.config.max_sessions} per server"
            )
        session = Session(str(uuid.uuid4()), self.config)
        self._sessions[session.id] = session
        return session._attach(sender)

    def resume(self, session_id: str, sender: NotificationSender) -> Lease:
        session = self._sessions.get(session_id)
        if session is None:
            raise InvalidRequest(f"unknown session id {session_id}")
        if session.attached:
            raise SessionAlreadyAttached(
                f"session {session_id} is already attached to another connection"
            )
        return session._attach(sender)

    def detach(self, lease: Lease) -> None:
        """Called when the lease's connection ends; starts the expiry timer."""
        session = lease.session
        if self._sessions.get(session.id) is not session:
            lease.active = False
            return
        session._detach(lease, lambda: self._expire(session))

    def _expire(self, session: Session) -> None:
        if session.attached or self._sessions.get(session.id) is not session:
            return
        log.info("detached session %s expired; terminating its processes", session.id)
        self._drop(session)

    def _drop(self, session: Session) -> None:
        session._cancel_expiry()
        if session._lease is not None:
            # Ends long-polls still parked for a connection that is already gone.
            session._lease.revoked.set()
        self._sessions.pop(session.id, None)
        task = asyncio.get_running_loop().create_task(session.processes.close())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def close(self) -> None:
        """Shut every session down and wait until all their processes are reaped."""
        self._closed = True
        for session in list(self._sessions.values()):
            self._drop(session)
        while self._closing:
            with contextlib.suppress(Exception):
                await asyncio.gather(*self._closing, return_exceptions=True)
