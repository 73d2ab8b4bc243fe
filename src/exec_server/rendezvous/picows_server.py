"""The server side of picows for the rendezvous' relay port: :func:`relay_protocol`
builds the protocol of one connection that :class:`~exec_server.rendezvous.port.
PortSplitter` hands over (what ``picows.ws_create_server`` would build for each of its
own connections), and :func:`error_upgrade` refuses an upgrade before the 101 with the
registry's JSON error body. The socket itself is :mod:`~exec_server.rendezvous.
relay_socket`'s."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from http import HTTPStatus
from typing import Any

import picows
from picows.picows import WSProtocol  # type: ignore[attr-defined]

__all__ = ["HANDSHAKE_TIMEOUT_S", "error_upgrade", "relay_protocol"]

HANDSHAKE_TIMEOUT_S = 10.0

_picows_log = logging.getLogger("exec_server.rendezvous.picows")


def relay_protocol(
    factory: Callable[[picows.WSUpgradeRequest], Any], max_message_bytes: int
) -> asyncio.BaseProtocol:
    """A server-side picows protocol for one connection (what ``picows.ws_create_server``
    builds for each of its connections, here for a connection :class:`PortSplitter`
    hands over)."""
    protocol: asyncio.BaseProtocol = WSProtocol(
        None,  # host and port: client side only
        None,  # path: client side only
        False,  # server side
        factory,
        _picows_log,
        True,  # disconnect when a callback raises
        HANDSHAKE_TIMEOUT_S,
        False,  # picows' own pings: the Keepalive sends ours
        20.0,
        20.0,
        picows.WSAutoPingStrategy.PING_WHEN_IDLE,
        True,  # answer pings
        2 * max_message_bytes,  # picows reads no frame: the relay socket takes over
        None,  # extra headers
        64 * 1024,  # initial read buffer (the upgrade request only)
    )
    return protocol


def error_upgrade(status: int, code: str, message: str) -> picows.WSUpgradeResponseWithListener:
    """A refused upgrade, with the registry's JSON error body."""
    body = json.dumps({"error": {"code": code, "message": message}}).encode()
    headers = {"Content-Type": "application/json; charset=utf-8"}
    if status == HTTPStatus.UNAUTHORIZED:
        headers["WWW-Authenticate"] = "Bearer"
    response = picows.WSUpgradeResponse.create_error_response(status, body, headers)
    return picows.WSUpgradeResponseWithListener(response, None)
