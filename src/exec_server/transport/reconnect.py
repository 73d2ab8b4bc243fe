"""One reconnect policy: exponential backoff with jitter, and which errors to retry.

:func:`backoff` yields the delays between attempts (as websockets' client does);
:func:`is_transient` decides whether an error is worth another attempt. Every
reconnect loop (the SDK's session recovery, the environment's registration loop, the
harness relay's redial) is meant to use these two instead of its own constants.
"""

from __future__ import annotations

import random
from collections.abc import Iterator


def backoff(
    initial: float, maximum: float, factor: float = 2.0, jitter: float = 0.2
) -> Iterator[float]:
    """Yield delays in seconds: ``initial``, then times ``factor`` up to ``maximum``.

    Each delay is spread by ``+-jitter`` (a fraction) so that many clients that lost
    the same server do not come back in lockstep. The generator never ends; callers
    bound the attempts by a deadline or a count.
    """
    if initial <= 0 or maximum < initial or factor < 1 or not 0 <= jitter < 1:
        raise ValueError(
            f"backoff needs 0 < initial <= maximum, factor >= 1 and 0 <= jitter < 1; "
            f"got initial={initial}, maximum={maximum}, factor={factor}, jitter={jitter}"
        )
    delay = initial
    while True:
        yield delay * (1 + random.uniform(-jitter, jitter))
        delay = min(delay * factor, maximum)


def is_transient(exc: BaseException) -> bool:
    """True when trying again later may succeed.

    An exception that carries a boolean ``transient`` attribute (every
    :class:`~exec_server.errors.ExecServerError` does) decides for itself; otherwise
    network-level failures (``OSError``, which includes ``ConnectionError``, and
    ``TimeoutError``) are transient and everything else is not.
    """
    flag = getattr(exc, "transient", None)
    if isinstance(flag, bool):
        return flag
    return isinstance(exc, OSError | TimeoutError | EOFError)
