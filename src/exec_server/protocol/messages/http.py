"""``http/request`` and its body-delta notifications."""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

import msgspec

from .base import Message


class HttpHeader(Message):
    """One header line; lists of these keep order and repeated names."""

    name: str
    value: str


class HttpRequestParams(Message):
    rust_name: ClassVar[str] = "HttpRequestParams"
    method: str
    #: Absolute ``http://`` or ``https://`` URL.
    url: str
    #: Names the ``http/request/bodyDelta`` stream; required even when buffered.
    request_id: str
    headers: list[HttpHeader] = msgspec.field(default_factory=list)
    body_base64: bytes | None = None
    #: Whole-request deadline; omitted or null means no timeout.
    timeout_ms: Annotated[int, msgspec.Meta(ge=0)] | None = None
    #: Answer once the headers arrive and stream the body as notifications.
    stream_response: bool = False
    #: Codex 0.171: follow redirects (at most 10) or answer the 3xx itself.
    redirect_policy: Literal["follow", "stop"] = "follow"


class HttpRequestResult(Message):
    status: int
    headers: list[HttpHeader]
    #: Empty when the body is streamed.
    body_base64: bytes


class HttpRequestBodyDeltaNotification(Message):
    request_id: str
    #: 1, 2, 3... per stream.
    seq: int
    delta_base64: bytes
    #: Set on the last notification of a stream only.
    done: bool
    #: Set (with ``done``) when the body could not be read to the end.
    error: str | None = None
