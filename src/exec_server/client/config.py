"""How an :class:`~exec_server.client.ExecServerClient` behaves: one frozen config.

The same :class:`ClientConfig` is taken by every way of connecting (``connect``,
``spawn_stdio``, ``over_channel``). Every call also takes ``timeout=``: seconds, or
``None`` for no limit; left out, :attr:`Timeouts.request_s` applies (httpx's
per-request override).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final, Literal

from ..transport.channel import DEFAULT_MAX_MESSAGE_BYTES
from ..transport.relay_status import StatusCallback

DEFAULT_CLIENT_NAME = "exec-server-python"
#: How long a client tries to resume its session after losing the connection (Codex:
#: 25 s, inside the server's retention).
SESSION_RECOVERY_TIMEOUT_S = 25.0
#: Output a process handle holds for a slow consumer before pushing back.
MAX_BUFFERED_EVENT_BYTES = 8 * 1024 * 1024
#: Largest output chunk this SDK asks for (the ``outputChunkBytes`` extension of
#: ``process/start``): 128 KiB raw is about 171 KiB of JSON, one relay segment, and a
#: sixteenth of the messages of Codex's 8 KiB chunks. A Codex server ignores the field.
DEFAULT_OUTPUT_CHUNK_BYTES = 128 * 1024


class _Default:
    """The type of :data:`DEFAULT`."""

    def __repr__(self) -> str:
        return "DEFAULT"


#: "Use the config's setting": the default of every ``timeout=`` argument (and of a few
#: others that fall back to the config).
DEFAULT: Final = _Default()
#: A ``timeout=`` argument: seconds, ``None`` for no limit, or :data:`DEFAULT`.
Timeout = float | None | _Default


@dataclass(frozen=True)
class Timeouts:
    """Seconds allowed for each stage; ``None`` means no limit.

    ``connect_s`` covers dialing (and asking the registry for a harness URL),
    ``initialize_s`` the session handshake, ``request_s`` each call that does not
    pass its own ``timeout=``. Long-polls (``read(wait_ms=...)``) get their wait on
    top. :meth:`~exec_server.client.ExecServerClient.run` is bounded by its own
    ``timeout=`` only.
    """

    connect_s: float = 10.0
    initialize_s: float = 10.0
    request_s: float | None = 60.0


@dataclass(frozen=True)
class ClientConfig:
    """Knobs of one client.

    * ``client_name``: sent in ``initialize`` (shows in the server's logs).
    * ``timeouts``: see :class:`Timeouts`.
    * ``max_message_bytes``: the largest message accepted from the server over a
      direct websocket or stdio (a rendezvous relay has its own 64 MiB limit).
    * ``recovery_timeout_s``: after a lost connection, how long to keep redialing and
      resuming the session before failing every handle and call; 0 disables recovery.
    * ``output_chunk_bytes``: output chunk size asked of the server (our extension;
      ``None`` leaves the server's default, Codex's 8 KiB).
    * ``max_buffered_output_bytes``: undelivered output one process handle holds before
      the connection's reader waits for the consumer (pushing back on the server).
    * ``on_relay_status``: over a rendezvous, called with each
      :class:`~exec_server.client.RelayStatus` the relay reports (the environment went
      offline and is waited for, came back, was given up; the rendezvous itself was
      lost and is redialed), in time to tell a person why nothing is happening. It
      runs on the event loop and must not block. Once the rendezvous gives the
      environment up (``"gone"``), the client stops recovering at once.
    * ``encryption``: over a rendezvous (``rendezvous=``), ``"auto"`` takes the
      end-to-end encrypted relay whenever the registry offers it and falls back to the
      cleartext relay (with a warning) for an environment registered the 0.133 way;
      ``"required"`` refuses the fallback.
    * ``chatgpt_account_id``: sent to the registry as ``chatgpt-account-id`` (Codex's
      ``CODEX_EXEC_SERVER_NOISE_CHATGPT_ACCOUNT_ID``), for registries that want it.
    """

    client_name: str = DEFAULT_CLIENT_NAME
    timeouts: Timeouts = field(default_factory=Timeouts)
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    recovery_timeout_s: float = SESSION_RECOVERY_TIMEOUT_S
    output_chunk_bytes: int | None = DEFAULT_OUTPUT_CHUNK_BYTES
    max_buffered_output_bytes: int = MAX_BUFFERED_EVENT_BYTES
    on_relay_status: StatusCallback | None = field(default=None, compare=False)
    encryption: Literal["auto", "required"] = "auto"
    chatgpt_account_id: str | None = None

    def __post_init__(self) -> None:
        if self.max_message_bytes < 1024:
            raise ValueError(f"max_message_bytes must be >= 1024, got {self.max_message_bytes}")
        if self.recovery_timeout_s < 0:
            raise ValueError(f"recovery_timeout_s must be >= 0, got {self.recovery_timeout_s}")
        if self.max_buffered_output_bytes < 1:
            raise ValueError("max_buffered_output_bytes must be positive")

    def request_timeout(self, timeout: Timeout) -> float | None:
        """The limit for one call: ``timeout`` unless it is :data:`DEFAULT`."""
        return self.timeouts.request_s if isinstance(timeout, _Default) else timeout
