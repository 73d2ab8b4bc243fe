"""The fast path for ``process/output`` agrees with the ordinary decoder, or steps aside."""

from __future__ import annotations

import base64
import json

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from exec_server.client.events import decode_output
from exec_server.protocol.jsonrpc import encode_notification
from exec_server.protocol.messages import ProcessOutputNotification


@given(
    process_id=st.text(min_size=1, max_size=40),
    seq=st.integers(min_value=0, max_value=2**53),
    stream=st.sampled_from(["stdout", "stderr", "pty"]),
    chunk=st.binary(max_size=3000),
)
def test_what_our_server_sends_is_decoded_exactly(
    process_id: str, seq: int, stream: str, chunk: bytes
) -> None:
    note = ProcessOutputNotification(process_id=process_id, seq=seq, stream=stream, chunk=chunk)  # type: ignore[arg-type]
    raw = encode_notification("process/output", note)
    assert decode_output(raw) == (process_id, seq, stream, chunk)


def _message(params: str, tail: str = "") -> bytes:
    return ('{"method":"process/output","params":{' + params + "}" + tail + "}").encode()


GOOD = '"processId":"p","seq":1,"stream":"stdout","chunk":"aGk="'


@pytest.mark.parametrize(
    "raw",
    [
        _message(GOOD, ',"id":7'),  # a request, not a notification
        _message('"processId":"p","seq":1,"stream":"stdout","chunk":"aG\\u006b="'),  # escaped
        _message('"processId":"p","x":{"chunk":"QUFB"},"seq":1,"stream":"stdout","chunk":"aGk="'),
        _message('"processId":"p","seq":1,"stream":"stdout","chunk":"not base64!"'),
        _message('"processId":"p","seq":"1","stream":"stdout","chunk":"aGk="'),  # bad type
        _message('"processId":"p","seq":1,"stream":"tty","chunk":"aGk="'),  # bad stream
        b'{"method": "process/output", "params": {"processId": "p", "seq": 1, "chunk": "aGk="}}',
        b'{"method":"process/exited","params":{"processId":"p","seq":1,"exitCode":0}}',
        b'{"id":1,"result":{"chunks":[{"seq":1,"stream":"stdout","chunk":"aGk="}]}}',
        _message(GOOD)[:-3],  # truncated
    ],
)
def test_anything_unusual_is_left_to_the_ordinary_decoder(raw: bytes) -> None:
    assert decode_output(raw) is None


def test_a_chunk_key_elsewhere_does_not_confuse_it() -> None:
    raw = _message(GOOD, ',"extra":{"chunk":"QUFB"}')
    assert decode_output(raw) == ("p", 1, "stdout", b"hi")


def test_codex_field_order_is_the_fast_shape() -> None:
    # serde writes the struct fields in declaration order, as our encoder does.
    params = {"processId": "p-1", "seq": 9, "stream": "pty", "chunk": base64.b64encode(b"\0\xff")}
    raw = json.dumps(
        {"method": "process/output", "params": {**params, "chunk": params["chunk"].decode()}},  # type: ignore[union-attr]
        separators=(",", ":"),
    ).encode()
    assert decode_output(raw) == ("p-1", 9, "pty", b"\0\xff")
    assert msgspec.json.decode(raw)["params"]["seq"] == 9
