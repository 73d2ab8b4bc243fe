"""The environment's relay adapter writing frames inline: process output sent from the
sender's own call while the writer task is parked, and frames an acknowledgement lets
out written from the read callback. Same frames, same order as the writer task would
write, and the writer takes over while the socket pushes back.

The socket is a ``PicowsRelaySocket`` over a recording transport (no network); the
harness is a sans-IO ``StreamMux`` fed the recorded frames.
"""

from __future__ import annotations

import asyncio

import picows

from exec_server.relay.events import MessageReceived, PeerMode
from exec_server.relay.frame_encoder import message_with_headroom
from exec_server.relay.reliable_stream import ReliableStreamConfig
from exec_server.relay.stream_mux import MuxConfig, MuxRole, StreamMux
from exec_server.transport.picows_socket import PicowsRelaySocket
from exec_server.transport.relay_channel import RelayStreamChannel
from exec_server.transport.relay_connection import RelayConfig, RelayConnection

TIMEOUT_S = 30.0


class RecordingTransport:
    """What ``PicowsRelaySocket`` calls on a picows transport; binary frames are kept
    as the bytes that would go on the wire (after the websocket header)."""

    def __init__(self) -> None:
        self.frames: list[bytes] = []

    def send(self, msg_type: picows.WSMsgType, message: bytes | bytearray | memoryview) -> None:
        if msg_type is picows.WSMsgType.BINARY:
            self.frames.append(bytes(message))

    def send_reuse_external_bytearray(
        self, msg_type: picows.WSMsgType, frame: bytearray, headroom: int
    ) -> None:
        self.frames.append(bytes(frame[headroom:]))

    def send_close(self, *args: object) -> None:
        pass

    def disconnect(self) -> None:
        pass


def fake_socket() -> tuple[PicowsRelaySocket, RecordingTransport]:
    ws = PicowsRelaySocket()
    transport = RecordingTransport()
    ws._transport = transport  # type: ignore[assignment]
    return ws, transport


async def test_output_is_written_inline_in_order_and_survives_backpressure() -> None:
    config = ReliableStreamConfig(
        max_segment_payload_bytes=16 * 1024,
        max_unacked_bytes=64 * 1024,
        max_send_buffer_bytes=256 * 1024,
        ack_delay_s=0.001,
    )
    env = RelayConnection(MuxRole.ENVIRONMENT, RelayConfig(mux=MuxConfig(stream=config)))
    harness = StreamMux(MuxRole.HARNESS, MuxConfig(stream=config))
    channels: list[RelayStreamChannel] = []
    env._on_stream = channels.append
    ws, transport = fake_socket()
    loop = asyncio.get_running_loop()
    delivered: list[bytes] = []
    taken = 0

    def exchange() -> None:
        """Everything the environment wrote goes to the harness; its answers (acks)
        come back through the socket's read callback."""
        nonlocal taken
        now = loop.time()
        while taken < len(transport.frames):
            harness.receive_bytes(transport.frames[taken], now)
            taken += 1
        harness.handle_timer(now)
        for event in harness.events():
            if isinstance(event, MessageReceived):
                delivered.append(event.payload)
        for frame in harness.data_to_send(now):
            assert ws._on_binary is not None
            ws._on_binary(bytes(frame))

    async with asyncio.timeout(TIMEOUT_S):
        run = asyncio.create_task(env.run_socket(ws))  # type: ignore[arg-type]
        stream = harness.open_stream(loop.time(), "output-stream")
        while stream.mode is not PeerMode.RELIABLE or not channels:
            if ws._on_binary is not None:  # the reader took the socket's callbacks
                exchange()
            await asyncio.sleep(0.001)
        channel = channels[0]

        messages = [f"{i:05d}:".encode() + bytes([i % 251]) * 3000 for i in range(300)]

        async def produce() -> None:
            for i, message in enumerate(messages):
                if i == 150:
                    ws.pause_writing()  # the kernel's buffer is full: the writer waits
                    loop.call_later(0.05, ws.resume_writing)
                await channel.send(message_with_headroom(message))

        producer = asyncio.create_task(produce())
        while len(delivered) < len(messages):
            exchange()
            await asyncio.sleep(0.001)
        await producer
        run.cancel()
        await asyncio.gather(run, return_exceptions=True)

    assert delivered == messages
    # Both ways out were taken: frames written inline and by the writer task.
    assert 0 < env.inline_frames < len(messages)
    assert channel.stream.stats.retransmissions == 0
