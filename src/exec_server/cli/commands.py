"""Commands for people, built on the harness SDK: run, shell, cp, envs."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import signal
import sys
import termios
import time
import tty
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import aiohttp
import click

from ..client import ExecServerClient, ExitedEvent, FailedEvent, OutputEvent, TransportClosed
from ..protocol import messages as m
from ..protocol.errors import METHOD_NOT_FOUND, ServerError
from ..protocol.path_uri import parse_wire_path
from ..transport.relay import RelayStatus
from .target import Target, TargetError, target_options

#: Bytes per fs/readFile or fs/writeFile call in `cp`.
CP_CHUNK_BYTES = 8 * 1024 * 1024
#: Chunk requests in flight at once in `cp` (hides round trips).
CP_PIPELINE_DEPTH = 4
#: Exit status when the remote process died of a signal (its number is not reported).
SIGNALED_EXIT_STATUS = 255


def _run_async(coro: Any) -> Any:
    try:
        return asyncio.run(coro)
    except ServerError as exc:
        raise click.ClickException(f"exec-server error: {exc.message} (code {exc.code})") from None


async def _environment_info(client: ExecServerClient) -> m.EnvironmentInfoResult:
    """The server's shell and directories; Codex 0.133 lacks the method, so fall back."""
    try:
        return await client.environment_info()
    except ServerError as exc:
        if exc.code != METHOD_NOT_FOUND:
            raise
        return m.EnvironmentInfoResult(shell=m.ShellInfo(name="sh", path="/bin/sh"))


async def _default_cwd(client: ExecServerClient) -> str:
    info = await _environment_info(client)
    # environment/info gives Codex 0.171's file:// URIs; start_process takes a path.
    return parse_wire_path(info.cwd).native if isinstance(info.cwd, str) else "/"


# --- run --------------------------------------------------------------------------------


@click.command(context_settings={"ignore_unknown_options": True})
@target_options
@click.option("--cwd", help="Working directory on the environment (default: the server's).")
@click.option("--env", "env_pairs", multiple=True, metavar="K=V", help="Set a variable.")
@click.option("--tty", "use_tty", is_flag=True, help="Run under a PTY.")
@click.option("-i", "--interactive", is_flag=True, help="Forward local stdin.")
@click.argument("argv", nargs=-1, required=True, type=click.UNPROCESSED)
def run(
    url: str | None,
    rendezvous: str | None,
    environment_id: str | None,
    token_file: Path | None,
    cwd: str | None,
    env_pairs: tuple[str, ...],
    use_tty: bool,
    interactive: bool,
    argv: tuple[str, ...],
) -> None:
    """Run a command on the environment: live output, its exit code as ours.

    Ctrl-C is forwarded as an interrupt; a second Ctrl-C terminates the process.
    """
    target = Target.resolve(url, rendezvous, environment_id, token_file)
    env = {}
    for pair in env_pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise click.UsageError(f"--env expects K=V, got {pair!r}")
        env[key] = value
    code = _run_async(_run(target, list(argv), cwd, env, use_tty, interactive))
    sys.exit(code)


def _print_relay_status(status: RelayStatus) -> None:
    """Tell the person at the terminal why nothing is happening (stderr)."""
    if status.state == "offline":
        wait = f" up to {status.grace_s:.0f}s" if status.grace_s is not None else ""
        click.echo(f"exec-server: the environment is offline; waiting{wait} for it", err=True)
    elif status.state == "online":
        click.echo("exec-server: the environment is back online", err=True)
    elif status.state == "reconnecting":
        click.echo(f"exec-server: lost the rendezvous ({status.detail}); reconnecting", err=True)
    elif status.state == "reconnected":
        click.echo("exec-server: reconnected to the rendezvous", err=True)


