"""The checked-in relay schema bindings: wire bytes match Codex, regeneration is stable."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

from exec_server.relay.proto import relay_v1_pb2 as pb

REPO_ROOT = Path(__file__).resolve().parents[2]
UUID = "0f8fad5b-d9cb-469f-a165-70867728950e"


def _load_gen_script() -> ModuleType:
    path = REPO_ROOT / "scripts" / "gen_proto.py"
    spec = importlib.util.spec_from_file_location("gen_proto", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("gen_proto", module)
    spec.loader.exec_module(module)
    return module


def test_descriptor_matches_codex_schema() -> None:
    frame = pb.RelayMessageFrame.DESCRIPTOR
    assert frame.full_name == "codex.exec_server.relay.v1.RelayMessageFrame"
    numbers = {f.name: f.number for f in frame.fields}
    assert numbers == {
        "version": 1,
        "stream_id": 2,
        "ack": 3,
        "ack_bits": 4,
        "data": 5,
        "ack_frame": 6,
        "resume": 7,
        "reset": 8,
        "heartbeat": 9,
        "handshake": 10,
        "traceparent": 11,
        "tracestate": 12,
    }
    assert [f.name for f in frame.oneofs_by_name["body"].fields] == [
        "data",
        "ack_frame",
        "resume",
        "reset",
        "heartbeat",
        "handshake",
    ]
    data = {f.name: f.number for f in pb.RelayData.DESCRIPTOR.fields}
    assert data == {"seq": 1, "segment_index": 2, "segment_count": 3, "payload": 4}
    assert pb.RelayResume.DESCRIPTOR.fields_by_name["next_seq"].number == 1
    assert pb.RelayReset.DESCRIPTOR.fields_by_name["reason"].number == 1
    assert pb.RelayHandshake.DESCRIPTOR.fields_by_name["payload"].number == 1


def test_resume_claim_bytes_match_codex_observed() -> None:
    # codex-observed section 6: 08 01 | 12 24 <36-byte uuid> | 3a 00
    frame = pb.RelayMessageFrame(version=1, stream_id=UUID, resume=pb.RelayResume(next_seq=0))
    assert frame.SerializeToString() == b"\x08\x01\x12\x24" + UUID.encode() + b"\x3a\x00"


def test_data_frame_bytes_match_codex_observed() -> None:
    payload = b'{"id":1,"method":"initialize"}'
    head = b"\x08\x01\x12\x24" + UUID.encode()
    seq0 = pb.RelayMessageFrame(
        version=1,
        stream_id=UUID,
        data=pb.RelayData(seq=0, segment_index=0, segment_count=1, payload=payload),
    )
    body0 = b"\x18\x01\x22" + bytes([len(payload)]) + payload
    assert seq0.SerializeToString() == head + b"\x2a" + bytes([len(body0)]) + body0
    seq1 = pb.RelayMessageFrame(
        version=1,
        stream_id=UUID,
        data=pb.RelayData(seq=1, segment_index=0, segment_count=1, payload=payload),
    )
    body1 = b"\x08\x01" + body0
    assert seq1.SerializeToString() == head + b"\x2a" + bytes([len(body1)]) + body1


def test_trace_fields_follow_the_body() -> None:
    frame = pb.RelayMessageFrame(
        version=1, stream_id="s", heartbeat=pb.RelayHeartbeat(), traceparent="t", tracestate="u"
    )
    assert frame.SerializeToString() == b"\x08\x01\x12\x01s\x4a\x00\x5a\x01t\x62\x01u"


def test_regenerating_yields_identical_files(tmp_path: Path) -> None:
    if importlib.util.find_spec("grpc_tools") is None:
        pytest.skip("grpcio-tools (grpc_tools) is not installed: cannot run protoc")
    gen = _load_gen_script()
    written = gen.generate(tmp_path)
    assert sorted(p.name for p in written) == sorted(gen.OUTPUTS)
    for path in written:
        checked_in = gen.PROTO_DIR / path.name
        assert path.read_bytes() == checked_in.read_bytes(), (
            f"{path.name} is stale; run python scripts/gen_proto.py"
        )
