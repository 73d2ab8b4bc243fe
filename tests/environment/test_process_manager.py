"""Tests for exec_server.environment.process_manager (real child processes)."""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import msgspec
import psutil
import pytest
from msgspec import UNSET

from exec_server.environment.child_env import build_child_env, env_pattern_matches, resolve_cwd
from exec_server.environment.process import ChildProcess, ProcessLimits
from exec_server.environment.process_manager import ProcessManager
from exec_server.protocol.errors import InternalError, InvalidParams, InvalidRequest
from exec_server.protocol.messages import (
    Empty,
    EnvPolicy,
    Message,
    ProcessClosedNotification,
    ProcessExitedNotification,
    ProcessOutputNotification,
    ProcessReadParams,
    ProcessReadResult,
    ProcessResizeParams,
    ProcessSignalParams,
    ProcessStartParams,
    ProcessTerminateParams,
    ProcessWriteParams,
)

pytestmark = pytest.mark.timeout(10)

ENV = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}


class Recorder:
    """A NotificationSink that records everything and lets tests wait on it."""

    def __init__(self) -> None:
        self.events: list[tuple[str, Message]] = []
        self._changed = asyncio.Condition()

    async def __call__(self, method: str, message: Message) -> None:
        self.events.append((method, message))
        async with self._changed:
            self._changed.notify_all()

    def of(self, process_id: str) -> list[tuple[str, Message]]:
        return [(m, e) for m, e in self.events if getattr(e, "process_id", None) == process_id]

    def output(self, process_id: str) -> bytes:
        return b"".join(
            e.chunk for _, e in self.of(process_id) if isinstance(e, ProcessOutputNotification)
        )

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = 5.0) -> None:
        async with asyncio.timeout(timeout), self._changed:
            await self._changed.wait_for(predicate)

    async def wait_closed(self, process_id: str) -> list[tuple[str, Message]]:
        await self.wait_for(
            lambda: any(isinstance(e, ProcessClosedNotification) for _, e in self.of(process_id))
        )
        return self.of(process_id)

    async def wait_output(self, process_id: str, needle: bytes) -> None:
        await self.wait_for(lambda: needle in self.output(process_id))


@pytest.fixture
def sink() -> Recorder:
    return Recorder()


@pytest.fixture
async def pm(sink: Recorder) -> AsyncIterator[ProcessManager]:
    manager = ProcessManager(sink)
    yield manager
    await manager.close()


def start_params(process_id: str, argv: list[str], **kw: Any) -> ProcessStartParams:
    fields: dict[str, Any] = {"cwd": "/tmp", "env": dict(ENV), "tty": False}
    fields.update(kw)
    return ProcessStartParams(process_id=process_id, argv=argv, **fields)


def sh(process_id: str, script: str, **kw: Any) -> ProcessStartParams:
    return start_params(process_id, ["sh", "-c", script], **kw)


async def read(pm: ProcessManager, process_id: str, **kw: Any) -> ProcessReadResult:
    return await pm.read(ProcessReadParams(process_id=process_id, **kw))


async def write(pm: ProcessManager, process_id: str, data: bytes) -> str:
    return (await pm.write(ProcessWriteParams(process_id=process_id, chunk=data))).status


def chunk_bytes(result: ProcessReadResult) -> bytes:
    return b"".join(c.chunk for c in result.chunks)


# --- lifecycle and sequencing -------------------------------------------------------


async def test_true_exits_zero_then_closes(pm: ProcessManager, sink: Recorder) -> None:
    result = await pm.start(start_params("t", ["true"]))
    assert result.process_id == "t"
    events = await sink.wait_closed("t")
    assert events == [
        ("process/exited", ProcessExitedNotification(process_id="t", seq=1, exit_code=0)),
        ("process/closed", ProcessClosedNotification(process_id="t", seq=2)),
    ]
    r = await read(pm, "t")
    assert (r.chunks, r.next_seq, r.exited, r.exit_code, r.closed, r.failure) == (
        [],
        3,
        True,
        0,
        True,
        None,
    )


async def test_seq_order_stdout_stderr_exited_closed(pm: ProcessManager, sink: Recorder) -> None:
    await pm.start(sh("p", "printf out; sleep 0.05; printf err >&2; exit 7"))
    events = await sink.wait_closed("p")
    assert [(m, e.seq) for m, e in events] == [  # type: ignore[attr-defined]
        ("process/output", 1),
        ("process/output", 2),
        ("process/exited", 3),
        ("process/closed", 4),
    ]
    out, err, exited, _ = (e for _, e in events)
    assert isinstance(out, ProcessOutputNotification) and isinstance(err, ProcessOutputNotification)
    assert (out.stream, out.chunk, err.stream, err.chunk) == ("stdout", b"out", "stderr", b"err")
    assert isinstance(exited, ProcessExitedNotification) and exited.exit_code == 7
    # Reads and notifications agree.
    r = await read(pm, "p")
    assert [(c.seq, c.stream, c.chunk) for c in r.chunks] == [
        (1, "stdout", b"out"),
        (2, "stderr", b"err"),
    ]
    assert (r.next_seq, r.exit_code, r.closed) == (3, 7, True)