async def _run(
    target: Target,
    argv: list[str],
    cwd: str | None,
    env: dict[str, str],
    use_tty: bool,
    interactive: bool,
) -> int:
    async with await target.connect(on_relay_status=_print_relay_status) as client:
        proc = await client.start_process(
            argv,
            cwd=cwd or await _default_cwd(client),
            env=env,
            env_policy=m.EnvPolicy(inherit="all", ignore_default_excludes=True),
            tty=use_tty,
            pipe_stdin=interactive,
        )
        loop = asyncio.get_running_loop()
        interrupts = 0
        actions: set[asyncio.Task[Any]] = set()

        def on_sigint() -> None:
            nonlocal interrupts
            interrupts += 1
            action = proc.signal("interrupt") if interrupts == 1 else proc.terminate()
            task = loop.create_task(action)
            actions.add(task)
            task.add_done_callback(actions.discard)

        loop.add_signal_handler(signal.SIGINT, on_sigint)
        pump = (
            loop.create_task(_pump_stdin(client, proc.process_id, close=not use_tty))
            if interactive
            else None
        )
        exit_code: int | None = None
        try:
            async for event in proc:
                if isinstance(event, OutputEvent):
                    out = sys.stderr if event.stream == "stderr" else sys.stdout
                    out.buffer.write(event.data)
                    out.buffer.flush()
                elif isinstance(event, ExitedEvent):
                    exit_code = event.exit_code
                elif isinstance(event, FailedEvent):
                    raise click.ClickException(event.message)
        finally:
            loop.remove_signal_handler(signal.SIGINT)
            if pump is not None:
                pump.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await pump
        if exit_code is None or exit_code < 0:
            return 130 if interrupts else SIGNALED_EXIT_STATUS
        return exit_code


async def _pump_stdin(client: ExecServerClient, process_id: str, *, close: bool) -> None:
    """Copy local stdin to the process; EOF closes its stdin (pipes only)."""
    loop = asyncio.get_running_loop()
    fd = sys.stdin.fileno()
    while True:
        data = await loop.run_in_executor(None, os.read, fd, 65536)
        if not data:
            if close:
                await client.write_process(process_id, b"")
            return
        status = await client.write_process(process_id, data)
        if status != "accepted":
            return


# --- shell ------------------------------------------------------------------------------


@click.command()
@target_options
@click.option("--cwd", help="Starting directory (default: the server user's home).")
def shell(
    url: str | None,
    rendezvous: str | None,
    environment_id: str | None,
    token_file: Path | None,
    cwd: str | None,
) -> None:
    """An interactive shell on the environment, like ssh."""
    if not sys.stdin.isatty() or not sys.stdout.isatty():
        raise click.UsageError("exec-server shell needs a terminal (use `run` for scripts)")
    target = Target.resolve(url, rendezvous, environment_id, token_file)
    sys.exit(_run_async(_shell(target, cwd)))


async def _shell(target: Target, cwd: str | None) -> int:
    async with await target.connect() as client:
        info = await _environment_info(client)
        home = parse_wire_path(info.user_home_dir).native if info.user_home_dir else "/"
        size = os.get_terminal_size(sys.stdin.fileno())
        proc = await client.start_process(
            [info.shell.path, "-l"],
            cwd=cwd or home,
            env={"TERM": os.environ.get("TERM", "xterm-256color")},
            env_policy=m.EnvPolicy(inherit="all", ignore_default_excludes=True),
            tty=True,
            rows=size.lines,
            cols=size.columns,
        )
        loop = asyncio.get_running_loop()
        stdin_fd = sys.stdin.fileno()
        saved = termios.tcgetattr(stdin_fd)
        queue: asyncio.Queue[bytes] = asyncio.Queue()

        def on_stdin() -> None:
            try:
                data = os.read(stdin_fd, 65536)
            except OSError:
                data = b""
            queue.put_nowait(data)

        resizes: set[asyncio.Task[None]] = set()

        def on_winch() -> None:
            cols, rows = os.get_terminal_size(stdin_fd)
            task = loop.create_task(proc.resize(rows, cols))
            resizes.add(task)
            task.add_done_callback(resizes.discard)

        async def forward_input() -> None:
            while data := await queue.get():
                if await proc.write(data) != "accepted":
                    return

        exit_code: int | None = None
        try:
            tty.setraw(stdin_fd)
            loop.add_reader(stdin_fd, on_stdin)
            loop.add_signal_handler(signal.SIGWINCH, on_winch)
            forwarder = loop.create_task(forward_input())
            try:
                async for event in proc:
                    if isinstance(event, OutputEvent):
                        os.write(sys.stdout.fileno(), event.data)
                    elif isinstance(event, ExitedEvent):
                        exit_code = event.exit_code
                    elif isinstance(event, FailedEvent):
                        raise click.ClickException(event.message)
            finally:
                forwarder.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await forwarder
        finally:
            # Restore the terminal on every exit path, errors and Ctrl-C included.
            loop.remove_reader(stdin_fd)
            loop.remove_signal_handler(signal.SIGWINCH)
            termios.tcsetattr(stdin_fd, termios.TCSADRAIN, saved)
        if exit_code is None or exit_code < 0:
            return SIGNALED_EXIT_STATUS
        return exit_code


# --- cp ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Location:
    remote: bool
    path: str
    environment_id: str | None = None


