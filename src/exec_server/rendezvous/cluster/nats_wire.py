"""The core NATS client protocol, sans-IO: what the frame bus's connection writes and reads.

The frame bus forwards every cross-node frame over one NATS connection; nats-py spends
about 15 us of pure Python per message on each side (a buffer and a flusher task per
publish, a queue and a task step per delivery). This module is the protocol alone, as
bytes in and events out, for a connection that writes a publish to its socket at once
and hands a received message to its subscriber synchronously
(:mod:`~exec_server.rendezvous.cluster.nats_client`). Only what the bus uses is here:
``INFO`` / ``CONNECT`` (user and password, token, or a signed nonce; ``verbose`` and
``pedantic`` off, headers on), ``PING`` / ``PONG``, ``SUB`` / ``UNSUB``, ``PUB`` /
``HPUB``, ``MSG`` / ``HMSG``, ``+OK`` and ``-ERR``. JetStream and request/reply stay on
nats-py (the shared state's connection). The credentials that go into ``CONNECT``
(``.creds`` files, nkey seeds, the signed nonce) are
:mod:`~exec_server.rendezvous.cluster.nats_nkeys`'s.

:class:`Parser` turns whatever the socket delivers, split anywhere, into :class:`Msg`,
:class:`ServerInfo`, :data:`PING`, :data:`PONG`, :data:`OK` and :class:`ServerError`
events. Its memory is bounded: a control line longer than :data:`MAX_CONTROL_LINE`, a
message above the server's ``max_payload`` (plus headers), and an ``INFO`` announcing a
``max_payload`` above :data:`MAX_PAYLOAD_CEILING` (NATS's own ceiling) are a
:class:`ProtocolError`, as is anything else that is not the protocol (a subject that is
not UTF-8, a header block without ``NATS/1.0``).
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

import msgspec

__all__ = [
    "CRLF",
    "MAX_CONTROL_LINE",
    "OK",
    "PING",
    "PONG",
    "ConnectOptions",
    "Event",
    "Msg",
    "Parser",
    "ProtocolError",
    "ServerError",
    "ServerInfo",
    "connect_command",
    "encode_headers",
    "encode_subject",
    "header_block_start",
    "publish_parts",
    "sub_command",
    "unsub_command",
]

MAX_CONTROL_LINE: Final = 64 * 1024
"""The longest ``INFO`` (with a big cluster's ``connect_urls``) or message line accepted."""
DEFAULT_MAX_PAYLOAD: Final = 1024 * 1024
"""What the server accepts when its ``INFO`` does not say (the NATS default)."""
MAX_PAYLOAD_CEILING: Final = 64 * 1024 * 1024
"""The largest ``max_payload`` a server may announce (nats-server refuses to start with
more): the most one received message may make the parser hold."""
_HEADER_ALLOWANCE: Final = 64 * 1024
"""Header bytes accepted on a received message on top of ``max_payload``."""
CRLF: Final = b"\r\n"
_ONE_HEADER_START: Final = b"NATS/1.0\r\n"
_HEADERS_END: Final = b"\r\n\r\n"
_NAMES_KEPT: Final = 1024
_TOKEN = re.compile(rb"^[^\s]+$")
_HEADER_KEY = re.compile(r"^[!-9;-~]+$")
"""Printable ASCII without ``:`` (RFC 7230 field names are narrower; NATS accepts these)."""


_KEPT_AFTER: Final = (
    "permissions violation",
    "invalid subject",
    "invalid publish subject",
    "maximum subscriptions exceeded",
)
"""How the ``-ERR`` messages after which nats-server keeps the connection begin."""


class ProtocolError(Exception):
    """The server sent something that is not the NATS protocol (the connection is
    unusable: close it)."""


# --- events ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ServerInfo:
    server_id: str = ""
    version: str = ""
    max_payload: int = DEFAULT_MAX_PAYLOAD
    headers: bool = False
    auth_required: bool = False
    tls_required: bool = False
    tls_available: bool = False
    nonce: str | None = None
    connect_urls: tuple[str, ...] = ()

    @classmethod
    def parse(cls, text: bytes) -> ServerInfo:
        try:
            raw = json.loads(text)
        except ValueError as exc:
            raise ProtocolError(f"INFO is not JSON: {text[:200]!r}") from exc
        if not isinstance(raw, dict):
            raise ProtocolError(f"INFO is not a JSON object: {text[:200]!r}")
        max_payload = raw.get("max_payload", DEFAULT_MAX_PAYLOAD)
        if (
            not isinstance(max_payload, int)
            or isinstance(max_payload, bool)
            or not 0 < max_payload <= MAX_PAYLOAD_CEILING
        ):
            raise ProtocolError(f"INFO has an invalid max_payload: {max_payload!r}")
        urls = raw.get("connect_urls") or ()
        nonce = raw.get("nonce")
        return cls(
            server_id=str(raw.get("server_id", "")),
            version=str(raw.get("version", "")),
            max_payload=max_payload,
            headers=raw.get("headers") is True,
            auth_required=raw.get("auth_required") is True,
            tls_required=raw.get("tls_required") is True,
            tls_available=raw.get("tls_available") is True,
            nonce=nonce if isinstance(nonce, str) else None,
            connect_urls=tuple(str(url) for url in urls) if isinstance(urls, list) else (),
        )


@dataclass(frozen=True, slots=True)
class ServerError:
    """``-ERR '<message>'``."""

    message: str

    @property
    def closes_connection(self) -> bool:
        """Whether the server closes the connection after it: it does for all but a
        permissions violation, an invalid subject and an account's subscription limit
        (after which the connection is kept, so the client keeps it too: redialling
        would only meet the same refusal)."""
        return not self.message.lower().startswith(_KEPT_AFTER)

    @property
    def is_authorization(self) -> bool:
        lowered = self.message.lower()
        return "authorization" in lowered or "authentication" in lowered


class _Signal:
    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


PING: Final = _Signal("PING")
PONG: Final = _Signal("PONG")
OK: Final = _Signal("+OK")


class Msg(msgspec.Struct, gc=False):
    """A message delivered to a subscription (``MSG`` or ``HMSG``; a C-level struct:
    one is built per message)."""

    subject: str
    sid: int
    reply: str | None
    data: bytes
    headers: dict[str, str] | None = None
    status: str | None = None
    """The status of an ``HMSG`` whose header line carries one (``503``: no
    responders), else None."""


Event = Msg | ServerInfo | ServerError | _Signal


# --- the parser -------------------------------------------------------------------------


_Pending = tuple[str, int, str | None, int, int]
"""A message's control line: (subject, sid, reply, header bytes, total bytes)."""


class Parser:
    """Bytes from the server in (split anywhere), events out (module docstring)."""

    def __init__(self, max_payload: int = DEFAULT_MAX_PAYLOAD) -> None:
        self.max_payload = max_payload
        """The largest payload accepted (the connection sets the server's on INFO)."""
        self._buffer = bytearray()
        self._names: dict[bytes, str] = {}
        """Subjects seen, decoded (a node receives on a handful)."""
        self._message: _Pending | None = None
        """The control line of a message whose payload has not all arrived."""

    @property
    def buffered(self) -> int:
        """Bytes received and not yet parsed into an event."""
        return len(self._buffer)

    def feed(self, data: bytes) -> list[Event]:
        buffer = self._buffer
        if not buffer and self._message is None and data[:5] == b"HMSG ":
            one = self._one_message(data)
            if one is not None:
                return [one]
        if buffer:
            buffer += data
            if self._message is not None and len(buffer) < self._message[4] + 2:
                return []  # a long payload still arriving: nothing to parse yet
            data = bytes(buffer)
            buffer.clear()
        events: list[Event] = []
        pos = self._parse(data, events)
        if pos < len(data):
            buffer += data[pos:] if pos else data
        return events

    def _parse(self, data: bytes, events: list[Event]) -> int:
        """Append the events of ``data`` whole; where the unparsed rest starts."""
        end = len(data)
        pos = 0
        message = self._message
        while pos < end:
            if message is None:
                eol = data.find(CRLF, pos)
                if eol < 0:
                    if end - pos > MAX_CONTROL_LINE:
                        raise ProtocolError("a control line longer than the limit")
                    break
                line = data[pos:eol]
                pos = eol + 2
                head = line[:4]
                if head != b"MSG " and head != b"HMSG":
                    event = self._other(line)
                    if event is not None:
                        events.append(event)
                    continue
                message = self._control_line(line)
            stop = pos + message[4]
            if stop + 2 > end:
                break
            events.append(_message(data, pos, stop, message))
            pos = stop + 2
            message = None
        self._message = message
        return pos

    def _other(self, line: bytes) -> Event | None:
        """The event of a control line that is not a message (None for an empty line)."""
        head = line[:4]
        if head == b"PING":
            return PING
        if head == b"PONG":
            return PONG
        if head == b"+OK":
            return OK
        if head == b"INFO":
            info = ServerInfo.parse(line[5:])
            self.max_payload = info.max_payload
            return info
        if head == b"-ERR":
            return ServerError(_error_text(line[4:]))
        if not line:
            return None
        raise ProtocolError(f"unknown protocol line {line[:80]!r}")

    def _one_message(self, data: bytes) -> Msg | None:
        """The common read, exactly one whole ``HMSG`` without a reply subject, parsed
        with less work than the general loop (a node's latency is this code run on a
        cold cache once per frame); None for anything else, which the loop then parses
        (and refuses if malformed)."""
        eol = data.find(CRLF)
        parts = data[5:eol].split(b" ")
        if eol < 0 or len(parts) != 4:
            return None
        raw_subject, raw_sid, raw_header_size, raw_total = parts
        if not (raw_sid.isdigit() and raw_header_size.isdigit() and raw_total.isdigit()):
            return None
        header_size = int(raw_header_size)
        total = int(raw_total)
        start = eol + 2
        stop = start + total
        if (
            stop + 2 != len(data)
            or header_size > total
            or total - header_size > self.max_payload
            or header_size > _HEADER_ALLOWANCE
            or data[stop:] != CRLF
        ):
            return None
        subject = self._names.get(raw_subject)
        if subject is None:
            return None  # the loop decodes and remembers it
        headers, status = _parse_headers(data[start : start + header_size])
        return Msg(subject, int(raw_sid), None, data[start + header_size : stop], headers, status)

    def _control_line(self, line: bytes) -> _Pending:
        """``MSG <subject> <sid> [reply] <size>`` or ``HMSG <subject> <sid> [reply]
        <header size> <total size>``."""
        parts = line.split()
        has_headers = parts[0] == b"HMSG"
        count = len(parts) - (5 if has_headers else 4)
        if count not in (0, 1) or parts[0] not in (b"MSG", b"HMSG"):
            raise ProtocolError(f"malformed message line {line[:200]!r}")
        try:
            sid = int(parts[2])
            total = int(parts[-1])
            header_size = int(parts[-2]) if has_headers else 0
        except ValueError:
            raise ProtocolError(f"malformed message line {line[:200]!r}") from None
        if not 0 <= header_size <= total or sid < 0:
            raise ProtocolError(f"malformed message line {line[:200]!r}")
        if total - header_size > self.max_payload or header_size > _HEADER_ALLOWANCE:
            raise ProtocolError(f"a message of {total} bytes is above the server's max_payload")
        try:
            reply = parts[3].decode() if count else None
            names = self._names
            subject = names.get(parts[1])
            if subject is None:
                if len(names) >= _NAMES_KEPT:
                    names.clear()
                subject = names[parts[1]] = parts[1].decode()
        except UnicodeDecodeError:
            raise ProtocolError(f"a message subject that is not UTF-8: {line[:200]!r}") from None
        return subject, sid, reply, header_size, total


def _message(data: bytes, pos: int, stop: int, message: _Pending) -> Msg:
    """The message whose control line was ``message`` and whose header block and
    payload are ``data[pos:stop]`` (followed by a CRLF, checked here)."""
    subject, sid, reply, header_size, _ = message
    if data[stop : stop + 2] != CRLF:
        raise ProtocolError(f"a message on {subject} does not end with CRLF")
    if header_size:
        headers, status = _parse_headers(data[pos : pos + header_size])
        return Msg(subject, sid, reply, data[pos + header_size : stop], headers, status)
    return Msg(subject, sid, reply, data[pos:stop])


def _error_text(rest: bytes) -> str:
    text = rest.strip().decode(errors="replace")
    if len(text) >= 2 and text[0] == text[-1] == "'":
        text = text[1:-1]
    return text


def _parse_headers(block: bytes) -> tuple[dict[str, str], str | None]:
    """``NATS/1.0[ status[ description]]\\r\\nKey: Value\\r\\n...\\r\\n\\r\\n``."""
    if block.startswith(_ONE_HEADER_START) and block.endswith(_HEADERS_END):
        only = block[10:-4]  # the common case, one header line and no status
        if CRLF not in only:
            raw_key, colon, raw_value = only.partition(b":")
            if colon and raw_key:
                key = raw_key.strip().decode(errors="replace")
                return {key: raw_value.strip().decode(errors="replace")}, None
    lines = block.decode(errors="replace").split("\r\n")
    first = lines[0]
    if not first.startswith("NATS/1.0"):
        raise ProtocolError(f"a message header without NATS/1.0: {first[:80]!r}")
    status = first[8:].strip().split(" ", 1)[0] or None
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, sep, content = line.partition(":")
        if not sep:
            raise ProtocolError(f"a malformed message header line: {line[:80]!r}")
        headers[name.strip()] = content.strip()
    return headers, status


# --- what the client writes -------------------------------------------------------------


@dataclass(frozen=True)
class ConnectOptions:
    name: str = ""
    user: str | None = None
    password: str | None = field(default=None, repr=False)
    token: str | None = field(default=None, repr=False)
    jwt: str | None = field(default=None, repr=False)
    signature: str | None = field(default=None, repr=False)
    """The server's nonce signed with the user's nkey (with ``jwt``), base64url."""
    nkey: str | None = None
    echo: bool = True
    tls_required: bool = False


def connect_command(options: ConnectOptions, version: str) -> bytes:
    body: dict[str, object] = {
        "verbose": False,
        "pedantic": False,
        "tls_required": options.tls_required,
        "name": options.name,
        "lang": "python-exec-server",
        "version": version,
        "protocol": 1,
        "headers": True,
        "no_responders": True,
        "echo": options.echo,
    }
    if options.user is not None:
        body["user"] = options.user
        body["pass"] = options.password or ""
    if options.token is not None:
        body["auth_token"] = options.token
    if options.jwt is not None:
        body["jwt"] = options.jwt
    if options.nkey is not None:
        body["nkey"] = options.nkey
    if options.signature is not None:
        body["sig"] = options.signature
    return b"CONNECT " + json.dumps(body, separators=(",", ":")).encode() + CRLF


@functools.lru_cache(maxsize=1024)
def _check_subject(subject: str, what: str = "subject") -> bytes:
    """The subject encoded, or ValueError (cached: a node publishes to a few subjects)."""
    encoded = subject.encode()
    if not _TOKEN.match(encoded):
        raise ValueError(f"invalid NATS {what} {subject!r}: empty or with whitespace")
    return encoded


def encode_subject(subject: str) -> bytes:
    """A subject to publish on, encoded, or ValueError (empty or with whitespace)."""
    return _check_subject(subject)


def sub_command(subject: str, sid: int, queue: str | None = None) -> bytes:
    line = b"SUB " + _check_subject(subject)
    if queue is not None:
        line += b" " + _check_subject(queue, "queue group")
    return line + b" %d\r\n" % sid


def unsub_command(sid: int, max_messages: int | None = None) -> bytes:
    if max_messages is None:
        return b"UNSUB %d\r\n" % sid
    return b"UNSUB %d %d\r\n" % (sid, max_messages)


@functools.lru_cache(maxsize=256)
def _check_header_key(key: str) -> str:
    if not _HEADER_KEY.match(key):
        raise ValueError(f"invalid NATS header name {key!r}")
    return key


def encode_headers(headers: Mapping[str, str]) -> bytes:
    text = "NATS/1.0\r\n"
    for key, value in headers.items():
        if "\r" in value or "\n" in value:
            raise ValueError(f"a NATS header value with a line break: {key}")
        text += f"{_check_header_key(key)}: {value}\r\n"
    return (text + "\r\n").encode()


def header_block_start(key: str, value_start: str) -> bytes:
    """The start of a header block of one header, ``NATS/1.0\\r\\n<key>: <value_start>``,
    for a sender that ends it per message with the rest of the value (digits, say) and
    ``\\r\\n\\r\\n`` (see :meth:`~exec_server.rendezvous.cluster.nats_client.
    CoreNatsClient.publish_with_header`); ValueError as :func:`encode_headers`."""
    if "\r" in value_start or "\n" in value_start:
        raise ValueError(f"a NATS header value with a line break: {key}")
    return f"NATS/1.0\r\n{_check_header_key(key)}: {value_start}".encode()


def publish_parts(
    subject: str, payload: bytes, headers: Mapping[str, str] | None = None
) -> tuple[bytes, bytes]:
    """``PUB``/``HPUB`` as (control line and header block, payload); the payload is
    followed by a CRLF on the wire. Two parts so a large payload is written without a
    copy."""
    encoded = _check_subject(subject)
    if headers:
        block = encode_headers(headers)
        size = len(block)
        return b"HPUB %s %d %d\r\n%s" % (encoded, size, size + len(payload), block), payload
    return b"PUB %s %d\r\n" % (encoded, len(payload)), payload
