"""Socket-level fault injection: harness <-> lossy forwarding rendezvous <-> environment.

Everything runs on loopback in one event loop: real ``ExecServerClient.connect`` harnesses,
our :class:`RemoteEnvironment` (registration, reconnect with backoff), and a test
rendezvous (:mod:`forwarding_rendezvous`) that forwards frames by ``stream_id`` while
dropping 2%, duplicating 1% and reordering 2% of them in both directions, seeded. During
the run it force-disconnects the harness sockets once and the environment socket once.

It runs twice: on the end-to-end encrypted relay (the default: the harnesses connect with
``rendezvous=`` + ``environment_id=``, the handshake itself crosses the faulty links,
every segment is a Noise record, retransmissions resend the same ciphertext), and on the
cleartext reliable relay (a ``?role=harness`` URL, as for an 0.133-era registry).

Asserted end to end: every request is executed once and answered once, file contents and
exit codes are right, a 50 MiB process output arrives byte-exact (SHA-256 computed by the
process itself), and no client needed session-level recovery: the reliable relay alone
hid every fault.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import pytest
from forwarding_rendezvous import (
    REGISTRY_TOKEN,
    FaultPlan,
    ForwardingRendezvous,
    frame_stream_id,
    serve_remote_environment,
)

import exec_server.transport.harness_relay as relay_module
import exec_server.transport.noise_channel as noise_module
from exec_server.client import (
    ClientConfig,
    ClosedEvent,
    ExecServerClient,
    ExitedEvent,
    FailedEvent,
    OutputEvent,
    ServerError,
)
from exec_server.environment.server import ExecServer
from exec_server.relay.events import PeerMode
from exec_server.relay.frame_codec import data_frame, encode_frame, resume_frame
from exec_server.relay.noise.noise_mux import HandshakeOutcome, NoiseStreamMux
from exec_server.transport.channel import MalformedFrame, MessageChannel
from exec_server.transport.harness_relay import HarnessRelayChannel
from exec_server.transport.noise_channel import NoiseHarnessChannel

SEED = 20261124
FAULTS = FaultPlan(loss=0.02, duplicate=0.01, reorder=0.02)
CLIENTS = 4
OPS_PER_CLIENT = 500
WORKERS_PER_CLIENT = 8
BIG_OUTPUT_BYTES = 50 * 1024 * 1024
#: Kick the harness sockets, then the environment socket, at these fractions of the work
#: (of the mixed operations or of the big output, whichever gets there first).
KICK_HARNESS_AT = 1 / 3
KICK_ENVIRONMENT_AT = 2 / 3
RUN_TIMEOUT_S = 100.0


class _Envelope(msgspec.Struct):
    id: int | str | None = None
    method: str | None = None


_decode_envelope = msgspec.json.Decoder(_Envelope).decode


def _envelope(message: bytes | str) -> _Envelope:
    return _decode_envelope(message)


@dataclass
class Ledger:
    """What crossed one channel: request ids sent/received and response ids."""

    requests: Counter[int | str] = field(default_factory=Counter)
    responses: Counter[int | str] = field(default_factory=Counter)
    notifications: Counter[str] = field(default_factory=Counter)


class RecordingChannel:
    """Wraps a MessageChannel and records request/response ids in both directions."""

    def __init__(self, inner: MessageChannel, *, server_side: bool) -> None:
        self.inner = inner
        self.transport_name = inner.transport_name
        self.parse_error_prefix = inner.parse_error_prefix
        self.server_side = server_side
        self.ledger = Ledger()

    def _note(self, message: bytes | str, *, inbound: bool) -> None:
        env = _envelope(message)
        if env.method is not None:
            if env.id is None:
                self.ledger.notifications[env.method] += 1
            elif inbound == self.server_side:
                self.ledger.requests[env.id] += 1
        elif env.id is not None and inbound != self.server_side:
            self.ledger.responses[env.id] += 1

    async def receive(self) -> bytes | str | MalformedFrame:
        message = await self.inner.receive()
        if not isinstance(message, MalformedFrame):
            self._note(message, inbound=True)
        return message

    async def send(self, message: bytes) -> None:
        self._note(message, inbound=False)
        await self.inner.send(message)

    async def close(self, reason: str | None = None) -> None:
        await self.inner.close(reason)


class RecordingExecServer(ExecServer):
    """Records every relay stream's traffic as the connection processor sees it."""

    def __init__(self) -> None:
        super().__init__()
        self.channels: list[RecordingChannel] = []

    async def serve_channel(self, channel: MessageChannel) -> None:
        recording = RecordingChannel(channel, server_side=True)
        self.channels.append(recording)
        await super().serve_channel(recording)


