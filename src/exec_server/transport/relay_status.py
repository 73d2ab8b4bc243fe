"""What a harness hears about the environment behind its relay stream.

Kept apart from :mod:`~exec_server.transport.relay` (which loads aiohttp and the relay
core) so that the SDK's config and the CLI can name these types without loading the
relay: a command that dials a local ``ws://`` server never needs it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["RelayStatus", "StatusCallback"]


@dataclass(frozen=True, slots=True)
class RelayStatus:
    """What a harness learns about the environment behind its relay stream.

    ``state`` is ``"offline"`` (the rendezvous lost the environment's socket and holds
    the stream for ``grace_s`` seconds), ``"online"`` (it is back), ``"gone"`` (the
    grace ended: the stream was reset with ``environment_offline``; nothing will come),
    ``"reconnecting"`` (the harness lost its own socket to the rendezvous and redials
    for up to ``grace_s`` seconds; ``detail`` says why) or ``"reconnected"``.
    """

    state: str
    grace_s: float | None = None
    detail: str = ""


#: Called with every :class:`RelayStatus` report, on the event loop; it must not block.
StatusCallback = Callable[[RelayStatus], None]