async def test_output_before_exit_gets_lower_seq_than_exit(
    pm: ProcessManager, sink: Recorder
) -> None:
    # Output the child wrote before dying is drained before `exited` is sequenced.
    for i in range(5):
        await pm.start(sh(f"p{i}", "echo a; echo b >&2; echo c"))
    for i in range(5):
        methods = [m for m, _ in await sink.wait_closed(f"p{i}")]
        assert methods[-2:] == ["process/exited", "process/closed"]
        assert sink.output(f"p{i}").count(b"\n") == 3


async def test_output_left_in_pipe_at_exit_comes_before_exited(
    pm: ProcessManager, sink: Recorder
) -> None:
    # The child exits with far more than one read's worth still in the pipe.
    for i in range(4):
        await pm.start(start_params(f"p{i}", ["head", "-c", "900000", "/dev/zero"]))
    for i in range(4):
        methods = [m for m, _ in await sink.wait_closed(f"p{i}")]
        assert methods[-2:] == ["process/exited", "process/closed"]
        assert len(sink.output(f"p{i}")) == 900000


async def test_large_output_is_chunked_contiguous_and_complete(
    sink: Recorder,
) -> None:
    limits = ProcessLimits(output_chunk_bytes=1000)
    async with _manager(sink, limits) as pm:
        total = 3_000_000
        await pm.start(start_params("big", ["head", "-c", str(total), "/dev/zero"]))
        events = await sink.wait_closed("big")
    outputs = [e for _, e in events if isinstance(e, ProcessOutputNotification)]
    assert sum(len(e.chunk) for e in outputs) == total
    assert all(0 < len(e.chunk) <= 1000 for e in outputs)
    assert [e.seq for _, e in events] == list(range(1, len(events) + 1))  # type: ignore[attr-defined]


async def test_output_chunk_bytes_extension_sets_the_chunk_size_per_process(
    pm: ProcessManager, sink: Recorder
) -> None:
    total = 3_000_000
    await pm.start(
        start_params("wide", ["head", "-c", str(total), "/dev/zero"], output_chunk_bytes=100_000)
    )
    await pm.start(start_params("default", ["head", "-c", str(total), "/dev/zero"]))
    for pid, limit in (("wide", 100_000), ("default", 8192)):
        events = await sink.wait_closed(pid)
        sizes = [len(e.chunk) for _, e in events if isinstance(e, ProcessOutputNotification)]
        assert sum(sizes) == total
        assert min(sizes) > 0 and max(sizes) <= limit
    # How much one read gets is timing, but 3 MB from head cannot all come in <= 8 KiB
    # pieces unless the server split them.
    wide = [len(e.chunk) for _, e in sink.of("wide") if isinstance(e, ProcessOutputNotification)]
    assert max(wide) > 8192
    r = await read(pm, "wide", after_seq=0)
    assert all(len(c.chunk) <= 100_000 for c in r.chunks)


@pytest.mark.parametrize("value", [0, -1, 1024 * 1024 + 1])
async def test_output_chunk_bytes_out_of_range_is_invalid_params(
    pm: ProcessManager, value: int
) -> None:
    with pytest.raises(InvalidParams, match="outputChunkBytes must be between 1 and 1048576"):
        await pm.start(start_params("bad", ["true"], output_chunk_bytes=value))
    # Nothing was registered: the id is free for a valid start.
    await pm.start(start_params("bad", ["true"], output_chunk_bytes=1024 * 1024))


async def test_grandchild_output_after_exit_is_sequenced_before_closed(
    pm: ProcessManager, sink: Recorder
) -> None:
    await pm.start(sh("g", "(sleep 0.2; echo late) & exit 0"))
    r = await read(pm, "g", wait_ms=2000)
    assert (r.exited, r.exit_code, r.closed, r.chunks) == (True, 0, False, [])
    exit_seq = r.next_seq - 1
    r = await read(pm, "g", after_seq=exit_seq, wait_ms=2000)
    assert chunk_bytes(r) == b"late\n"
    assert r.chunks[0].seq == exit_seq + 1
    r = await read(pm, "g", after_seq=r.next_seq - 1, wait_ms=2000)
    assert r.closed and r.chunks == []
    assert [m for m, _ in await sink.wait_closed("g")] == [
        "process/exited",
        "process/output",
        "process/closed",
    ]


async def test_killed_by_signal_reports_exit_code_minus_one(
    pm: ProcessManager, sink: Recorder
) -> None:
    await pm.start(sh("pipe", "kill -TERM $$"))
    await pm.start(sh("pty", "kill -TERM $$", tty=True))
    for process_id in ("pipe", "pty"):
        events = await sink.wait_closed(process_id)
        exited = [e for _, e in events if isinstance(e, ProcessExitedNotification)]
        assert [e.exit_code for e in exited] == [-1]


# --- spawn parameters ---------------------------------------------------------------


async def test_spawn_failures_report_os_error_and_free_the_id(pm: ProcessManager) -> None:
    with pytest.raises(InternalError) as missing:
        await pm.start(start_params("x", ["/nonexistent/binary"]))
    assert missing.value.message == "No such file or directory (os error 2)"
    assert missing.value.code == -32603
    with pytest.raises(InternalError, match=r"^No such file or directory \(os error 2\)$"):
        await pm.start(start_params("x", ["no-such-binary-xyz"]))
    with pytest.raises(InternalError, match=r"^No such file or directory \(os error 2\)$"):
        await pm.start(start_params("x", ["true"], cwd="/nonexistent/dir"))
    with pytest.raises(InternalError, match=r"^Not a directory \(os error 20\)$"):
        await pm.start(start_params("x", ["true"], cwd="/etc/passwd"))
    with pytest.raises(InternalError, match=r"^Permission denied \(os error 13\)$"):
        await pm.start(start_params("x", ["/etc/passwd"]))
    with pytest.raises(InternalError, match="nul byte"):
        await pm.start(start_params("x", ["tr\0ue"]))
    with pytest.raises(InternalError, match="nul byte"):
        await pm.start(start_params("x", ["true"], tty=True, cwd="/tm\0p"))
    # The placeholder was removed each time: the id is free.
    with pytest.raises(InvalidRequest, match=r"^unknown process id x$"):
        await read(pm, "x")
    assert (await pm.start(start_params("x", ["true"]))).process_id == "x"


