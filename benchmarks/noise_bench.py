"""Noise relay core costs, measured side by side in one process (no sockets).

* handshake latency: both sides of one hybrid IK handshake (ML-KEM-768 keygen, three
  encapsulations and decapsulations, four X25519 exchanges, HKDFs, AES-GCM), p50/p90,
  plus the initiator's and the responder's share and each step: the harness identity and
  ephemeral keys (made before or while ``/connect`` is in flight), message 1, reading
  it, message 2 (made while ``/validate`` is in flight), reading message 2;
* the stream layer for a bulk message: encrypt + reorder + decrypt + reassemble versus
  the same framing and record cutting without encryption (ratio);
* the per-message cost a small request (~150 bytes, a ``fs/getMetadata``) pays for
  encryption, both directions.

CPU seconds of this process are reported next to wall time (2-CPU machine, other load).

    uv run --frozen python benchmarks/noise_bench.py [--handshakes 300]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

from exec_server.relay.frame_codec import data_frame
from exec_server.relay.noise import (
    InitiatorEphemeral,
    InitiatorHandshake,
    NoiseIdentity,
    PendingResponderHandshake,
    noise_prologue,
)
from exec_server.relay.noise.records import MessageDecoder, OrderedRecords, split_records
from exec_server.relay.noise.stream import EncryptedStream

AUTHORIZATION = b"v1.1790000000.AAAAAAAAAAAAAAAAAAAAAA." + b"A" * 43


def handshake_times(count: int) -> dict[str, list[float]]:
    responder = NoiseIdentity.generate()
    prologue = noise_prologue("env-1", "reg_0123456789abcdefghijkl", "8cc87847-2872-43b4")
    out: dict[str, list[float]] = {
        key: []
        for key in (
            "total",
            "initiator",
            "responder",
            "identity",
            "ephemeral",
            "message1",
            "read1",
            "message2",
            "finish",
        )
    }
    for _ in range(count):
        t0 = time.perf_counter()
        initiator = NoiseIdentity.generate()  # the harness makes one per connection
        t1 = time.perf_counter()
        ephemeral = InitiatorEphemeral.generate()  # while /connect is in flight
        t2 = time.perf_counter()
        handshake, message1 = InitiatorHandshake.start(
            initiator, responder.public_key, prologue, AUTHORIZATION, ephemeral=ephemeral
        )
        t3 = time.perf_counter()
        pending = PendingResponderHandshake.read_request(responder, prologue, message1)
        t4 = time.perf_counter()
        _, message2 = pending.complete()  # while /validate is in flight
        t5 = time.perf_counter()
        handshake.finish(message2)
        t6 = time.perf_counter()
        for key, value in (
            ("identity", t1 - t0),
            ("ephemeral", t2 - t1),
            ("message1", t3 - t2),
            ("read1", t4 - t3),
            ("message2", t5 - t4),
            ("finish", t6 - t5),
            ("initiator", (t3 - t1) + (t6 - t5)),
            ("responder", t5 - t3),
            ("total", t6 - t0),
        ):
            out[key].append(value)
    return out


def pair() -> tuple[EncryptedStream, EncryptedStream]:
    responder = NoiseIdentity.generate()
    prologue = noise_prologue("env-1", "reg", "s")
    handshake, message1 = InitiatorHandshake.start(
        NoiseIdentity.generate(), responder.public_key, prologue, b"a"
    )
    transport_r, message2 = PendingResponderHandshake.read_request(
        responder, prologue, message1
    ).complete()
    return EncryptedStream("s", handshake.finish(message2)), EncryptedStream("s", transport_r)


def timed(fn: Callable[[], object], repeat: int) -> tuple[float, float]:
    """Best-of-3 (wall seconds, CPU seconds) per call."""
    best = (float("inf"), float("inf"))
    for _ in range(3):
        w0, c0 = time.perf_counter(), time.process_time()
        for _ in range(repeat):
            fn()
        w, c = (time.perf_counter() - w0) / repeat, (time.process_time() - c0) / repeat
        best = min(best, (w, c))
    return best


def bulk(message: bytes, repeat: int) -> tuple[tuple[float, float], tuple[float, float]]:
    sender, receiver = pair()

    def encrypted() -> None:
        for frame in sender.encrypt_messages([message]):
            receiver.receive_data(frame.data)

    def clear() -> None:
        ordered, decoder = OrderedRecords(), MessageDecoder()
        for seq, record in enumerate(split_records([message])):
            frame = data_frame("s", seq, record)
            for ready in ordered.push(frame.data.seq, frame.data.payload):
                decoder.push(ready)

    return timed(encrypted, repeat), timed(clear, repeat)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--handshakes", type=int, default=300)
    args = parser.parse_args()

    handshake_times(20)  # warm up
    c0 = time.process_time()
    times = handshake_times(args.handshakes)
    cpu = (time.process_time() - c0) / args.handshakes
    print(f"handshake ({args.handshakes} runs, both sides in one process)")
    for key in times:
        values = sorted(times[key])
        p50 = statistics.median(values) * 1e3
        p90 = values[int(len(values) * 0.9)] * 1e3
        print(f"  {key:<10} p50 {p50:6.3f} ms   p90 {p90:6.3f} ms")
    print(f"  CPU per handshake (both sides): {cpu * 1e3:.3f} ms")

    size = 8 * 1024 * 1024
    (enc_w, enc_c), (clr_w, clr_c) = bulk(b"x" * size, 3)
    print(f"bulk {size >> 20} MiB message through the stream layer")
    print(f"  encrypted {size / enc_w / 1e6:8.1f} MB/s  (CPU {enc_c * 1e3:.1f} ms)")
    print(f"  cleartext {size / clr_w / 1e6:8.1f} MB/s  (CPU {clr_c * 1e3:.1f} ms)")
    print(f"  encrypted/cleartext throughput ratio: {clr_w / enc_w:.2f}")

    small = (
        b'{"id":7,"method":"fs/getMetadata","params":'
        b'{"path":"file:///home/user/project/src/module/file.py","sandbox":null}}'
    )
    (s_enc, _), (s_clr, _) = bulk(small, 20000)
    added = (s_enc - s_clr) * 2  # request and reply
    print(f"small message ({len(small)} bytes), one direction")
    print(f"  encrypted {s_enc * 1e6:6.2f} us   cleartext {s_clr * 1e6:6.2f} us")
    print(f"  added by encryption to a round trip (both directions): {added * 1e3:.4f} ms")


if __name__ == "__main__":
    main()
