"""Bad frames on the environment socket, mid-session, must not disturb live streams.

Two live streams share the environment's one relay socket: our reliable harness
(``ExecServerClient.connect`` on a ``role=harness`` URL) and a simulated Codex harness
(legacy). While both keep issuing requests, the rendezvous injects every kind of bad
input into the environment socket: undecodable bytes, wrong versions, missing, padded and
overlong stream ids, bad segment fields, empty payloads and reasons, oversize frames,
text frames, control frames for unknown streams, and valid frames that are wrong for the
stream they name (a spoofed unflagged data frame on the reliable stream, a flagged one on
the legacy stream). Many carry the live streams' ids and a real request that would leave
a canary file behind if it were ever executed.

Each one must be dropped and counted under its reason, nothing may reach a processor,
and the live streams must not notice: their requests keep succeeding, in order, with no
reconnect, no recovery and no reset.
"""

from __future__ import annotations

import asyncio
import base64
import random
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
from codex_harness_sim import SimulatedCodexHarness
from forwarding_rendezvous import ForwardingRendezvous, serve_remote_environment

from exec_server.client import ClientConfig, ExecServerClient
from exec_server.relay.errors import InvalidFrameReason as R
from exec_server.relay.events import PeerMode
from exec_server.relay.frame_codec import (
    DEFAULT_MAX_FRAME_BYTES,
    RELIABLE_CAPABILITY_BIT,
    HandshakeBody,
    RelayFrame,
    ack_frame,
    data_frame,
    encode_frame,
    heartbeat_frame,
    reset_frame,
    resume_frame,
)
from exec_server.relay.proto.relay_v1_pb2 import (
    RelayData,
    RelayHandshake,
    RelayMessageFrame,
    RelayReset,
)
from exec_server.relay.reliable_stream import StreamDropReason
from exec_server.relay.stream_mux import MuxDropReason
from exec_server.transport.harness_relay import HarnessRelayChannel

SEED = 7
INJECTION_GAP_S = 0.003


def _raw(stream_id: str, **fields: Any) -> bytes:
    """A frame with arbitrary (possibly invalid) fields; the builders would refuse some."""
    frame = RelayMessageFrame(stream_id=stream_id, **fields)
    return frame.SerializeToString()