async def test_invalid_start_params(pm: ProcessManager) -> None:
    with pytest.raises(InvalidParams, match=r"^argv must not be empty$") as empty:
        await pm.start(start_params("e", []))
    assert empty.value.code == -32602
    with pytest.raises(InvalidParams, match="absolute"):
        await pm.start(start_params("e", ["true"], cwd="relative/dir"))
    with pytest.raises(InvalidParams, match="absolute"):
        await pm.start(start_params("e", ["true"], cwd="."))
    with pytest.raises(InvalidParams, match="rows"):
        await pm.start(start_params("e", ["true"], tty=True, rows=0))
    assert len(pm) == 0


def test_resolve_cwd_accepts_paths_and_file_uris() -> None:
    assert resolve_cwd("/tmp") == "/tmp"
    assert resolve_cwd("file:///tmp/a%20b") == "/tmp/a b"
    assert resolve_cwd("file://localhost/srv") == "/srv"
    assert resolve_cwd("file:relative") == "/relative"  # the url crate's reading (0.171)
    for bad in ("tmp", "./x", "http://x/tmp"):
        with pytest.raises(InvalidParams):
            resolve_cwd(bad)
    with pytest.raises(InvalidRequest, match=r"'file://example\.com/tmp' is invalid on 'linux'"):
        resolve_cwd("file://example.com/tmp")


async def test_cwd_path_and_uri(pm: ProcessManager, sink: Recorder, tmp_path: Any) -> None:
    await pm.start(start_params("a", ["pwd"], cwd=str(tmp_path)))
    await pm.start(start_params("b", ["pwd"], cwd=tmp_path.as_uri()))
    await sink.wait_closed("a")
    await sink.wait_closed("b")
    assert sink.output("a") == sink.output("b") == f"{tmp_path}\n".encode()


async def test_arg0_overrides_argv0(pm: ProcessManager, sink: Recorder) -> None:
    await pm.start(start_params("a", ["sh", "-c", "echo $0"], arg0="myname"))
    await pm.start(start_params("b", ["sh", "-c", "echo $0"]))
    await sink.wait_closed("a")
    await sink.wait_closed("b")
    assert sink.output("a") == b"myname\n"
    assert sink.output("b") == b"sh\n"


async def test_env_without_policy_is_exactly_env(pm: ProcessManager, sink: Recorder) -> None:
    await pm.start(start_params("e", ["/usr/bin/env"], env={"ONLY_THIS": "1"}))
    await sink.wait_closed("e")
    assert sink.output("e") == b"ONLY_THIS=1\n"