@pytest.fixture
def harness_channels(monkeypatch: pytest.MonkeyPatch) -> list[RecordingChannel]:
    """Every relay channel ExecServerClient.connect dials (cleartext or encrypted),
    recorded."""
    dialed: list[RecordingChannel] = []
    real = relay_module.connect_harness_relay
    real_noise = noise_module.connect_noise_relay

    async def recording_connect(url: str, **kwargs: Any) -> MessageChannel:
        channel = RecordingChannel(await real(url, **kwargs), server_side=False)
        dialed.append(channel)
        return channel

    async def recording_noise_connect(*args: Any, **kwargs: Any) -> MessageChannel:
        channel = RecordingChannel(await real_noise(*args, **kwargs), server_side=False)
        dialed.append(channel)
        return channel

    monkeypatch.setattr(relay_module, "connect_harness_relay", recording_connect)
    monkeypatch.setattr(noise_module, "connect_noise_relay", recording_noise_connect)
    return dialed


# --------------------------------------------------------------------------------------
# the workload
# --------------------------------------------------------------------------------------


@dataclass
class Progress:
    total_ops: int
    total_output_bytes: int
    ops_done: int = 0
    output_bytes: int = 0
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def bump(self) -> None:
        self.changed.set()

    async def reached(self, fraction: float) -> None:
        """Wait until output is flowing and ``fraction`` of the mixed operations or of the
        big output is done, whichever comes first: both workloads are then mid-flight,
        however fast each one runs relative to the other."""
        while self.output_bytes == 0 or (
            self.ops_done < fraction * self.total_ops
            and self.output_bytes < fraction * self.total_output_bytes
        ):
            self.changed.clear()
            await self.changed.wait()

    def snapshot(self) -> tuple[int, int]:
        return self.ops_done, self.output_bytes


@dataclass
class OpCounts:
    metadata: int = 0
    missing: int = 0
    files: int = 0
    file_bytes: int = 0
    processes: int = 0


async def run_ops(
    client: ExecServerClient, index: int, root: Path, progress: Progress, counts: OpCounts
) -> None:
    """OPS_PER_CLIENT mixed operations from WORKERS_PER_CLIENT concurrent workers."""
    rng = random.Random(SEED * 100 + index)
    workdir = root / f"client-{index}"
    workdir.mkdir()
    probe_file = workdir / "probe.txt"
    probe_file.write_bytes(b"probe")
    plan: list[tuple[str, int]] = []
    for n in range(OPS_PER_CLIENT):
        roll = rng.random()
        kind = "metadata" if roll < 0.4 else "file" if roll < 0.75 else "process"
        plan.append((kind, n))
    queue: asyncio.Queue[tuple[str, int]] = asyncio.Queue()
    for item in plan:
        queue.put_nowait(item)

    async def metadata(n: int) -> None:
        choice = n % 3
        if choice == 2:
            with pytest.raises(ServerError) as info:
                await client.fs.get_metadata(str(workdir / f"missing-{n}"))
            assert info.value.code == -32004, info.value
            counts.missing += 1
            return
        target = probe_file if choice == 0 else workdir
        meta = await client.fs.get_metadata(str(target))
        assert meta.is_file == (choice == 0) and meta.is_directory == (choice == 1)
        counts.metadata += 1

    async def file_roundtrip(n: int) -> None:
        op_rng = random.Random(SEED * 1_000_000 + index * 10_000 + n)
        # Mostly small files; every 25th spans several relay segments (252 KiB each).
        size = op_rng.randint(600_000, 900_000) if n % 25 == 0 else op_rng.randint(0, 20_000)
        data = op_rng.randbytes(size)
        path = str(workdir / f"file-{n}.bin")
        await client.fs.write_file(path, data)
        assert await client.fs.read_file(path) == data, f"content mismatch for {path}"
        counts.files += 1
        counts.file_bytes += size

    async def process(n: int) -> None:
        code = n % 7
        tag = f"c{index}-op{n}"
        proc = await client.start_process(
            ["/bin/sh", "-c", 'printf %s "$1"; exit "$2"', "sh", tag, str(code)],
            cwd=str(workdir),
        )
        result = await proc.collect()
        assert result.stdout == tag.encode() and result.stderr == b""
        assert result.exit_code == code
        counts.processes += 1

    handlers: dict[str, Callable[[int], Any]] = {
        "metadata": metadata,
        "file": file_roundtrip,
        "process": process,
    }

    async def worker() -> None:
        while not queue.empty():
            kind, n = queue.get_nowait()
            await handlers[kind](n)
            progress.ops_done += 1
            progress.bump()

    async with asyncio.TaskGroup() as group:
        for _ in range(WORKERS_PER_CLIENT):
            group.create_task(worker())