class BadFrames:
    """The injected messages and the drop counts each must produce."""

    def __init__(self, live_legacy: str, live_reliable: str, canary_dir: Path) -> None:
        self.items: list[bytes | str] = []
        self.mux: Counter[str] = Counter()
        self.legacy_stream: Counter[str] = Counter()
        self.reliable_stream: Counter[str] = Counter()
        self.text = 0
        self._canaries = 0
        self._canary_dir = canary_dir
        rng = random.Random(SEED)
        live = (live_legacy, live_reliable)

        # -- rejected by validation, before any routing
        for blob in (b"\xff\xff\xff\xff", b"\x0a", b"\x08\x01\x12\x05ab", rng.randbytes(64)):
            self._add(blob, self.mux, R.UNDECODABLE)
        invalid_utf8_id = b"\x08\x01\x12\x02\xff\xfe\x4a\x00"  # heartbeat, stream id not UTF-8
        self._add(invalid_utf8_id, self.mux, R.UNDECODABLE)
        for sid in live:
            for version in (0, 2):
                self._add(_raw(sid, version=version, data=self._request()), self.mux, R.BAD_VERSION)
            self._add(_raw(sid, version=1), self.mux, R.MISSING_BODY)
            padded = _raw(f" {sid}", version=1, data=self._request())
            self._add(padded, self.mux, R.NON_CANONICAL_STREAM_ID)
            for index, count in ((0, 0), (1, 1), (5, 2), (0, 5000)):
                bad = self._request(segment_index=index, segment_count=count)
                self._add(_raw(sid, version=1, data=bad), self.mux, R.BAD_SEGMENT)
            empty = RelayData(seq=3, segment_count=1, payload=b"")
            self._add(_raw(sid, version=1, data=empty), self.mux, R.EMPTY_PAYLOAD)
            # An empty or overlong reason would reset the live stream if it were accepted.
            empty_reset = _raw(sid, version=1, reset=RelayReset(reason=""))
            self._add(empty_reset, self.mux, R.EMPTY_RESET_REASON)
            long_reset = RelayReset(reason="x" * 300)
            self._add(_raw(sid, version=1, reset=long_reset), self.mux, R.RESET_REASON_TOO_LONG)
            handshake = RelayHandshake(payload=b"")
            self._add(_raw(sid, version=1, handshake=handshake), self.mux, R.EMPTY_HANDSHAKE)
            traced = _raw(sid, version=1, data=self._request(), traceparent="0" * 600)
            self._add(traced, self.mux, R.TRACE_CONTEXT_TOO_LONG)
        for sid in ("", "   "):
            self._add(_raw(sid, version=1, data=self._request()), self.mux, R.MISSING_STREAM_ID)
        long_id = _raw("s" * 300, version=1, data=self._request())
        self._add(long_id, self.mux, R.STREAM_ID_TOO_LONG)
        oversize = b"\x00" * (DEFAULT_MAX_FRAME_BYTES + 1)
        self._add(oversize, self.mux, R.OVERSIZE)

        # -- text frames (a JSON-RPC request in text, as on a local websocket)
        for _ in range(3):
            self.items.append(msgspec.json.encode(self._request_json()).decode())
            self.text += 1

        # -- well-formed control frames for streams that do not exist
        for i, frame in enumerate(
            (
                ack_frame("ghost-1", ack=0, ack_bits=0),
                ack_frame("ghost-2", ack=3, ack_bits=RELIABLE_CAPABILITY_BIT),
                heartbeat_frame("ghost-3"),
                reset_frame("ghost-4", "bye"),
                resume_frame("ghost-5", 0),  # Codex's unflagged stream claim
                RelayFrame(stream_id="ghost-6", body=HandshakeBody(b"x")),
            )
        ):
            assert frame.stream_id == f"ghost-{i + 1}"
            self._add(encode_frame(frame), self.mux, MuxDropReason.UNKNOWN_STREAM_CONTROL)

        # -- valid frames that are wrong for the live stream they name
        flagged = data_frame(
            live_legacy, 40, self._payload(), ack_bits=RELIABLE_CAPABILITY_BIT
        )  # a reliable peer's frame on a legacy stream
        self._add(encode_frame(flagged), self.legacy_stream, StreamDropReason.MODE_MISMATCH)
        segmented = data_frame(live_legacy, 41, self._payload(), segment_count=2)
        self._add(encode_frame(segmented), self.legacy_stream, StreamDropReason.LEGACY_SEGMENTED)
        for frame in (heartbeat_frame(live_legacy), ack_frame(live_legacy, ack=1, ack_bits=0)):
            self._add(encode_frame(frame), self.legacy_stream, StreamDropReason.LEGACY_CONTROL)
        spoofed = data_frame(live_reliable, 1, self._payload())  # unflagged: a legacy frame
        self._add(encode_frame(spoofed), self.reliable_stream, StreamDropReason.MODE_MISMATCH)
        stray_ack = ack_frame(live_reliable, ack=0, ack_bits=0)
        self._add(encode_frame(stray_ack), self.reliable_stream, StreamDropReason.MODE_MISMATCH)

        rng.shuffle(self.items)
        # The 64 MiB frame goes in the middle of the run, not first or last.
        self.items.remove(oversize)
        self.items.insert(len(self.items) // 2, oversize)

    def _add(self, item: bytes, counter: Counter[str], reason: str) -> None:
        self.items.append(item)
        counter[reason] += 1

    def _request_json(self) -> dict[str, object]:
        """A request that would leave a canary file behind if it ever ran."""
        self._canaries += 1
        path = self._canary_dir / f"canary-{self._canaries}"
        params = {"path": str(path), "dataBase64": base64.b64encode(b"leak").decode()}
        return {"id": 9000 + self._canaries, "method": "fs/writeFile", "params": params}

    def _payload(self) -> bytes:
        return msgspec.json.encode(self._request_json())

    def _request(self, segment_index: int = 0, segment_count: int = 1) -> RelayData:
        return RelayData(
            seq=7,
            segment_index=segment_index,
            segment_count=segment_count,
            payload=self._payload(),
        )


async def test_bad_frames_are_dropped_and_counted_while_live_streams_carry_on(
    tmp_path: Path,
) -> None:
    canaries = tmp_path / "canaries"
    canaries.mkdir()
    async with (
        ForwardingRendezvous() as rendezvous,
        serve_remote_environment(rendezvous) as remote,
        aiohttp.ClientSession() as http,
    ):
        ws = await http.ws_connect(rendezvous.harness_url, compress=0, max_msg_size=0)
        codex = SimulatedCodexHarness(ws)
        await codex.open()
        await codex.initialize()
        ours = await ExecServerClient.connect(
            rendezvous.harness_url, config=ClientConfig(client_name="ours")
        )
        try:
            relay = ours._channel
            assert isinstance(relay, HarnessRelayChannel)
            bad = BadFrames(codex.stream_id, relay.stream_id, canaries)
            warmed_up = asyncio.Event()
            injected = asyncio.Event()
            rounds = Counter[str]()
            during = Counter[str]()  # rounds completed while bad frames were going in

            async def keep_going(name: str, one_round: Callable[[int], Awaitable[None]]) -> None:
                """Requests in a loop until the injection is over, then a few more."""
                i = 0
                after = -1
                while after < 0 or i < after:
                    await one_round(i)
                    i += 1
                    rounds[name] += 1
                    if min(rounds["ours"], rounds["codex"]) >= 3:
                        warmed_up.set()
                    if injected.is_set() and after < 0:
                        after = i + 10

            async def our_round(i: int) -> None:
                path = str(tmp_path / f"ours-{i}")
                data = random.Random(i).randbytes(2000 + i)
                await ours.fs.write_file(path, data)
                assert await ours.fs.read_file(path) == data
                meta = await ours.fs.get_metadata(path)
                assert meta.is_file

            async def codex_round(i: int) -> None:
                path = str(tmp_path / f"codex-{i}")
                data = f"codex {i}".encode()
                params = {"path": path, "dataBase64": base64.b64encode(data).decode()}
                written = await codex.request("fs/writeFile", params)
                assert written.get("result") == {}, written
                read = await codex.request("fs/readFile", {"path": path})
                assert base64.b64decode(read["result"]["dataBase64"]) == data

            async def inject() -> None:
                await warmed_up.wait()
                during.update({name: -count for name, count in rounds.items()})
                for item in bad.items:
                    await rendezvous.inject_to_environment(item)
                    await asyncio.sleep(INJECTION_GAP_S)
                during.update(rounds)
                injected.set()

            async with asyncio.timeout(60), asyncio.TaskGroup() as group:
                group.create_task(keep_going("ours", our_round))
                group.create_task(keep_going("codex", codex_round))
                group.create_task(inject())

            # -- every bad input was dropped and counted under its reason
            mux = remote.connection.mux
            assert dict(mux.dropped) == dict(bad.mux + Counter({"unknown_stream_control": 1}))
            assert remote.connection.text_frames_dropped == bad.text
            streams = mux.streams
            legacy, reliable = streams[codex.stream_id], streams[relay.stream_id]
            assert dict(legacy.stats.dropped) == dict(bad.legacy_stream)
            assert dict(reliable.stats.dropped) == dict(bad.reliable_stream)
            assert not list(canaries.iterdir()), "a bad frame's request was executed"

            # -- and nobody noticed
            assert (legacy.mode, reliable.mode) == (PeerMode.LEGACY, PeerMode.RELIABLE)
            assert not legacy.is_closed and not reliable.is_closed
            assert set(streams) == {codex.stream_id, relay.stream_id}
            assert rendezvous.environment_sockets == 1 and remote.registrations == 1
            assert relay.sockets.reconnects == 0 and ours.recoveries == 0
            assert [r["id"] for r in codex.responses] == list(range(1, codex._next_id + 1))
            assert all("result" in r for r in codex.responses)
            assert during["ours"] > 5 and during["codex"] > 5, during
            print(f"\n{len(bad.items)} bad inputs; rounds {dict(rounds)}, during {dict(during)}")
        finally:
            await ours.close()
            await ws.close()