def _parse_location(spec: str) -> _Location:
    """``ENV:/abs/path`` is on an environment; anything else is local."""
    head, sep, tail = spec.partition(":")
    if sep and tail.startswith("/") and "/" not in head and head not in (".", ".."):
        return _Location(True, tail, head or None)
    return _Location(False, spec)


class _Progress:
    """A one-line progress bar on stderr, only when stderr is a terminal."""

    def __init__(self, label: str, total: int) -> None:
        self.label = label
        self.total = total
        self.done = 0
        self.started = time.monotonic()
        self.enabled = sys.stderr.isatty()
        self._last = 0.0

    def advance(self, nbytes: int) -> None:
        self.done += nbytes
        now = time.monotonic()
        if self.enabled and (now - self._last > 0.1 or self.done >= self.total):
            self._last = now
            rate = self.done / max(now - self.started, 1e-6)
            pct = 100.0 if self.total == 0 else 100.0 * self.done / self.total
            width = 30
            filled = int(width * pct / 100)
            sys.stderr.write(
                f"\r{self.label} [{'#' * filled}{'.' * (width - filled)}] {pct:5.1f}% "
                f"{_human(self.done)}/{_human(self.total)} {_human(int(rate))}/s "
            )
            sys.stderr.flush()

    def finish(self) -> None:
        if self.enabled:
            sys.stderr.write("\n")


def _human(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.1f} {unit}" if unit != "B" else f"{int(value)} B"
        value /= 1024
    return f"{value:.1f} GiB"


@click.command()
@target_options
@click.argument("source")
@click.argument("destination")
def cp(
    url: str | None,
    rendezvous: str | None,
    environment_id: str | None,
    token_file: Path | None,
    source: str,
    destination: str,
) -> None:
    """Copy a file to or from an environment: `cp ./f ENV:/tmp/f`, `cp ENV:/tmp/f ./f`.

    Streams in chunks (any size), shows progress on a terminal, and verifies the
    SHA-256 of the copy against the source.
    """
    src, dst = _parse_location(source), _parse_location(destination)
    if src.remote == dst.remote:
        raise click.UsageError("exactly one of SOURCE and DESTINATION must be ENV:/path")
    remote = src if src.remote else dst
    target = Target.resolve(url, rendezvous, environment_id, token_file).with_environment(
        remote.environment_id
    )
    if src.remote:
        local = Path(dst.path)
        if local.is_dir():
            local = local / Path(src.path).name
        _run_async(_download(target, src.path, local))
    else:
        local = Path(src.path)
        if local.is_dir():
            raise click.UsageError(f"{src.path} is a directory; cp copies files")
        try:
            fh = local.open("rb")
        except OSError as exc:
            raise click.ClickException(f"cannot read {local}: {exc}") from None
        with fh:
            _run_async(_upload(target, local, fh, dst.path))


async def _upload(target: Target, local: Path, fh: BinaryIO, remote_path: str) -> None:
    total = os.fstat(fh.fileno()).st_size
    if remote_path.endswith("/"):
        remote_path += local.name
    progress = _Progress(f"{local.name} ->", total)
    digest = hashlib.sha256()
    async with await target.connect(on_relay_status=_print_relay_status) as client:
        pending: set[asyncio.Future[None]] = set()

        async def put(chunk: bytes, at: int) -> None:
            await client.write_file(remote_path, chunk, offset=at)
            progress.advance(len(chunk))

        with contextlib.suppress(ServerError):  # absent is fine; a directory is not ours
            if (await client.get_metadata(remote_path)).is_directory:
                raise click.ClickException(f"{remote_path} is a directory; cp copies files")
        try:
            first = fh.read(CP_CHUNK_BYTES)
            digest.update(first)
            await client.write_file(remote_path, first)  # creates or truncates
            progress.advance(len(first))
            offset = len(first)
            while chunk := fh.read(CP_CHUNK_BYTES):
                digest.update(chunk)
                if len(pending) >= CP_PIPELINE_DEPTH:
                    done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                    _raise_first_failure(done)
                pending.add(asyncio.ensure_future(put(chunk, offset)))
                offset += len(chunk)
            if pending:
                await asyncio.wait(pending)
            done, pending = pending, set()
            _raise_first_failure(done)
        except (ServerError, TransportClosed) as exc:
            raise click.ClickException(
                f"upload to {remote_path} failed: {exc.message}; "
                + await _remove_partial(client, remote_path, pending)
            ) from None
        progress.finish()
        remote = await client.checksum(remote_path)
    if remote.digest != digest.hexdigest() or remote.size != total:
        raise click.ClickException(
            f"checksum mismatch after upload: local sha256 {digest.hexdigest()} "
            f"({total} bytes), remote {remote.digest} ({remote.size} bytes)"
        )
    click.echo(f"copied {_human(total)} to {remote_path} (sha256 {remote.digest[:16]}…)", err=True)


