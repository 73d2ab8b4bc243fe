"""The one reconnect policy: backoff delays and which errors are worth retrying."""

from __future__ import annotations

import itertools

import pytest

from exec_server.errors import ExecServerError
from exec_server.transport.reconnect import backoff, is_transient


def test_backoff_grows_to_the_maximum_within_the_jitter() -> None:
    delays = list(itertools.islice(backoff(0.1, 2.0, factor=2.0, jitter=0.2), 8))
    nominal = [0.1, 0.2, 0.4, 0.8, 1.6, 2.0, 2.0, 2.0]
    for delay, expected in zip(delays, nominal, strict=True):
        assert expected * 0.8 <= delay <= expected * 1.2


def test_backoff_without_jitter_is_exact() -> None:
    assert list(itertools.islice(backoff(1.0, 30.0, jitter=0.0), 7)) == [1, 2, 4, 8, 16, 30, 30]


@pytest.mark.parametrize(
    ("initial", "maximum", "factor", "jitter"),
    [(0, 1, 2, 0.1), (2, 1, 2, 0.1), (1, 2, 0.5, 0.1), (1, 2, 2, 1.0)],
)
def test_backoff_refuses_nonsense(
    initial: float, maximum: float, factor: float, jitter: float
) -> None:
    with pytest.raises(ValueError, match="backoff needs"):
        next(backoff(initial, maximum, factor, jitter))


class _Flagged(ExecServerError):
    def __init__(self, transient: bool) -> None:
        super().__init__("flagged")
        self.transient = transient


def test_is_transient() -> None:
    assert is_transient(ConnectionRefusedError()) and is_transient(TimeoutError())
    assert is_transient(OSError("network down")) and is_transient(EOFError())
    assert not is_transient(ValueError("bad")) and not is_transient(KeyError("x"))
    assert is_transient(_Flagged(True)) and not is_transient(_Flagged(False))
    assert not is_transient(ExecServerError("plain"))
