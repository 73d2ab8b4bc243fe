"""The JSON-RPC lite envelope: classification, encoding and params decoding."""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from exec_server.protocol import messages as m
from exec_server.protocol.errors import InvalidParams, InvalidRequest, MethodNotFound
from exec_server.protocol.jsonrpc import (
    ErrorResponse,
    MalformedMessage,
    Notification,
    Request,
    Response,
    decode_params,
    decode_unit_params,
    encode_error,
    encode_notification,
    encode_request,
    encode_response,
    parse_message,
)


def test_request_with_int_and_string_ids() -> None:
    req = parse_message(b'{"id":7,"method":"fs/readFile","params":{"path":"/x"}}')
    assert isinstance(req, Request) and req.id == 7 and req.method == "fs/readFile"
    assert bytes(req.params) == b'{"path":"/x"}'
    req = parse_message('{"id":"abc","method":"x"}')
    assert isinstance(req, Request) and req.id == "abc"
    assert bytes(req.params) == b"null"


def test_jsonrpc_member_is_accepted_and_ignored() -> None:
    req = parse_message(b'{"jsonrpc":"2.0","id":1,"method":"initialize","params":{}}')
    assert isinstance(req, Request) and req.method == "initialize"


def test_notification_and_null_id_notification() -> None:
    note = parse_message(b'{"method":"initialized","params":{}}')
    assert isinstance(note, Notification) and note.method == "initialized"
    # serde's untagged enum falls through to Notification when id is null.
    note = parse_message(b'{"id":null,"method":"x"}')
    assert isinstance(note, Notification)


def test_response_and_error() -> None:
    resp = parse_message(b'{"id":3,"result":{"a":1}}')
    assert isinstance(resp, Response) and resp.id == 3
    assert msgspec.json.decode(resp.result) == {"a": 1}
    err = parse_message(b'{"error":{"code":-32600,"message":"bad"},"id":4}')
    assert isinstance(err, ErrorResponse)
    assert err.error.code == -32600 and err.error.message == "bad"


@pytest.mark.parametrize(
    "data",
    [
        b"not json",
        b"[]",
        b'[{"id":1,"method":"x"}]',
        b"42",
        b"{}",
        b'{"id":1}',
        b'{"id":1.5,"method":"x"}',
        b'{"id":1,"method":5}',
        b'{"id":{"a":1},"method":"x"}',
        b'{"id":1,"result":1',
        b"",
        "\u00e9".encode("latin-1"),
    ],
)
def test_malformed_messages(data: bytes) -> None:
    with pytest.raises(MalformedMessage):
        parse_message(data)


def test_batch_is_named_in_the_error() -> None:
    with pytest.raises(MalformedMessage, match="batch"):
        parse_message(b'[{"id":1,"method":"x"}]')


def test_encoders_never_emit_jsonrpc_member() -> None:
    for data in (
        encode_request(1, "initialize", {"clientName": "x"}),
        encode_notification("initialized", {}),
        encode_response(1, m.InitializeResult(session_id="s")),
        encode_error(1, InvalidRequest("boom")),
    ):
        assert b"jsonrpc" not in data
        assert b" " not in data  # compact
    assert encode_response(1, m.InitializeResult(session_id="s")) == (
        b'{"id":1,"result":{"sessionId":"s"}}'
    )
    assert encode_error(2, MethodNotFound("a/b")) == (
        b'{"error":{"code":-32601,"message":"exec-server stub does not implement `a/b` yet"},'
        b'"id":2}'
    )
    assert encode_request(1, "x") == b'{"id":1,"method":"x"}'


def test_decode_params_missing_field_is_serde_like() -> None:
    raw = msgspec.Raw(b'{"processId":"p","argv":["true"],"cwd":"/","tty":false}')
    with pytest.raises(InvalidParams, match=r"^missing field `env`$"):
        decode_params(raw, m.ProcessStartParams)


