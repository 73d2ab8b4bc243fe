"""ReadInbox: the bound on messages read and not yet taken, without a socket."""

from __future__ import annotations

from exec_server.transport.read_inbox import MESSAGE_OVERHEAD_BYTES, ReadInbox


def test_pauses_above_the_limit_resumes_at_half_and_keeps_order() -> None:
    calls: list[bool] = []
    inbox: ReadInbox[bytes] = ReadInbox(1000, len, calls.append)
    message = b"x" * (200 - MESSAGE_OVERHEAD_BYTES)  # counts 200
    for _ in range(5):
        inbox.put(message)
    assert calls == [] and inbox.counted == 1000  # at the limit, not above it
    inbox.put(b"last")
    assert calls == [True] and len(inbox) == 6
    inbox.put(b"more")  # already paused: no second call
    assert calls == [True]
    taken = [inbox.take() for _ in range(3)]
    assert taken == [message] * 3 and calls == [True]  # 1000 - 600 + 136: above half
    assert inbox.take() == message
    assert calls == [True, False]
    assert [inbox.take(), inbox.take(), inbox.take(), inbox.take()] == [
        message, b"last", b"more", None,
    ]  # fmt: skip
    assert inbox.counted == 0


def test_empty_messages_count_and_clear_forgets_everything() -> None:
    calls: list[bool] = []
    inbox: ReadInbox[bytes] = ReadInbox(10 * MESSAGE_OVERHEAD_BYTES, len, calls.append)
    for _ in range(11):
        inbox.put(b"")
    assert calls == [True]
    inbox.clear()
    assert len(inbox) == 0 and inbox.counted == 0 and inbox.take() is None


def test_clear_lets_a_paused_socket_read_again() -> None:
    """A failing socket clears its inbox and then reads the peer's close reply: a
    socket paused by a full inbox must read again, or the reply is never seen."""
    calls: list[bool] = []
    inbox: ReadInbox[bytes] = ReadInbox(MESSAGE_OVERHEAD_BYTES, len, calls.append)
    inbox.put(b"x")
    assert calls == [True]
    inbox.clear()
    assert calls == [True, False] and not inbox.paused
    inbox.clear()
    assert calls == [True, False]