def _raise_first_failure(done: set[asyncio.Future[None]]) -> None:
    """Raise the first failure among finished writes (every one's is retrieved)."""
    failures = [exc for task in done if (exc := task.exception()) is not None]
    if failures:
        raise failures[0]


async def _remove_partial(
    client: ExecServerClient, remote_path: str, pending: set[asyncio.Future[None]]
) -> str:
    """Remove what a failed upload left, so no partial file passes for the whole one."""
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    try:
        await client.remove(remote_path, recursive=False, force=True)
    except TransportClosed:
        return "the partial file may remain (the environment is unreachable)"
    except ServerError as exc:
        return f"the partial file may remain ({exc.message})"
    return "the partial file was removed"


async def _download(target: Target, remote_path: str, local: Path) -> None:
    async with await target.connect(on_relay_status=_print_relay_status) as client:
        meta = await client.get_metadata(remote_path)
        if meta.is_directory:
            raise click.UsageError(f"{remote_path} is a directory; cp copies files")
        total = meta.size
        progress = _Progress(f"{Path(remote_path).name} <-", total)
        digest = hashlib.sha256()
        tmp = local.with_name(f".{local.name}.part")
        with tmp.open("wb") as fh:
            offset = 0
            window: list[asyncio.Future[bytes]] = []

            def request(at: int) -> asyncio.Future[bytes]:
                return asyncio.ensure_future(
                    client.read_file(remote_path, offset=at, length=CP_CHUNK_BYTES)
                )

            next_request = 0
            while True:
                while len(window) < CP_PIPELINE_DEPTH and next_request <= total:
                    window.append(request(next_request))
                    next_request += CP_CHUNK_BYTES
                if not window:
                    break
                data = await window.pop(0)
                if not data:
                    break
                fh.write(data)
                digest.update(data)
                offset += len(data)
                progress.advance(len(data))
                if len(data) < CP_CHUNK_BYTES and offset >= total:
                    break
            for pending in window:
                pending.cancel()
                with contextlib.suppress(asyncio.CancelledError, ServerError):
                    await pending
        progress.finish()
        remote = await client.checksum(remote_path)
    if remote.digest != digest.hexdigest():
        tmp.unlink(missing_ok=True)
        raise click.ClickException(
            f"checksum mismatch after download (the file changed while copying?): "
            f"remote sha256 {remote.digest}, received {digest.hexdigest()}"
        )
    tmp.replace(local)
    click.echo(f"copied {_human(offset)} to {local} (sha256 {remote.digest[:16]}…)", err=True)


# --- envs -------------------------------------------------------------------------------


@click.command()
@target_options
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def envs(
    url: str | None,
    rendezvous: str | None,
    environment_id: str | None,
    token_file: Path | None,
    as_json: bool,
) -> None:
    """List the environments a rendezvous knows."""
    target = Target.resolve(url, rendezvous, environment_id, token_file)
    if target.rendezvous is None:
        raise click.UsageError("envs needs --rendezvous BASE_URL")
    rows = _run_async(_list_envs(target))
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    headers = ("ID", "NAME", "ONLINE", "STREAMS", "LAST SEEN")
    table = [
        (
            str(r.get("id", "")),
            str(r.get("name") or ""),
            "yes" if r.get("online") else "no",
            str(r.get("streams", 0)),
            str(r.get("last_seen") or ""),
        )
        for r in rows
    ]
    widths = [max(len(h), *(len(row[i]) for row in table)) for i, h in enumerate(headers)]
    for row in (headers, *table):
        click.echo("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip())


async def _list_envs(target: Target) -> list[dict[str, Any]]:
    assert target.rendezvous is not None
    base = target.rendezvous.rstrip("/")
    headers = {"Authorization": f"Bearer {target.rendezvous_token or ''}"}
    try:
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"{base}/cloud/environments", headers=headers) as resp,
        ):
            body = await resp.text()
            status = resp.status
    except (aiohttp.ClientError, OSError) as exc:
        raise TargetError(f"cannot reach rendezvous {base}: {exc}") from None
    if status != 200:
        raise TargetError(f"rendezvous answered {status}: {body[:300]}")
    data = json.loads(body)
    rows = data.get("environments", []) if isinstance(data, dict) else data
    return [r for r in rows if isinstance(r, dict)]