def test_decode_params_wrong_type_and_null() -> None:
    with pytest.raises(InvalidParams):
        decode_params(msgspec.Raw(b'{"path":5}'), m.FsGetMetadataParams)
    assert decode_params(msgspec.Raw(b"null"), m.Empty) == m.Empty()


@pytest.mark.parametrize(
    ("params_type", "rust_name"),
    [
        # 0.133's names, as the 0.133 binary answers (observed_0133.md); methods
        # that 0.133 lacks use 0.171's.
        (m.InitializeParams, "InitializeParams"),
        (m.ProcessStartParams, "ExecParams"),
        (m.ProcessReadParams, "ReadParams"),
        (m.ProcessWriteParams, "WriteParams"),
        (m.ProcessTerminateParams, "TerminateParams"),
        (m.FsGetMetadataParams, "FsGetMetadataParams"),
        (m.HttpRequestParams, "HttpRequestParams"),
        (m.ProcessSignalParams, "SignalParams"),
        (m.FsOpenParams, "WireFsOpenParams"),
        (m.FsWatchMissingParams, "FsWatchMissingParams"),
    ],
)
def test_null_or_absent_params_name_the_rust_struct(params_type: type, rust_name: str) -> None:
    expected = f"^invalid type: null, expected struct {rust_name}$"
    for raw in (b"null", b""):
        with pytest.raises(InvalidParams, match=expected):
            decode_params(msgspec.Raw(raw), params_type)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"[]", "invalid type: sequence, expected unit"),
        (b"5", "invalid type: number, expected unit"),
        (b'"x"', "invalid type: string, expected unit"),
    ],
)
def test_unit_params(raw: bytes, message: str) -> None:
    for ok in (b"", b"null", b"{}", b'{"extra":1}'):
        decode_unit_params(msgspec.Raw(ok))
    with pytest.raises(InvalidParams, match=f"^{message}$"):
        decode_unit_params(msgspec.Raw(raw))


def test_decode_params_ignores_unknown_fields_and_decodes_base64() -> None:
    raw = msgspec.Raw(b'{"processId":"p","chunk":"aGk=","extra":[1,2]}')
    params = decode_params(raw, m.ProcessWriteParams)
    assert params.chunk == b"hi"


def test_read_result_extension_is_omitted_unless_set() -> None:
    result = m.ProcessReadResult(chunks=[], next_seq=1, exited=False, exit_code=None, closed=False)
    assert msgspec.json.encode(result) == (
        b'{"chunks":[],"nextSeq":1,"exited":false,"exitCode":null,"closed":false,"failure":null}'
    )
    result.first_retained_seq = 5
    assert b'"firstRetainedSeq":5' in msgspec.json.encode(result)


@given(
    st.text(max_size=40),
    st.integers(min_value=0, max_value=2**64 - 1),
    st.sampled_from(["stdout", "stderr", "pty"]),
    st.binary(max_size=3000),
    st.sampled_from(["process/output", 'we"ird\\method\u2028']),
)
def test_output_notification_fast_path_is_byte_identical_to_msgspec(
    process_id: str, seq: int, stream: m.OutputStream, chunk: bytes, method: str
) -> None:
    note = m.ProcessOutputNotification(process_id=process_id, seq=seq, stream=stream, chunk=chunk)
    fast = encode_notification(method, note)
    assert fast == msgspec.json.encode({"method": method, "params": note})
    decoded = msgspec.json.decode(fast)
    assert decoded["params"]["processId"] == process_id


def test_file_bytes_answers_are_encoded_by_hand_as_msgspec_would() -> None:
    encoder = msgspec.json.Encoder()
    results = [
        m.FsReadBlockResult(chunk=bytes(range(256)) * 3, eof=True),
        m.FsReadBlockResult(chunk=b"", eof=False),
        m.FsReadFileResult(data_base64=b"\x00\xffabc"),
    ]
    for result in results:
        for request_id in (1, 'x"y', -1):
            expected = encoder.encode({"id": request_id, "result": result})
            assert encode_response(request_id, result) == expected
