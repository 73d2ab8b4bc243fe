"""run_until: the first of {stop, any coroutine} ends them all; errors come out unwrapped.
unless_set: one coroutine's result, unless an event is set first."""

from __future__ import annotations

import asyncio

import pytest

from exec_server.concurrency import Stopped, run_until, unless_set


async def test_the_stop_event_cancels_every_coroutine() -> None:
    stop = asyncio.Event()
    cancelled: list[str] = []

    async def forever(name: str) -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.append(name)
            raise

    async def stopper() -> None:
        await asyncio.sleep(0)
        stop.set()
        await asyncio.Event().wait()

    await run_until(stop, forever("a"), forever("b"), stopper())
    assert sorted(cancelled) == ["a", "b"]


async def test_the_first_coroutine_to_return_ends_the_others() -> None:
    cancelled = asyncio.Event()

    async def forever() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            cancelled.set()

    async def quick() -> str:
        return "done"

    await run_until(None, forever(), quick())
    assert cancelled.is_set()


async def test_an_error_is_raised_as_itself_and_ends_the_others() -> None:
    stop = asyncio.Event()
    ended = asyncio.Event()

    async def forever() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            ended.set()

    async def fail() -> None:
        raise LookupError("registration refused")

    with pytest.raises(LookupError, match="registration refused"):
        await run_until(stop, forever(), fail())
    assert ended.is_set()


async def test_cancelling_the_caller_cancels_every_coroutine() -> None:
    ended = asyncio.Event()

    async def forever() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            ended.set()

    task = asyncio.ensure_future(run_until(asyncio.Event(), forever()))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert ended.is_set()


async def test_unless_set_returns_the_result() -> None:
    async def answer() -> int:
        await asyncio.sleep(0)
        return 42

    assert await unless_set(asyncio.Event(), answer()) == 42


async def test_unless_set_cancels_and_awaits_the_coroutine_when_the_event_is_set() -> None:
    stop = asyncio.Event()
    ended: list[str] = []

    async def forever() -> None:
        try:
            stop.set()
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            ended.append("cancelled")
            raise

    with pytest.raises(Stopped):
        await unless_set(stop, forever())
    assert ended == ["cancelled"]


async def test_unless_set_raises_the_coroutines_error_as_itself() -> None:
    async def fail() -> None:
        raise LookupError("no such process")

    with pytest.raises(LookupError, match="no such process"):
        await unless_set(asyncio.Event(), fail())


async def test_cancelling_the_caller_of_unless_set_cancels_the_coroutine() -> None:
    started = asyncio.Event()
    ended = asyncio.Event()

    async def forever() -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        finally:
            ended.set()

    caller = asyncio.get_running_loop().create_task(unless_set(asyncio.Event(), forever()))
    await started.wait()
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    assert ended.is_set()