async def test_env_policy_builds_from_server_env_then_overlays(
    pm: ProcessManager, sink: Recorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PH_TEST_VISIBLE", "yes")
    monkeypatch.setenv("PH_TEST_API_KEY", "hidden")
    monkeypatch.setenv("PH_TEST_DROP", "gone")
    policy = EnvPolicy(
        inherit="all",
        exclude=["ph_test_drop"],
        set={"PH_TEST_SET": "policy", "PH_TEST_OVER": "policy"},
        include_only=["PH_TEST_*"],
    )
    await pm.start(
        start_params(
            "e",
            ["/usr/bin/env"],
            env={"PH_TEST_OVER": "overlay", "PH_TEST_EXTRA": "x"},
            env_policy=policy,
        )
    )
    await sink.wait_closed("e")
    lines = sorted(sink.output("e").decode().splitlines())
    assert lines == [
        "PH_TEST_EXTRA=x",
        "PH_TEST_OVER=overlay",
        "PH_TEST_SET=policy",
        "PH_TEST_VISIBLE=yes",
    ]


def test_build_child_env_policy_steps() -> None:
    server = {
        "PATH": "/bin",
        "home": "/root",
        "API_KEY": "k",
        "my_secret_x": "s",
        "GH_TOKEN": "t",
        "FOO": "bar",
        "FOOD": "pizza",
    }

    def env(policy: EnvPolicy | None, overlay: dict[str, str] | None = None) -> dict[str, str]:
        params = start_params("x", ["true"], env=overlay or {}, env_policy=policy)
        return build_child_env(params, server)

    assert env(None, {"A": "1"}) == {"A": "1"}
    # Default excludes apply case-insensitively unless ignored.
    assert env(EnvPolicy(inherit="all")) == {
        "PATH": "/bin",
        "home": "/root",
        "FOO": "bar",
        "FOOD": "pizza",
    }
    assert env(EnvPolicy(inherit="all", ignore_default_excludes=True)) == server
    # Core keeps only the core names (case-insensitive).
    assert env(EnvPolicy(inherit="core", ignore_default_excludes=True)) == {
        "PATH": "/bin",
        "home": "/root",
    }
    assert env(EnvPolicy(inherit="none", set={"ONLY": "yes"})) == {"ONLY": "yes"}
    # Exclude patterns (glob, case-insensitive); set runs after excludes; include_only last.
    assert env(
        EnvPolicy(
            inherit="all",
            ignore_default_excludes=True,
            exclude=["foo?", "*KEY", "path"],
            set={"API_KEY": "reset"},
        )
    ) == {"home": "/root", "my_secret_x": "s", "GH_TOKEN": "t", "FOO": "bar", "API_KEY": "reset"}
    assert env(
        EnvPolicy(inherit="all", include_only=["*PATH", "foo"], set={"NEWPATH": "n"}),
        {"OVERLAY": "1"},
    ) == {"PATH": "/bin", "FOO": "bar", "NEWPATH": "n", "OVERLAY": "1"}


def test_env_pattern_matching() -> None:
    assert env_pattern_matches("*KEY*", "openai_api_key")
    assert env_pattern_matches("foo?", "FOOD")
    assert not env_pattern_matches("foo?", "FOO")
    assert not env_pattern_matches("[F]OO", "FOO")  # no character classes
    assert env_pattern_matches("[F]OO", "[f]oo")
    assert env_pattern_matches("a.b", "A.B") and not env_pattern_matches("a.b", "axb")


# --- PTY ----------------------------------------------------------------------------


async def test_pty_is_controlling_terminal_with_default_size(
    pm: ProcessManager, sink: Recorder
) -> None:
    script = (
        "tty; stty size; ps -o tty= -p $$; "
        "if (exec 3<>/dev/tty) 2>/dev/null; then echo ctty-ok; else echo no-ctty; fi"
    )
    await pm.start(sh("t", script, tty=True))
    await pm.start(sh("p", script))
    events = await sink.wait_closed("t")
    await sink.wait_closed("p")
    assert {e.stream for _, e in events if isinstance(e, ProcessOutputNotification)} == {"pty"}
    lines = sink.output("t").decode().split("\r\n")
    assert lines[0].startswith("/dev/pts/")
    assert lines[1] == "24 80"
    assert lines[2].strip() == lines[0].removeprefix("/dev/")
    assert lines[3] == "ctty-ok"
    # Control: without a PTY the child has no controlling terminal at all.
    assert sink.output("p").decode().splitlines()[-1] == "no-ctty"


async def test_pty_initial_size_and_resize(pm: ProcessManager, sink: Recorder) -> None:
    await pm.start(sh("t", "stty size; read x; stty size", tty=True, rows=30, cols=90))
    await sink.wait_output("t", b"30 90\r\n")
    await pm.resize(ProcessResizeParams(process_id="t", rows=40, cols=100))
    assert await write(pm, "t", b"\n") == "accepted"
    await sink.wait_closed("t")
    assert sink.output("t").endswith(b"40 100\r\n")


async def test_resize_errors(pm: ProcessManager, sink: Recorder) -> None:
    await pm.start(start_params("p", ["sleep", "5"]))
    with pytest.raises(InvalidRequest, match="no pty") as no_pty:
        await pm.resize(ProcessResizeParams(process_id="p", rows=10, cols=10))
    assert no_pty.value.code == -32600
    with pytest.raises(InvalidRequest, match=r"^unknown process id nope$"):
        await pm.resize(ProcessResizeParams(process_id="nope", rows=10, cols=10))
    await pm.start(start_params("t", ["true"], tty=True))
    with pytest.raises(InvalidParams):
        await pm.resize(ProcessResizeParams(process_id="t", rows=0, cols=10))
    await sink.wait_closed("t")
    with pytest.raises(InvalidRequest, match="closed"):
        await pm.resize(ProcessResizeParams(process_id="t", rows=10, cols=10))


async def test_pty_stdin_echo(pm: ProcessManager, sink: Recorder) -> None:
    await pm.start(sh("t", "read line; echo from-stdin:$line", tty=True))
    assert await write(pm, "t", b"hello\n") == "accepted"
    await sink.wait_closed("t")
    # The terminal echoes the input, then the child's answer; CRLF line endings.
    assert sink.output("t") == b"hello\r\nfrom-stdin:hello\r\n"
    assert await write(pm, "t", b"more\n") == "stdinClosed"


# --- stdin --------------------------------------------------------------------------


async def test_no_pipe_stdin_sees_eof_and_write_is_stdin_closed(
    pm: ProcessManager, sink: Recorder
) -> None:
    await pm.start(sh("n", "sleep 0.1; read x || echo eof"))
    assert await write(pm, "n", b"x\n") == "stdinClosed"
    await sink.wait_closed("n")
    assert sink.output("n") == b"eof\n"


async def test_pipe_stdin_exact_output_and_empty_chunk_closes_stdin(
    pm: ProcessManager, sink: Recorder
) -> None:
    await pm.start(start_params("c", ["cat"], pipe_stdin=True))
    assert await write(pm, "c", b"abc\n") == "accepted"
    assert await write(pm, "c", b"def") == "accepted"
    await sink.wait_output("c", b"abc\ndef")
    r = await read(pm, "c")
    assert not r.exited
    # Extension: an empty chunk closes stdin, so cat sees EOF and exits.
    assert await write(pm, "c", b"") == "accepted"
    events = await sink.wait_closed("c")
    assert sink.output("c") == b"abc\ndef"
    assert [e.exit_code for _, e in events if isinstance(e, ProcessExitedNotification)] == [0]
    assert await write(pm, "c", b"late") == "stdinClosed"


async def test_large_stdin_write_is_queued_in_order(pm: ProcessManager, sink: Recorder) -> None:
    data = bytes(range(256)) * 8192  # 2 MiB: far more than a pipe holds
    await pm.start(sh("w", "sleep 0.1; sha256sum", pipe_stdin=True))
    started = time.monotonic()
    assert await write(pm, "w", data[:1_000_000]) == "accepted"
    assert await write(pm, "w", data[1_000_000:]) == "accepted"
    assert await write(pm, "w", b"") == "accepted"
    # Queuing never blocked the event loop on the sleeping child.
    assert time.monotonic() - started < 0.05
    await sink.wait_closed("w")
    assert sink.output("w").split()[0].decode() == hashlib.sha256(data).hexdigest()


async def test_pending_stdin_limit(sink: Recorder) -> None:
    async with _manager(sink, ProcessLimits(max_pending_stdin_bytes=4 * 1024 * 1024)) as pm:
        await pm.start(start_params("s", ["sleep", "5"], pipe_stdin=True))
        assert await write(pm, "s", b"x" * 3_000_000) == "accepted"
        with pytest.raises(InvalidRequest, match="stdin buffer is full"):
            await write(pm, "s", b"x" * 3_000_000)


async def test_write_after_child_closed_stdin(pm: ProcessManager, sink: Recorder) -> None:
    await pm.start(sh("c", "exec 0<&-; sleep 5", pipe_stdin=True))
    await asyncio.sleep(0.1)
    # The first write meets EPIPE (the reader is gone) and later ones see it closed.
    assert await write(pm, "c", b"x") == "stdinClosed"
    assert await write(pm, "c", b"x") == "stdinClosed"


# --- process/read -------------------------------------------------------------------


async def test_read_max_bytes_whole_chunks(sink: Recorder) -> None:
    async with _manager(sink, ProcessLimits(output_chunk_bytes=4)) as pm:
        await pm.start(sh("m", "printf aaaabbbbcccc"))
        await sink.wait_closed("m")

        async def seqs(**kw: Any) -> tuple[list[int], int]:
            r = await read(pm, "m", **kw)
            return [c.seq for c in r.chunks], r.next_seq

        assert await seqs() == ([1, 2, 3], 4)
        assert await seqs(max_bytes=1) == ([1], 2)  # the first chunk always goes
        assert await seqs(max_bytes=0) == ([1], 2)
        assert await seqs(max_bytes=5) == ([1], 2)
        assert await seqs(max_bytes=8) == ([1, 2], 3)
        assert await seqs(after_seq=1, max_bytes=9) == ([2, 3], 4)
        assert await seqs(after_seq=3) == ([], 6)  # exited 4, closed 5
        assert await seqs(after_seq=100) == ([], 6)


async def test_read_long_poll_wakes_on_output(pm: ProcessManager) -> None:
    await pm.start(sh("w", "sleep 0.2; echo hi; sleep 5"))
    started = time.monotonic()
    r = await read(pm, "w", wait_ms=5000)
    elapsed = time.monotonic() - started
    assert chunk_bytes(r) == b"hi\n"
    assert 0.15 < elapsed < 1.5
    assert not r.exited


async def test_read_long_poll_wakes_on_exit_without_output(pm: ProcessManager) -> None:
    await pm.start(start_params("w", ["sleep", "0.15"]))
    started = time.monotonic()
    r = await read(pm, "w", wait_ms=5000)
    assert time.monotonic() - started < 1.5
    assert r.exited and r.exit_code == 0 and r.chunks == []


async def test_read_wait_expires(pm: ProcessManager) -> None:
    await pm.start(start_params("w", ["sleep", "5"]))
    started = time.monotonic()
    r = await read(pm, "w", wait_ms=150)
    elapsed = time.monotonic() - started
    assert 0.14 < elapsed < 1.0
    assert (r.chunks, r.next_seq, r.exited, r.exit_code, r.closed) == ([], 1, False, None, False)
    # waitMs 0 / absent returns at once.
    started = time.monotonic()
    await read(pm, "w")
    assert time.monotonic() - started < 0.05


async def test_read_errors(pm: ProcessManager) -> None:
    with pytest.raises(InvalidRequest, match=r"^unknown process id nope$") as unknown:
        await read(pm, "nope")
    assert unknown.value.code == -32600
    await pm.start(start_params("p", ["true"]))
    with pytest.raises(InvalidParams, match="expected u64"):
        await read(pm, "p", wait_ms=-1)
    with pytest.raises(InvalidParams, match="expected u64"):
        await read(pm, "p", after_seq=-1)


@pytest.mark.parametrize("chunk_bytes", [64, 8192, 131072, 1024 * 1024])
async def test_evicted_output_is_released_whatever_the_chunk_size(
    sink: Recorder, chunk_bytes: int
) -> None:
    """Memory held for retention stays near the limit: evicted chunks must not stay
    referenced (a list compacted only every 1024 evictions once held 1024 chunks of
    1 MiB per process, for 30 s after it closed)."""
    limit = 256 * 1024
    total = 16 * 1024 * 1024 if chunk_bytes >= 8192 else 2 * 1024 * 1024
    async with _manager(sink, ProcessLimits(retained_output_bytes=limit)) as pm:
        await pm.start(
            start_params(
                "big", ["head", "-c", str(total), "/dev/zero"], output_chunk_bytes=chunk_bytes
            )
        )
        await sink.wait_closed("big")
        process = pm._processes["big"]
        assert isinstance(process, ChildProcess)
        held = process.output.held_bytes
        assert held <= limit + limit // 4 + chunk_bytes, held
    assert len(sink.output("big")) == total


async def test_eviction_reports_first_retained_seq(sink: Recorder) -> None:
    limits = ProcessLimits(retained_output_bytes=64 * 1024, output_chunk_bytes=8192)
    async with _manager(sink, limits) as pm:
        await pm.start(start_params("big", ["head", "-c", "300000", "/dev/zero"]))
        await sink.wait_closed("big")
        r = await read(pm, "big")
        assert 56 * 1024 < len(chunk_bytes(r)) <= 64 * 1024
        first = r.chunks[0].seq
        assert first > 1 and r.first_retained_seq == first
        assert b'"firstRetainedSeq":%d' % first in msgspec.json.encode(r)
        # Nothing missing after first-1: no gap, field absent from the wire.
        r = await read(pm, "big", after_seq=first - 1)
        assert r.first_retained_seq is UNSET
        assert b"firstRetainedSeq" not in msgspec.json.encode(r)
        r = await read(pm, "big", after_seq=first - 2, max_bytes=1)
        assert r.first_retained_seq == first and len(r.chunks) == 1


async def test_tiny_chunks_are_bounded_by_count(sink: Recorder) -> None:
    limits = ProcessLimits(retained_output_bytes=64 * 64)  # at most 64 retained chunks
    async with _manager(sink, limits) as pm:
        await pm.start(sh("t", "for i in $(seq 300); do printf x; sleep 0.001; done"))
        await sink.wait_closed("t")
        r = await read(pm, "t")
        assert len(r.chunks) <= 64
        assert r.first_retained_seq == r.chunks[0].seq


# --- ids, limits and retention -------------------------------------------------------


async def test_duplicate_process_ids(pm: ProcessManager) -> None:
    results = await asyncio.gather(
        pm.start(start_params("dup", ["sleep", "5"])),
        pm.start(start_params("dup", ["sleep", "5"])),
        return_exceptions=True,
    )
    ok = [r for r in results if not isinstance(r, BaseException)]
    errors = [r for r in results if isinstance(r, BaseException)]
    assert len(ok) == 1 and len(errors) == 1
    assert isinstance(errors[0], InvalidRequest)
    assert errors[0].message == "process dup already exists"
    with pytest.raises(InvalidRequest, match=r"^process dup already exists$"):
        await pm.start(start_params("dup", ["true"]))


async def test_starting_state(
    pm: ProcessManager, sink: Recorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    gate = asyncio.Event()
    real_spawn = pm._spawn

    async def slow_spawn(*args: Any) -> Any:
        await gate.wait()
        return await real_spawn(*args)

    monkeypatch.setattr(pm, "_spawn", slow_spawn)
    starting = asyncio.create_task(pm.start(sh("s", "echo up")))
    await asyncio.sleep(0.01)
    with pytest.raises(InvalidRequest, match=r"^process id s is starting$"):
        await read(pm, "s")
    assert await write(pm, "s", b"x") == "starting"
    assert (await pm.terminate(ProcessTerminateParams(process_id="s"))).running is False
    # Like an unknown process (0.171's answer): nothing to signal yet.
    assert await pm.signal(ProcessSignalParams(process_id="s", signal="interrupt")) == Empty()
    with pytest.raises(InvalidRequest, match=r"^process s already exists$"):
        await pm.start(start_params("s", ["true"]))
    gate.set()
    assert (await starting).process_id == "s"
    await sink.wait_closed("s")
    assert sink.output("s") == b"up\n"


async def test_closed_process_is_forgotten_after_retention(sink: Recorder) -> None:
    async with _manager(sink, ProcessLimits(closed_process_retention_s=0.05)) as pm:
        await pm.start(sh("r", "echo one"))
        await sink.wait_closed("r")
        assert chunk_bytes(await read(pm, "r")) == b"one\n"
        await asyncio.sleep(0.15)
        with pytest.raises(InvalidRequest, match=r"^unknown process id r$"):
            await read(pm, "r")
        sink.events.clear()
        await pm.start(sh("r", "echo two"))
        events = await sink.wait_closed("r")
        assert events[0][1].seq == 1  # type: ignore[attr-defined]
        assert sink.output("r") == b"two\n"


async def test_max_processes(sink: Recorder) -> None:
    async with _manager(sink, ProcessLimits(max_processes=2)) as pm:
        await pm.start(start_params("done", ["true"]))
        await sink.wait_closed("done")
        await pm.start(start_params("a", ["sleep", "5"]))
        # At the limit, the oldest closed entry gives way ...
        await pm.start(start_params("b", ["sleep", "5"]))
        with pytest.raises(InvalidRequest, match="unknown process id done"):
            await read(pm, "done")
        # ... but live processes do not.
        with pytest.raises(InvalidRequest, match="too many processes: limit is 2") as err:
            await pm.start(start_params("c", ["true"]))
        assert err.value.code == -32600


# --- terminate and signal -------------------------------------------------------------


async def test_terminate_kills_process_group_including_grandchild(
    pm: ProcessManager, sink: Recorder
) -> None:
    await pm.start(sh("t", "trap 'echo got-term' TERM; sleep 30 & echo $!; wait"))
    await sink.wait_output("t", b"\n")
    grandchild = psutil.Process(int(sink.output("t")))
    assert (await pm.terminate(ProcessTerminateParams(process_id="t"))).running is True
    events = await sink.wait_closed("t")
    # SIGKILL, as 0.133: the TERM trap never runs and the exit code is -1.
    assert b"got-term" not in sink.output("t")
    assert [e.exit_code for _, e in events if isinstance(e, ProcessExitedNotification)] == [-1]
    assert _gone(grandchild)
    assert (await pm.terminate(ProcessTerminateParams(process_id="t"))).running is False


async def test_terminate_unknown_and_exited(pm: ProcessManager, sink: Recorder) -> None:
    assert (await pm.terminate(ProcessTerminateParams(process_id="nope"))).running is False
    await pm.start(start_params("t", ["true"]))
    await sink.wait_closed("t")
    assert (await pm.terminate(ProcessTerminateParams(process_id="t"))).running is False


async def test_terminate_pty_process(pm: ProcessManager, sink: Recorder) -> None:
    await pm.start(start_params("t", ["sleep", "30"], tty=True))
    assert (await pm.terminate(ProcessTerminateParams(process_id="t"))).running is True
    events = await sink.wait_closed("t")
    assert [e.exit_code for _, e in events if isinstance(e, ProcessExitedNotification)] == [-1]


async def test_signal_interrupt_runs_int_trap(pm: ProcessManager, sink: Recorder) -> None:
    script = "trap 'echo signal:2; exit 7' INT; echo ready; while :; do sleep 0.05; done"
    await pm.start(sh("i", script))
    await sink.wait_output("i", b"ready\n")
    await pm.signal(ProcessSignalParams(process_id="i", signal="interrupt"))
    events = await sink.wait_closed("i")
    assert b"signal:2" in sink.output("i")
    assert [e.exit_code for _, e in events if isinstance(e, ProcessExitedNotification)] == [7]


@pytest.mark.parametrize(
    ("name", "signum"),
    [("terminate", signal.SIGTERM), ("hangup", signal.SIGHUP), ("quit", signal.SIGQUIT)],
)
async def test_signal_names(
    pm: ProcessManager, sink: Recorder, name: Any, signum: signal.Signals
) -> None:
    script = f"trap 'echo got:{int(signum)}; exit 3' {signum.name[3:]}; echo ready; "
    script += "while :; do sleep 0.05; done"
    await pm.start(sh("s", script))
    await sink.wait_output("s", b"ready\n")
    await pm.signal(ProcessSignalParams(process_id="s", signal=name))
    await sink.wait_closed("s")
    assert f"got:{int(signum)}".encode() in sink.output("s")


async def test_signal_kill_and_errors(pm: ProcessManager, sink: Recorder) -> None:
    # 0.171 answers {} for an unknown process; so do we.
    assert await pm.signal(ProcessSignalParams(process_id="nope", signal="interrupt")) == Empty()
    await pm.start(start_params("k", ["sleep", "30"]))
    await pm.signal(ProcessSignalParams(process_id="k", signal="kill"))
    events = await sink.wait_closed("k")
    assert [e.exit_code for _, e in events if isinstance(e, ProcessExitedNotification)] == [-1]
    # Signalling a closed process is a harmless no-op.
    await pm.signal(ProcessSignalParams(process_id="k", signal="interrupt"))


async def test_pty_interrupt_reaches_foreground_job(pm: ProcessManager, sink: Recorder) -> None:
    script = "trap 'echo signal:2; exit 7' INT; echo ready; while :; do sleep 0.05; done"
    await pm.start(sh("i", script, tty=True))
    await sink.wait_output("i", b"ready")
    await pm.signal(ProcessSignalParams(process_id="i", signal="interrupt"))
    events = await sink.wait_closed("i")
    assert b"signal:2" in sink.output("i")
    assert [e.exit_code for _, e in events if isinstance(e, ProcessExitedNotification)] == [7]


async def test_pty_signal_after_leader_exit_targets_child_group(
    pm: ProcessManager, sink: Recorder
) -> None:
    # The leader exits; its background child keeps the PTY open. The terminal then
    # has no foreground group (tcgetpgrp gives 0): signals must still go to the
    # child's group, never to killpg(0), which would be the server's own group.
    await pm.start(sh("t", "(trap '' HUP; sleep 30) & echo $!; sleep 0.1; exit 0", tty=True))
    r = await read(pm, "t", wait_ms=2000)
    while not r.exited:
        r = await read(pm, "t", after_seq=r.next_seq - 1, wait_ms=2000)
    assert not r.closed
    sleeper = psutil.Process(int(sink.output("t")))
    # (Background jobs of a non-interactive sh ignore SIGINT, so use SIGTERM.)
    await pm.signal(ProcessSignalParams(process_id="t", signal="terminate"))
    await sink.wait_closed("t")
    assert _gone(sleeper)


# --- backpressure --------------------------------------------------------------------


async def test_slow_sink_stalls_only_that_process() -> None:
    gate = asyncio.Event()
    recorder = Recorder()

    async def sink(method: str, message: Message) -> None:
        if getattr(message, "process_id", None) == "slow":
            await gate.wait()
        await recorder(method, message)

    total = 20_000_000
    async with _manager(sink) as pm:
        await pm.start(start_params("slow", ["head", "-c", str(total), "/dev/zero"]))
        await pm.start(sh("fast", "echo hi"))
        await recorder.wait_closed("fast")
        await asyncio.sleep(0.2)
        # The slow process's reader is paused, so its child is blocked on a full pipe.
        r = await read(pm, "slow")
        assert not r.exited
        assert r.next_seq * 8192 < 4 * 1024 * 1024
        gate.set()
        await recorder.wait_closed("slow")
        assert len(recorder.output("slow")) == total


async def test_failing_sink_does_not_stall_process() -> None:
    async def sink(method: str, message: Message) -> None:
        raise RuntimeError("boom")

    async with _manager(sink) as pm:
        await pm.start(sh("f", "echo hi"))
        r = await read(pm, "f", wait_ms=2000)
        while not r.closed:
            r = await read(pm, "f", after_seq=r.next_seq - 1, wait_ms=2000)
        assert chunk_bytes(await read(pm, "f")) == b"hi\n"


async def test_exit_watch_without_pidfd(
    pm: ProcessManager, sink: Recorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_pidfd(pid: int, flags: int = 0) -> int:
        raise OSError(38, "Function not implemented")

    monkeypatch.setattr(os, "pidfd_open", no_pidfd)
    await pm.start(sh("w", "echo hi; exit 3"))
    events = await sink.wait_closed("w")
    assert [e.exit_code for _, e in events if isinstance(e, ProcessExitedNotification)] == [3]


# --- close() --------------------------------------------------------------------------


async def test_close_kills_everything_and_leaks_nothing(sink: Recorder) -> None:
    fds_before = _open_fds()
    pm = ProcessManager(sink)
    await pm.start(start_params("pipes", ["sleep", "30"]))
    await pm.start(start_params("pty", ["sleep", "30"], tty=True))
    await pm.start(sh("group", "sleep 30 & sleep 30 & wait"))
    await pm.start(sh("escaped", "setsid sleep 30 & wait"))
    await pm.start(sh("exited", "sleep 30 & echo $!; exit 0"))
    await pm.start(start_params("stdin", ["sleep", "30"], pipe_stdin=True))
    assert await write(pm, "stdin", b"x" * 1_000_000) == "accepted"  # leaves a queue
    await pm.start(start_params("done", ["true"]))
    await sink.wait_closed("done")
    # Closed, but its daemonized child (stdio detached) lives on in the group.
    await pm.start(sh("daemon", "sleep 30 >/dev/null 2>&1 & echo $!"))
    await sink.wait_closed("daemon")
    daemon = psutil.Process(int(sink.output("daemon")))
    await sink.wait_for(
        lambda: any(isinstance(e, ProcessExitedNotification) for _, e in sink.of("exited"))
    )
    await asyncio.sleep(0.1)  # let the shells fork their children
    me = psutil.Process()
    spawned = me.children(recursive=True)
    assert len(spawned) == 8  # 3 shells, 5 sleeps
    # The shell of "exited" is gone: its sleep was reparented away from us.
    orphan = psutil.Process(int(sink.output("exited")))
    assert orphan not in spawned
    waiter = asyncio.create_task(read(pm, "pipes", wait_ms=5000))
    await asyncio.sleep(0.01)

    started = time.monotonic()
    await pm.close()
    assert time.monotonic() - started < 1.0
    assert all(_gone(p) for p in spawned)
    assert me.children(recursive=True) == []
    # The orphans were still in their process groups, so the group kill reached them.
    assert _gone(orphan)
    assert _gone(daemon)
    r = await asyncio.wait_for(waiter, 1)  # the parked read was released
    assert r.exited and r.exit_code == -1
    assert _open_fds() == fds_before
    assert [t for t in asyncio.all_tasks() if t is not asyncio.current_task()] == []
    await pm.close()  # idempotent
    with pytest.raises(InvalidRequest, match="shut down"):
        await pm.start(start_params("late", ["true"]))


async def test_close_while_start_in_progress(sink: Recorder, monkeypatch: Any) -> None:
    pm = ProcessManager(sink)
    gate = asyncio.Event()
    real_spawn = pm._spawn
    spawned_pids: list[int] = []

    async def slow_spawn(*args: Any) -> Any:
        await gate.wait()
        result = await real_spawn(*args)
        spawned_pids.append(result.popen.pid)
        return result

    monkeypatch.setattr(pm, "_spawn", slow_spawn)
    starting = asyncio.create_task(pm.start(start_params("s", ["sleep", "30"])))
    await asyncio.sleep(0.01)
    await pm.close()
    gate.set()
    with pytest.raises(InvalidRequest, match="shut down"):
        await starting
    assert len(spawned_pids) == 1
    assert not psutil.pid_exists(spawned_pids[0])  # killed and reaped


# --- helpers ------------------------------------------------------------------------


class _manager:
    """``async with _manager(sink, limits) as pm`` closes the manager on exit."""

    def __init__(self, sink: Any, limits: ProcessLimits | None = None) -> None:
        self.pm = ProcessManager(sink, limits or ProcessLimits())

    async def __aenter__(self) -> ProcessManager:
        return self.pm

    async def __aexit__(self, *exc: object) -> None:
        await self.pm.close()


def _gone(process: psutil.Process, timeout: float = 1.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if process.status() == psutil.STATUS_ZOMBIE:
                return True  # dead; reaping an orphan is init's job
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.01)
    return False


def _open_fds() -> list[str]:
    return sorted(os.listdir("/proc/self/fd"))