@dataclass
class BigOutput:
    stdout_bytes: int = 0
    stdout_sha256: str = ""
    reported_sha256: str = ""
    exit_code: int | None = None
    max_seq: int = 0


async def run_big_output(client: ExecServerClient, progress: Progress, cwd: Path) -> BigOutput:
    """One process writing BIG_OUTPUT_BYTES of random data; it reports their SHA-256."""
    script = f"head -c {BIG_OUTPUT_BYTES} /dev/urandom | tee >(sha256sum >&2) ; wait $!"
    proc = await client.start_process(["/bin/bash", "-c", script], cwd=str(cwd))
    digest = hashlib.sha256()
    result = BigOutput()
    stderr = bytearray()
    seqs_seen: set[int] = set()
    async for event in proc.events():
        if isinstance(event, FailedEvent):
            raise AssertionError(f"big output process failed: {event.message}")
        assert event.seq not in seqs_seen, f"event seq {event.seq} delivered twice"
        seqs_seen.add(event.seq)
        result.max_seq = max(result.max_seq, event.seq)
        if isinstance(event, OutputEvent):
            if event.stream == "stdout":
                digest.update(event.data)
                result.stdout_bytes += len(event.data)
                progress.output_bytes = result.stdout_bytes
                progress.bump()
            else:
                stderr += event.data
        elif isinstance(event, ExitedEvent):
            result.exit_code = event.exit_code
        elif isinstance(event, ClosedEvent):
            break
    assert seqs_seen == set(range(1, result.max_seq + 1)), "event seqs have gaps"
    result.stdout_sha256 = digest.hexdigest()
    result.reported_sha256 = bytes(stderr).split(b" ", 1)[0].decode()
    return result


async def inject_disconnects(
    rendezvous: ForwardingRendezvous, progress: Progress, log: list[tuple[str, int, int]]
) -> None:
    """Abort every harness socket at 1/3 of the work, the environment socket at 2/3."""
    await progress.reached(KICK_HARNESS_AT)
    log.append(("harness", *progress.snapshot()))
    assert rendezvous.kick_harnesses() == CLIENTS + 1
    await progress.reached(KICK_ENVIRONMENT_AT)
    log.append(("environment", *progress.snapshot()))
    assert rendezvous.kick_environment()


