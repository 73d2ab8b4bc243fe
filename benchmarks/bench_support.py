"""Benchmark support shared by the runners: child processes with a log and a clean stop,
and the transport-free half of their minimal JSON-RPC clients."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import tempfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

START_TIMEOUT_S = 20.0
STOP_GRACE_S = 5.0


def cpu_ns(pid: int) -> int:
    """On-CPU nanoseconds of every thread of ``pid`` so far (the scheduler's run time,
    ``/proc/PID/task/*/schedstat``: ``/proc/PID/stat`` counts 10 ms ticks)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError, ValueError, IndexError):
            total += int((task / "schedstat").read_text().split()[0])
    return total


@dataclass
class Child:
    """A subprocess whose first stdout line describes it (a URL or a JSON object)."""

    name: str
    argv: list[str]
    cpu: int | None = None
    env: dict[str, str] | None = None
    wait_line: bool = True
    proc: asyncio.subprocess.Process | None = None
    line: str = ""
    log: Path | None = None

    async def start(self) -> None:
        fd, log_name = tempfile.mkstemp(prefix=f"bench-{self.name}-", suffix=".log")
        self.log = Path(log_name)
        with os.fdopen(fd, "wb") as log_file:
            self.proc = await asyncio.create_subprocess_exec(
                *self.argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE if self.wait_line else asyncio.subprocess.DEVNULL,
                stderr=log_file,
                env={**os.environ, **(self.env or {})},
                start_new_session=True,
            )
        if self.cpu is not None:
            with contextlib.suppress(OSError):
                os.sched_setaffinity(self.proc.pid, {self.cpu})
        if not self.wait_line:
            return
        assert self.proc.stdout is not None
        try:
            raw = await asyncio.wait_for(self.proc.stdout.readline(), START_TIMEOUT_S)
        except TimeoutError:
            raise RuntimeError(
                f"{self.name}: nothing on stdout within {START_TIMEOUT_S}s"
            ) from None
        self.line = raw.decode(errors="replace").strip()
        if not self.line:
            raise RuntimeError(f"{self.name} exited early; stderr:\n{self.stderr_tail()}")

    @property
    def pid(self) -> int:
        assert self.proc is not None, f"{self.name} was not started"
        return self.proc.pid

    def info(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.line)
        return data

    def stderr_tail(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-2000:] if self.log else ""
        except OSError:
            return ""

    async def stop(self) -> None:
        proc = self.proc
        if proc is not None:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(proc.wait(), STOP_GRACE_S)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            if proc.returncode is None:
                await proc.wait()
        if self.log is not None:
            with contextlib.suppress(OSError):
                self.log.unlink()


_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder().decode


class RpcError(RuntimeError):
    pass


@dataclass
class ProcState:
    closed: asyncio.Event = field(default_factory=asyncio.Event)
    out_bytes: int = 0
    out_messages: int = 0


class Ids:
    """Unique process ids and file names across a run."""

    n = 0

    @classmethod
    def next(cls, prefix: str) -> str:
        cls.n += 1
        return f"{prefix}-{cls.n}"


class RpcState:
    """Requests awaiting answers and per-process output counts; the clients add the
    transport (a raw websocket in ``run.py``, any MessageChannel in ``relay_bench.py``).

    No base64 is decoded: output byte counts come from the base64 length."""

    def __init__(self) -> None:
        self._next = 1
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self.procs: dict[str, ProcState] = {}

    def _request(self, method: str, params: Any) -> tuple[bytes, asyncio.Future[Any]]:
        request_id = self._next
        self._next += 1
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = fut
        return _encode({"id": request_id, "method": method, "params": params}), fut

    def _dispatch(self, raw: bytes | str) -> None:
        obj = _decode(raw)
        method = obj.get("method")
        if method is None:
            fut = self._pending.pop(obj.get("id"), None)
            if fut is not None and not fut.done():
                if "error" in obj:
                    fut.set_exception(RpcError(str(obj["error"])))
                else:
                    fut.set_result(obj.get("result"))
            return
        params = obj.get("params") or {}
        state = self.procs.get(params.get("processId", ""))
        if state is None:
            return
        if method == "process/output":
            chunk: str = params["chunk"]
            state.out_bytes += len(chunk) * 3 // 4 - chunk[-2:].count("=")
            state.out_messages += 1
        elif method == "process/closed":
            state.closed.set()

    def _fail_pending(self) -> None:
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(RpcError("connection closed"))


def run_bounded(main: Callable[[], Awaitable[int]], timeout_s: float) -> int:
    """``asyncio.run`` a runner's main under the whole-run ``--timeout``; exit status 3
    on timeout, 130 on Ctrl-C."""

    async def bounded() -> int:
        return await asyncio.wait_for(main(), timeout_s)

    try:
        return asyncio.run(bounded())
    except TimeoutError:
        print(f"benchmark run exceeded --timeout {timeout_s}s", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        return 130
