"""The event loop the long-running commands (``serve``, ``rendezvous``, ``up``) run on.

uvloop by default: the environment server's per-request cost is mostly the event loop
itself (benchmarks/README.md: a getMetadata or status round trip is 7-10% cheaper on
uvloop), and nothing of ours depends on the stdlib loop (children are spawned with
``subprocess.Popen`` and watched through ``add_reader`` on pipes and a pidfd, which
uvloop implements). ``EXEC_SERVER_EVENT_LOOP=asyncio`` selects the stdlib loop, for a
platform without uvloop wheels or to rule the loop out when debugging; any other value
is refused rather than silently ignored.

Short-lived client commands (``run``, ``cp``, ``envs``) stay on the stdlib loop: they
are dominated by start-up, and importing uvloop costs more than it would save there.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Coroutine
from typing import Any, Literal, TypeVar

import click

EVENT_LOOP_ENV = "EXEC_SERVER_EVENT_LOOP"

LoopName = Literal["uvloop", "asyncio"]

_T = TypeVar("_T")


class EventLoopChoiceError(click.ClickException):
    """``EXEC_SERVER_EVENT_LOOP`` names a loop this machine cannot run (exit code 1)."""


def chosen_loop(environ: dict[str, str] | None = None) -> LoopName:
    """The loop ``EXEC_SERVER_EVENT_LOOP`` asks for (uvloop when unset or empty)."""
    value = (os.environ if environ is None else environ).get(EVENT_LOOP_ENV, "").strip()
    if value in ("", "uvloop"):
        return "uvloop"
    if value == "asyncio":
        return "asyncio"
    raise EventLoopChoiceError(
        f"{EVENT_LOOP_ENV}={value!r} is not a known event loop (use uvloop or asyncio)"
    )


def run(main: Coroutine[Any, Any, _T], *, loop: LoopName | None = None) -> _T:
    """Run *main* to completion on the chosen loop, as :func:`asyncio.run` does."""
    name = chosen_loop() if loop is None else loop
    if name == "asyncio":
        return asyncio.run(main)
    try:
        import uvloop
    except ImportError as exc:  # a platform without uvloop wheels
        main.close()
        raise EventLoopChoiceError(
            f"uvloop is not installed here ({exc}); set {EVENT_LOOP_ENV}=asyncio"
        ) from None
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)
