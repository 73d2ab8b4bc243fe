"""A process's notification queue without a process (environment/notification_outbox.py):
order, flow control, a failing sink, and the end of its task."""

from __future__ import annotations

import asyncio

import pytest

from exec_server.environment.notification_outbox import (
    NOTIFY_HIGH_WATER_BYTES,
    NOTIFY_HIGH_WATER_COUNT,
    NotificationOutbox,
)
from exec_server.protocol.messages import (
    PROCESS_CLOSED,
    PROCESS_EXITED,
    PROCESS_OUTPUT,
    Message,
    ProcessClosedNotification,
    ProcessExitedNotification,
    ProcessOutputNotification,
)

WAIT_S = 30.0


def output(seq: int, size: int) -> ProcessOutputNotification:
    return ProcessOutputNotification(process_id="p", seq=seq, stream="stdout", chunk=b"x" * size)


class Sink:
    """Records what it is sent; holds every call while ``gate`` is clear."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, Message]] = []
        self.gate = asyncio.Event()
        self.gate.set()

    async def __call__(self, method: str, message: Message) -> None:
        await self.gate.wait()
        self.sent.append((method, message))


async def test_sends_in_order_and_ends_after_closed() -> None:
    sink = Sink()
    outbox = NotificationOutbox(asyncio.get_running_loop(), sink, "p", lambda: None)
    outbox.start()
    outbox.add_output(PROCESS_OUTPUT, output(1, 3), 3)
    outbox.wake()
    outbox.add(PROCESS_EXITED, ProcessExitedNotification(process_id="p", seq=2, exit_code=0))
    outbox.add(PROCESS_CLOSED, ProcessClosedNotification(process_id="p", seq=3))
    assert outbox.task is not None
    await asyncio.wait_for(outbox.task, WAIT_S)
    assert [method for method, _ in sink.sent] == [PROCESS_OUTPUT, PROCESS_EXITED, PROCESS_CLOSED]


async def test_pauses_at_the_high_water_mark_and_resumes_at_the_low() -> None:
    sink = Sink()
    sink.gate.clear()
    resumed = asyncio.Event()
    outbox = NotificationOutbox(asyncio.get_running_loop(), sink, "p", resumed.set)
    outbox.start()
    size = NOTIFY_HIGH_WATER_BYTES // 4
    for seq in range(1, 4):
        outbox.add_output(PROCESS_OUTPUT, output(seq, size), size)
    assert not outbox.should_pause()
    outbox.add_output(PROCESS_OUTPUT, output(4, size), size)
    assert outbox.should_pause()
    assert not outbox.should_pause(), "a pause is reported once"
    outbox.wake()
    sink.gate.set()
    await asyncio.wait_for(resumed.wait(), WAIT_S)
    outbox.cancel()
    await asyncio.gather(outbox.task, return_exceptions=True)  # type: ignore[arg-type]


async def test_many_tiny_chunks_pause_too() -> None:
    outbox = NotificationOutbox(asyncio.get_running_loop(), Sink(), "p", lambda: None)
    for seq in range(1, NOTIFY_HIGH_WATER_COUNT + 1):
        outbox.add_output(PROCESS_OUTPUT, output(seq, 1), 1)
    assert outbox.should_pause()


async def test_a_failing_sink_is_skipped(caplog: pytest.LogCaptureFixture) -> None:
    sent: list[str] = []

    async def sink(method: str, message: Message) -> None:
        if method == PROCESS_EXITED:
            raise RuntimeError("sink broke")
        sent.append(method)

    outbox = NotificationOutbox(asyncio.get_running_loop(), sink, "p", lambda: None)
    outbox.start()
    outbox.add(PROCESS_EXITED, ProcessExitedNotification(process_id="p", seq=1, exit_code=0))
    outbox.add(PROCESS_CLOSED, ProcessClosedNotification(process_id="p", seq=2))
    assert outbox.task is not None
    await asyncio.wait_for(outbox.task, WAIT_S)
    assert sent == [PROCESS_CLOSED]
    assert "process/exited notification failed" in caplog.text


async def test_cancel_ends_a_waiting_sender() -> None:
    outbox = NotificationOutbox(asyncio.get_running_loop(), Sink(), "p", lambda: None)
    outbox.start()
    await asyncio.sleep(0)
    outbox.cancel()
    assert outbox.task is not None
    with pytest.raises(asyncio.CancelledError):
        await outbox.task
