"""What a process handle yields, and the receive path of ``process/output``.

``process/output`` notifications carry nearly every byte a server sends: a base64
chunk of up to 128 KiB (about 171 KiB of JSON) per message. :func:`decode_output`
reads one without handing the chunk to the JSON decoder: it locates the chunk's
string (``bytes.find``, memchr speed), decodes the small remainder with msgspec to
check the envelope and read ``processId``/``seq``/``stream``, and base64-decodes the
chunk straight from the message's memory (pybase64, SIMD). Decoding the whole
message with msgspec instead scans the chunk twice (envelope, then params) at about
2.6 GB/s, which made the SDK cost 2-3x the server's CPU per byte.

Anything unusual (another field order, whitespace, an escaped character, a field
we do not expect) falls back to the ordinary decoder, which handles every valid
message and reports invalid ones.
"""

from __future__ import annotations

import binascii
from collections.abc import Awaitable, Callable

import msgspec
import pybase64

from ..protocol.messages import OutputStream


class OutputEvent(msgspec.Struct, frozen=True, gc=False):
    """A chunk of output (``stream`` is ``stdout``, ``stderr``, or ``pty`` for a tty)."""

    seq: int
    stream: OutputStream
    data: bytes


class ExitedEvent(msgspec.Struct, frozen=True, gc=False):
    """The process exited; ``exit_code`` is -1 when it died of a signal."""

    seq: int
    exit_code: int


class ClosedEvent(msgspec.Struct, frozen=True, gc=False):
    """The last event: the process exited and its output is complete."""

    seq: int


class FailedEvent(msgspec.Struct, frozen=True, gc=False):
    """The events ended before ``closed`` (the connection was lost for good, or output
    was evicted while disconnected); ``message`` says why."""

    message: str


ProcessEvent = OutputEvent | ExitedEvent | ClosedEvent | FailedEvent

#: Receives one decoded ``process/output``: process id, seq, stream, data. May return
#: an awaitable: the connection's reader waits for it (backpressure).
OutputCallback = Callable[[str, int, OutputStream, bytes], Awaitable[None] | None]


class _OutputParams(msgspec.Struct, rename="camel"):
    process_id: str
    seq: int
    stream: OutputStream
    chunk: str


class _OutputMessage(msgspec.Struct):
    method: str
    params: _OutputParams
    id: int | str | msgspec.UnsetType | None = msgspec.UNSET


class OutputWire(msgspec.Struct, rename="camel"):
    """``process/output`` params with the chunk left as base64 text (the slow path)."""

    process_id: str
    seq: int
    stream: OutputStream
    chunk: str


_message_decoder = msgspec.json.Decoder(_OutputMessage)
output_params_decoder = msgspec.json.Decoder(OutputWire)

# How both Codex (serde, struct order) and our server begin the message.
_PREFIX = b'{"method":"process/output","params":{'
_CHUNK_KEY = b'"chunk":"'
# Put in place of the chunk before decoding the rest: never valid base64, so a real
# chunk can never be mistaken for it.
_PLACEHOLDER = b"*"


def decode_output(raw: bytes) -> tuple[str, int, OutputStream, bytes] | None:
    """``(process_id, seq, stream, data)`` of a ``process/output`` message, or ``None``
    when ``raw`` is anything else or not in the usual shape (decode it normally)."""
    if not raw.startswith(_PREFIX):
        return None
    key = raw.find(_CHUNK_KEY, len(_PREFIX) - 1)
    if key < 0:
        return None
    start = key + len(_CHUNK_KEY)
    end = raw.find(b'"', start)
    # A backslash would mean an escape inside the string: base64 never has one.
    if end < 0 or raw.find(b"\\", start, end) >= 0:
        return None
    try:
        message = _message_decoder.decode(raw[:start] + _PLACEHOLDER + raw[end:])
    except msgspec.DecodeError:
        return None
    params = message.params
    # The cut must have been params.chunk (not a "chunk" key elsewhere), and this
    # must be a notification (a request carries an id).
    if params.chunk != "*" or message.method != "process/output" or message.id is not msgspec.UNSET:
        return None
    try:
        data = pybase64.b64decode(memoryview(raw)[start:end], validate=True)
    except (binascii.Error, ValueError):
        return None
    return params.process_id, params.seq, params.stream, data