# --------------------------------------------------------------------------------------
# the test
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("transport", ["noise", "legacy"])
async def test_lossy_rendezvous_with_disconnects_loses_and_repeats_nothing(
    tmp_path: Path, harness_channels: list[RecordingChannel], transport: str
) -> None:
    started = time.monotonic()
    server = RecordingExecServer()
    encrypted = transport == "noise"
    async with (
        ForwardingRendezvous(to_environment=FAULTS, to_harness=FAULTS, seed=SEED) as rendezvous,
        serve_remote_environment(
            rendezvous, server, transport="noise" if encrypted else "legacy"
        ) as remote,
    ):

        def connect(i: int) -> Any:
            config = ClientConfig(
                client_name=f"fault-{i}", encryption="required" if encrypted else "auto"
            )
            if encrypted:
                return ExecServerClient.connect(
                    rendezvous=rendezvous.base_url,
                    environment_id=rendezvous.environment_id,
                    token=REGISTRY_TOKEN,
                    config=config,
                )
            return ExecServerClient.connect(rendezvous.harness_url, config=config)

        clients = [await connect(i) for i in range(CLIENTS + 1)]
        try:
            progress = Progress(
                total_ops=CLIENTS * OPS_PER_CLIENT, total_output_bytes=BIG_OUTPUT_BYTES
            )
            counts = OpCounts()
            kicks: list[tuple[str, int, int]] = []
            async with asyncio.timeout(RUN_TIMEOUT_S), asyncio.TaskGroup() as group:
                big = group.create_task(run_big_output(clients[CLIENTS], progress, tmp_path))
                for i in range(CLIENTS):
                    group.create_task(run_ops(clients[i], i, tmp_path, progress, counts))
                group.create_task(inject_disconnects(rendezvous, progress, kicks))
            output = big.result()
            elapsed = time.monotonic() - started

            # -- the disconnects happened, mid-run, and were survived without recovery
            assert [kind for kind, _, _ in kicks] == ["harness", "environment"]
            for _, ops_done, output_bytes in kicks:  # both mid-flight at each disconnect
                assert ops_done < CLIENTS * OPS_PER_CLIENT
                assert 0 < output_bytes < BIG_OUTPUT_BYTES
            assert rendezvous.environment_sockets >= 2 and remote.registrations >= 2
            assert rendezvous.harness_sockets >= 2 * (CLIENTS + 1)
            relays = [c.inner for c in harness_channels]
            kind = NoiseHarnessChannel if encrypted else HarnessRelayChannel
            assert all(isinstance(r, kind) for r in relays)
            assert all(
                isinstance(r, NoiseHarnessChannel | HarnessRelayChannel)
                and r.sockets.reconnects >= 1
                for r in relays
            )
            assert [c.recoveries for c in clients] == [0] * len(clients), "session recovery used"
            assert len(harness_channels) == len(clients), "a client dialed a second channel"

            # -- the big output: byte count, checksum, exit code
            assert output.stdout_bytes == BIG_OUTPUT_BYTES
            assert output.reported_sha256 == output.stdout_sha256
            assert output.exit_code == 0

            # -- the mixed workload
            assert counts.metadata + counts.missing + counts.files + counts.processes == (
                CLIENTS * OPS_PER_CLIENT
            )
            assert min(counts.metadata, counts.missing, counts.files, counts.processes) > 50

            # -- each request executed once and answered once, on both sides
            assert len(server.channels) == len(clients)
            for recorded in [*harness_channels, *server.channels]:
                ledger = recorded.ledger
                assert set(ledger.requests.values()) == {1}, "a request crossed twice"
                assert set(ledger.responses.values()) == {1}, "a response crossed twice"
                assert ledger.requests.keys() == ledger.responses.keys()
            harness_requests = sum(len(c.ledger.requests) for c in harness_channels)
            server_requests = sum(len(c.ledger.requests) for c in server.channels)
            assert harness_requests == server_requests
            # initialize per client, one per metadata or process op, two per file op, and
            # the big output's process/start
            assert harness_requests == (
                len(clients)
                + counts.metadata
                + counts.missing
                + 2 * counts.files
                + counts.processes
                + 1
            )

            # -- the faults really happened, and the reliable relay absorbed them
            stats = rendezvous.link_stats
            for direction in stats.values():
                assert direction["lost"] > 10 and direction["duplicated"] > 5
                assert direction["reordered"] > 10
            env_streams = list(remote.connection.mux.streams.values())
            assert len(env_streams) == len(clients)
            assert all(s.mode is PeerMode.RELIABLE for s in env_streams)
            env_mux = remote.connection.mux
            assert isinstance(env_mux, NoiseStreamMux) == encrypted
            if isinstance(env_mux, NoiseStreamMux):
                # Every handshake completed (none refused, whatever the faults did to it).
                assert env_mux.handshakes[HandshakeOutcome.OPENED_RELIABLE] == len(clients)
                assert set(env_mux.handshakes) == {HandshakeOutcome.OPENED_RELIABLE}
            assert sum(s.stats.retransmissions for s in env_streams) > 0
            assert sum(s.stats.duplicates_received for s in env_streams) > 0
            harness_streams = [
                r.connection.mux.streams[r.stream_id]
                for r in relays
                if isinstance(r, HarnessRelayChannel | NoiseHarnessChannel)
            ]
            print(
                f"\nfault run: {elapsed:.1f}s; kicks (kind, ops done, output bytes): {kicks}",
                f"\nlinks: { {name: dict(c) for name, c in stats.items()} }",
                f"\nops: {counts}; requests: {harness_requests}",
                "\nretransmissions (fast) env:",
                sum(s.stats.retransmissions for s in env_streams),
                f"({sum(s.stats.fast_retransmits for s in env_streams)})",
                "harness:",
                sum(s.stats.retransmissions for s in harness_streams),
                f"({sum(s.stats.fast_retransmits for s in harness_streams)})",
            )
        finally:
            for client in clients:
                await client.close()


def test_frame_stream_id_parser_matches_protobuf() -> None:
    for stream_id in ("a", "stream-" + "x" * 200, "0f8fad5b-d9cb-469f-a165-70867728950e"):
        assert frame_stream_id(encode_frame(resume_frame(stream_id, 0))) == stream_id
        frame = data_frame(stream_id, 7, os.urandom(300), ack=3, ack_bits=1)
        assert frame_stream_id(encode_frame(frame)) == stream_id
    assert frame_stream_id(b"\xff\xff\xff") is None
    assert frame_stream_id(b"") is None
