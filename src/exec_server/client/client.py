"""The harness SDK: :class:`ExecServerClient`, one session on an exec-server.

::

    async with ExecServerClient.connect("ws://127.0.0.1:8765") as client:
        result = await client.run(["echo", "hi"])
        result.stdout, result.exit_code            # (b'hi\\n', 0)

The same API works over a local websocket, a rendezvous (``rendezvous=`` +
``environment_id=``, or a ``role=harness`` URL), a stdio child
(:meth:`ExecServerClient.spawn_stdio`) or any other
:class:`~exec_server.transport.channel.MessageChannel`
(:meth:`ExecServerClient.over_channel`).

When a connection drops and the client knows how to dial again, it resumes its
session (``initialize{resumeSessionId}``) and splices each process's missed events
from ``process/read``; calls made meanwhile wait for it. Calls that were in flight
when the connection dropped fail with :class:`TransportClosed` (they may or may not
have run). If the session cannot be resumed within ``recovery_timeout_s``, every
handle fails and every call raises :class:`TransportClosed` (or
:class:`SessionExpired` if the server no longer had the session).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import uuid
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any, TypeVar

import msgspec

from ..protocol import messages as m
from ..protocol.errors import METHOD_NOT_FOUND
from ..transport.channel import MessageChannel
from .config import DEFAULT, ClientConfig, Timeout, _Default
from .connect import (
    Connecting,
    Reconnect,
    RelayWatch,
    codex_noise_environment,
    dial_rendezvous,
    dial_url,
    spawn_stdio_channel,
)
from .errors import (
    ExecServerError,
    RequestTimeout,
    ServerError,
    TransportClosed,
    resume_error,
)
from .fs import FileSystem
from .handles import ProcessHandles
from .info import EnvironmentInfo, InitializeWire, parse_environment_info, path_uri, uses_uris
from .process import ProcessHandle, ProcessResult, run_to_completion
from .recovery import again, recover, splice
from .rpc import RpcClient

T = TypeVar("T")

#: Output kept per stream by :meth:`ExecServerClient.run` unless told otherwise.
DEFAULT_RUN_OUTPUT_BYTES = 64 * 1024 * 1024

EnvPolicyArg = m.EnvPolicy | None | _Default


class ExecServerClient:
    """A connection to one exec-server session.

    Build it with :meth:`connect`, :meth:`spawn_stdio` or :meth:`over_channel`, each
    usable as ``async with ... as client`` or awaited. Process calls are
    :meth:`run` (one shot) and :meth:`start_process` (streaming); files are under
    :attr:`fs`. Every call takes ``timeout=``.
    """

    def __init__(
        self,
        channel: MessageChannel,
        *,
        config: ClientConfig | None = None,
        reconnect: Reconnect | None = None,
    ) -> None:
        self.config = config or ClientConfig()
        self.session_id: str | None = None
        #: The environment's filesystem.
        self.fs = FileSystem(self)
        #: How many times a lost connection was recovered.
        self.recoveries = 0
        self._handles = ProcessHandles()
        self._rpc = self._new_rpc(channel)
        self._reconnect = reconnect
        self._ready = asyncio.Event()
        self._ready.set()
        self._recovery: asyncio.Task[None] | None = None
        self._closing = False
        self._failure: ExecServerError | None = None
        self._info: EnvironmentInfo | None = None
        self._uri_paths = False
        self._relay_watch: RelayWatch | None = None

    # --- construction -------------------------------------------------------------

    @classmethod
    def connect(
        cls,
        url: str | None = None,
        *,
        rendezvous: str | Sequence[str] | None = None,
        environment_id: str | None = None,
        token: str | None = None,
        config: ClientConfig | None = None,
        resume_session_id: str | None = None,
    ) -> Connecting:
        """Connect and initialize a session; await it or use it with ``async with``.

        Give either ``url`` (``ws://`` of a local server, or a ``role=harness``
        rendezvous URL) or ``rendezvous`` (a registry base URL) plus
        ``environment_id``: a fresh harness URL is then asked for on every dial.
        ``rendezvous`` may list several nodes of a rendezvous cluster (a list, or comma
        separated): the client starts with the first and moves to the next when one
        is unreachable or dies mid-session (reliable streams resume on the new node).
        ``token`` is the bearer for whichever is dialed (the local server's, or the
        registry's). Raises :class:`ConnectError` when connecting fails.

        Over a rendezvous, ``config.on_relay_status`` hears what the relay reports
        about the environment (offline and waited for, back, given up). The relay is
        end-to-end encrypted whenever the registry offers it (``config.encryption``).

        With neither ``url`` nor ``rendezvous``, the Codex harness's variables are used
        as Codex uses them: ``CODEX_EXEC_SERVER_NOISE_REGISTRY_URL``,
        ``_ENVIRONMENT_ID``, ``_AUTH_TOKEN`` and ``_CHATGPT_ACCOUNT_ID``.
        """
        config = config or ClientConfig()
        if url is None and rendezvous is None and (codex := codex_noise_environment()):
            rendezvous = codex.registry_url
            environment_id = environment_id or codex.environment_id
            token = token or codex.auth_token
            if codex.account_id and config.chatgpt_account_id is None:
                config = dataclasses.replace(config, chatgpt_account_id=codex.account_id)
        watch = RelayWatch(config.on_relay_status)
        if (url is None) == (rendezvous is None):
            raise ValueError(
                "give either url or rendezvous (with environment_id), or set "
                "CODEX_EXEC_SERVER_NOISE_REGISTRY_URL"
            )
        if rendezvous is not None:
            if not environment_id:
                raise ValueError("environment_id is required with rendezvous")
            dial = dial_rendezvous(rendezvous, environment_id, token, config, watch)
        else:
            assert url is not None
            if environment_id is not None:
                raise ValueError("environment_id goes with rendezvous, not url")
            dial = dial_url(url, token, config, watch)

        async def open_client() -> ExecServerClient:
            return await cls._open(await dial(), config, dial, resume_session_id, watch)

        return Connecting(open_client)

    @classmethod
    def spawn_stdio(
        cls,
        argv: list[str] | None = None,
        *,
        env: Mapping[str, str] | None = None,
        config: ClientConfig | None = None,
    ) -> Connecting:
        """Start an exec-server child speaking stdio (ours by default) and connect.
        There is no recovery: the session ends with the child."""
        config = config or ClientConfig()

        async def open_client() -> ExecServerClient:
            channel = await spawn_stdio_channel(argv, env, config)
            return await cls._open(channel, config, None, None)

        return Connecting(open_client)

    @classmethod
    def over_channel(
        cls,
        channel: MessageChannel,
        *,
        config: ClientConfig | None = None,
        reconnect: Reconnect | None = None,
        resume_session_id: str | None = None,
    ) -> Connecting:
        """Initialize a session over ``channel``.

        With ``reconnect`` (a factory of fresh channels to the same server), a lost
        connection is recovered as :meth:`connect` does.
        """
        config = config or ClientConfig()

        async def open_client() -> ExecServerClient:
            return await cls._open(channel, config, reconnect, resume_session_id)

        return Connecting(open_client)

    @classmethod
    async def _open(
        cls,
        channel: MessageChannel,
        config: ClientConfig,
        reconnect: Reconnect | None,
        resume_session_id: str | None,
        relay_watch: RelayWatch | None = None,
    ) -> ExecServerClient:
        client = cls(channel, config=config, reconnect=reconnect)
        client._relay_watch = relay_watch
        client._rpc.start()
        limit = config.timeouts.initialize_s
        try:
            async with asyncio.timeout(limit):
                await client._initialize(client._rpc, resume_session_id)
        except TimeoutError:
            await client.close()
            raise RequestTimeout(
                f"timed out waiting for exec-server initialize handshake after {limit}s",
                method=m.INITIALIZE,
                timeout=limit,
            ) from None
        except BaseException:
            await client.close()
            raise
        return client

    def _new_rpc(self, channel: MessageChannel) -> RpcClient:
        return RpcClient(channel, self._handles.route, self._on_disconnect, self._handles.on_output)

    async def _initialize(self, rpc: RpcClient, resume_session_id: str | None) -> None:
        params = m.InitializeParams(
            client_name=self.config.client_name, resume_session_id=resume_session_id
        )
        try:
            result = await rpc.call(m.INITIALIZE, params, InitializeWire)
        except ServerError as exc:
            raise resume_error(exc, resume_session_id) if resume_session_id else exc from None
        if resume_session_id is not None and result.session_id != resume_session_id:
            raise ServerError(0, f"resumed session {result.session_id}, not {resume_session_id}")
        self.session_id = result.session_id
        announced = parse_environment_info(result.environment_info)
        if announced is not None:
            self._info = announced
            self._uri_paths = uses_uris(announced)
        await rpc.notify(m.INITIALIZED, {})

    async def __aenter__(self) -> ExecServerClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """End the session's connection (the server keeps the session for resume for
        its detached lifetime, then kills its processes)."""
        self._closing = True
        if self._recovery is not None:
            self._recovery.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._recovery
        await self._rpc.close()

    @property
    def closed(self) -> bool:
        return self._failure is not None or self._closing

    @property
    def _channel(self) -> MessageChannel:
        """The channel the session currently runs over (replaced by a recovery)."""
        return self._rpc.channel

    async def _call(self, method: str, params: Any, result_type: type[T], timeout: Timeout) -> T:
        """One request, waiting while a lost connection is recovered, within ``timeout``."""
        limit = self.config.request_timeout(timeout)
        try:
            async with asyncio.timeout(limit):
                if not self._ready.is_set():
                    await self._ready.wait()
                if self._failure is not None:
                    raise again(self._failure)
                return await self._rpc.call(method, params, result_type)
        except TimeoutError as exc:
            if isinstance(exc, ExecServerError):
                raise
            raise RequestTimeout(
                f"`{method}` got no answer within {limit:g}s", method=method, timeout=limit
            ) from None

    def _wire_path(self, path: str) -> str:
        """``path`` in the form the server takes (see :mod:`~exec_server.client.info`)."""
        return path_uri(path) if self._uri_paths else path

    async def call(
        self,
        method: str,
        params: Any = None,
        result_type: type[Any] = object,
        *,
        timeout: Timeout = DEFAULT,
    ) -> Any:
        """Escape hatch: any method, raw params, decoded into ``result_type``."""
        return await self._call(method, params, result_type, timeout)

    # --- the environment ------------------------------------------------------------

    async def environment_info(self, *, timeout: Timeout = DEFAULT) -> EnvironmentInfo:
        """The environment's shell and directories (fetched once, then cached)."""
        if self._info is None:
            try:
                raw = await self._call(m.ENVIRONMENT_INFO, None, msgspec.Raw, timeout)
            except ServerError as exc:
                if exc.code != METHOD_NOT_FOUND:
                    raise
                raw = None  # Codex 0.133 has no environment/info
            self._info = parse_environment_info(raw) or EnvironmentInfo()
        return self._info

    # --- processes --------------------------------------------------------------------

    async def start_process(
        self,
        argv: list[str],
        *,
        cwd: str | None = None,
        env: Mapping[str, str] | None = None,
        env_policy: EnvPolicyArg = DEFAULT,
        tty: bool = False,
        pipe_stdin: bool = False,
        arg0: str | None = None,
        process_id: str | None = None,
        rows: int | None = None,
        cols: int | None = None,
        events: bool = True,
        output_chunk_bytes: int | _Default | None = DEFAULT,
        timeout: Timeout = DEFAULT,
    ) -> ProcessHandle:
        """Start a process and return its handle (events begin at seq 1).

        ``cwd`` defaults to the environment's working directory. The child's
        environment is the environment's own (``env_policy`` defaults to Codex's
        harness policy: inherit everything) with ``env`` on top; pass
        ``env_policy=None`` to give the child exactly ``env``. ``tty`` runs it under a
        PTY (``rows``/``cols``, 24x80 by default); ``pipe_stdin`` keeps a pipe stdin
        open for :meth:`ProcessHandle.write`.

        With ``events=False`` notifications for it are ignored and the caller polls
        with :meth:`ProcessHandle.read`; otherwise the handle's events must be
        consumed (see ``ClientConfig.max_buffered_output_bytes``).
        """
        if not argv:
            raise ValueError("argv must not be empty")
        if cwd is None:
            cwd = (await self.environment_info(timeout=timeout)).default_cwd
        else:
            cwd = self._wire_path(cwd)
        if isinstance(env_policy, _Default):
            env_policy = m.EnvPolicy(inherit="all", ignore_default_excludes=True)
        if isinstance(output_chunk_bytes, _Default):
            output_chunk_bytes = self.config.output_chunk_bytes
        process_id = process_id or uuid.uuid4().hex
        handle = ProcessHandle(
            self,
            process_id,
            receives_events=events,
            max_buffered_bytes=self.config.max_buffered_output_bytes,
        )
        # Register before starting: output notifications can precede the response.
        if events:
            self._handles.add(handle)
        params = m.ProcessStartParams(
            process_id=process_id,
            argv=list(argv),
            cwd=cwd,
            env=dict(env or {}),
            tty=tty,
            pipe_stdin=pipe_stdin,
            arg0=arg0,
            env_policy=env_policy,
            rows=msgspec.UNSET if rows is None else rows,
            cols=msgspec.UNSET if cols is None else cols,
            output_chunk_bytes=msgspec.UNSET if output_chunk_bytes is None else output_chunk_bytes,
        )
        try:
            await self._call(m.PROCESS_START, params, m.ProcessStartResult, timeout)
        except BaseException:
            self._forget(handle)
            raise
        return handle

    async def run(
        self,
        argv: list[str],
        *,
        cwd: str | None = None,
        env: Mapping[str, str] | None = None,
        env_policy: EnvPolicyArg = DEFAULT,
        stdin: bytes | None = None,
        tty: bool = False,
        timeout: float | None = None,
        max_output_bytes: int | None = DEFAULT_RUN_OUTPUT_BYTES,
    ) -> ProcessResult:
        """Run a command to completion and return its output and exit code.

        ``stdin`` is written to the process and then closed (closing is this server's
        extension: a Codex server keeps stdin open, so there a command that reads to
        EOF runs until ``timeout``). ``timeout`` bounds the whole run: when it passes,
        the process is terminated and :class:`ProcessTimeout` is raised with the
        output so far. Each output stream keeps its first ``max_output_bytes``
        (``None``: no limit); the rest is read and dropped, and ``result.truncated``
        says so. A non-zero exit code is not an error: check ``result.exit_code``.
        Other arguments as :meth:`start_process`.
        """

        async def start(process_id: str) -> ProcessHandle:
            return await self.start_process(
                argv,
                cwd=cwd,
                env=env,
                env_policy=env_policy,
                tty=tty,
                pipe_stdin=stdin is not None and not tty,
                process_id=process_id,
            )

        return await run_to_completion(
            self,
            start,
            argv[0] if argv else "",
            stdin=stdin,
            tty=tty,
            timeout=timeout,
            max_output_bytes=max_output_bytes,
        )

    def process(self, process_id: str) -> ProcessHandle:
        """A handle on a process by id (started elsewhere, e.g. before a resume, or with
        ``events=False``): it acts on the process and polls it with ``read()``, but
        receives no events."""
        return ProcessHandle(self, process_id, receives_events=False)

    # --- recovery -------------------------------------------------------------------

    def _environment_gone(self) -> str | None:
        """Why the rendezvous gave the environment up (its grace ended), or ``None``:
        then nothing will come back on this connection, and recovery is not tried."""
        gone = self._relay_watch.gone if self._relay_watch is not None else None
        return gone.detail if gone is not None else None

    def _on_disconnect(self, message: str) -> None:
        if self._closing or self._failure is not None:
            return
        if (gone := self._environment_gone()) is not None:
            # The rendezvous already waited its grace for the environment.
            self._give_up(TransportClosed(f"{message}: {gone}"))
            return
        if (
            self._reconnect is not None
            and self.session_id is not None
            and self.config.recovery_timeout_s > 0
        ):
            if self._recovery is None or self._recovery.done():
                self._ready.clear()
                self._recovery = asyncio.get_running_loop().create_task(recover(self, message))
            return
        self._give_up(TransportClosed(message))

    async def _resume(self) -> None:
        assert self._reconnect is not None and self.session_id is not None
        channel = await self._reconnect()
        rpc = self._new_rpc(channel)
        rpc.start()
        try:
            await self._initialize(rpc, self.session_id)
        except BaseException:
            await rpc.close()
            raise
        self._rpc = rpc
        self._ready.set()
        self.recoveries += 1
        for handle in self._handles.snapshot():
            await splice(self, handle)

    def _give_up(self, error: ExecServerError) -> None:
        self._failure = error
        self._ready.set()
        self._handles.fail_all(str(error))

    def _forget(self, handle: ProcessHandle) -> None:
        self._handles.forget(handle)
