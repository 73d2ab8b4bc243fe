"""Rendezvous control messages: what the rendezvous tells our own endpoints about a socket.

Relay frames carry the endpoints' traffic and the rendezvous never reads their payloads.
A few facts only the rendezvous knows are worth telling our endpoints, though: that the
environment behind a harness socket went offline and is being waited for, and that a
harness is too slow to take a stream's output, so the environment should hold it back.

They travel as websocket **text** messages (JSON, one object each), and only on sockets
that negotiated the websocket subprotocol :data:`CONTROL_SUBPROTOCOL` at the upgrade. A
Codex peer never offers it, so it never sees one (text messages are invalid on its
relay). Our endpoints never send control messages: a text message from an endpoint is a
protocol error on the rendezvous.

Messages (``type`` names each; unknown types are ignored, so new ones can be added):

* ``pause_output{stream_id}`` (to an environment): stop sending data on the stream; the
  harness owning it is not reading fast enough and its stream cannot retransmit, so
  output must wait at the source rather than be dropped or fill the rendezvous.
* ``resume_output{stream_id}`` (to an environment): the harness caught up; send again.
* ``peer_offline{peer, grace_s}`` (to a harness): the ``peer`` (``"environment"``) lost
  its socket; its streams are held for ``grace_s`` seconds, then reset.
* ``peer_online{peer}`` (to a harness): the peer is back; held streams go on.
"""

from __future__ import annotations

from typing import Literal

import msgspec

__all__ = [
    "CONTROL_SUBPROTOCOL",
    "ENVIRONMENT_OFFLINE",
    "ControlMessage",
    "PauseOutput",
    "PeerOffline",
    "PeerOnline",
    "ResumeOutput",
    "decode_control",
    "encode_control",
]

CONTROL_SUBPROTOCOL = "exec-server.relay-control.v1"
"""Websocket subprotocol an endpoint offers to receive control messages."""

ENVIRONMENT_OFFLINE = "environment_offline"
"""Reason of the ``reset`` the rendezvous sends a harness when the environment's grace
period ended without it coming back: the stream's peer is gone for good."""

PeerRole = Literal["environment", "harness"]


class PauseOutput(msgspec.Struct, frozen=True, tag="pause_output", tag_field="type"):
    stream_id: str


class ResumeOutput(msgspec.Struct, frozen=True, tag="resume_output", tag_field="type"):
    stream_id: str


class PeerOffline(msgspec.Struct, frozen=True, tag="peer_offline", tag_field="type"):
    peer: PeerRole
    grace_s: float


class PeerOnline(msgspec.Struct, frozen=True, tag="peer_online", tag_field="type"):
    peer: PeerRole


ControlMessage = PauseOutput | ResumeOutput | PeerOffline | PeerOnline

_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(ControlMessage)


def encode_control(message: ControlMessage) -> str:
    """The text of one control message."""
    return _encoder.encode(message).decode()


def decode_control(text: str | bytes) -> ControlMessage | None:
    """The control message in ``text``, or ``None`` for one this version does not know
    (or that is malformed): control messages are advisory, never worth a disconnect."""
    try:
        message: ControlMessage = _decoder.decode(text)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None
    return message
