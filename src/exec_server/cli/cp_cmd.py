"""``exec-server cp``: copy one file to or from an environment, verified.

Streams in :data:`CP_CHUNK_BYTES` pieces with :data:`CP_PIPELINE_DEPTH` requests in
flight (any file size), shows progress on a terminal, and compares SHA-256 digests
computed on both ends. A download goes to ``.NAME.part`` and is renamed only once
verified. An upload that fails part way removes what it wrote (and says whether it
could). Errors name the path as the person wrote it (``ENV:/path`` or the local one)
and say which side is missing what.

A Codex executor has neither ranged ``fs/readFile``/``fs/writeFile`` nor ``fs/checksum``
(our extensions; it answers the latter -32601): a file up to
:data:`WHOLE_FILE_MAX_BYTES` then goes in one call and is verified by its size.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import posixpath
import sys
import time
from pathlib import Path
from typing import BinaryIO

import click
import msgspec

from ..client import ExecServerClient, ServerError, TransportClosed
from ..protocol.errors import METHOD_NOT_FOUND, NOT_FOUND
from .errors import EXIT_CONNECTION, CliError, exit_now, run_async
from .target import Target, target_options

#: Bytes per fs/readFile or fs/writeFile call.
CP_CHUNK_BYTES = 8 * 1024 * 1024
#: Chunk requests in flight at once (hides round trips).
CP_PIPELINE_DEPTH = 4
#: Largest file copied in one call to an environment without ranged reads and writes
#: (Codex's executor): its relay messages are at most 64 MiB, and base64 takes 4/3.
WHOLE_FILE_MAX_BYTES = 32 * 1024 * 1024


async def _has_ranged_io(client: ExecServerClient, remote_path: str) -> bool:
    """Whether the environment has our ranged reads/writes and ``fs/checksum``: asked
    with a checksum of the parent directory, which ours refuses at once and a Codex
    executor does not know (-32601)."""
    try:
        await client.fs.checksum(posixpath.dirname(remote_path) or "/")
    except ServerError as exc:
        return exc.code != METHOD_NOT_FOUND
    return True


def _whole_file_limit(spec: str, size: int) -> None:
    if size > WHOLE_FILE_MAX_BYTES:
        raise CliError(
            f"cannot copy {spec}: {_human(size)} is over {_human(WHOLE_FILE_MAX_BYTES)}, "
            "the most one call to this environment carries (it has no ranged reads and "
            "writes: a Codex executor, not exec-server)"
        )


class _Location(msgspec.Struct, frozen=True):
    remote: bool
    path: str
    environment_id: str | None = None
    spec: str = ""


def _parse_location(spec: str) -> _Location:
    """``ENV:/abs/path`` is on an environment (``:/path`` on the default one); anything
    else is local."""
    head, sep, tail = spec.partition(":")
    if sep and tail.startswith("/") and "/" not in head and head not in (".", ".."):
        return _Location(True, tail, head or None, spec)
    return _Location(False, spec, None, spec)


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

    With --rendezvous, ENV is an environment id (empty: --environment-id); with --url
    it is only a label. Streams in chunks (any size), shows progress on a terminal, and
    verifies the SHA-256 of the copy against the source.
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
            local = local / posixpath.basename(src.path)
        run_async(_download(target, src, local), target.describe())
        exit_now(0)
    local = Path(src.path)
    if local.is_dir():
        raise click.UsageError(f"{src.path} is a directory; cp copies files")
    try:
        fh = local.open("rb")
    except OSError as exc:
        raise CliError(f"cannot read {src.spec}: {exc.strerror or exc}") from None
    with fh:
        run_async(_upload(target, local, fh, dst), target.describe())
    exit_now(0)


def _remote_error(exc: ServerError, location: _Location, action: str) -> CliError:
    if exc.code == NOT_FOUND:
        parent = posixpath.dirname(location.path) or "/"
        if action == "write":
            return CliError(
                f"cannot write {location.spec}: the directory {parent} does not exist "
                "on the environment",
                hint=f"create it first: exec-server run -- mkdir -p {parent}",
            )
        return CliError(f"cannot read {location.spec}: no such file on the environment")
    return CliError(f"cannot {action} {location.spec}: {exc}")


async def _upload(target: Target, local: Path, fh: BinaryIO, dst: _Location) -> None:
    total = os.fstat(fh.fileno()).st_size
    remote_path = dst.path + local.name if dst.path.endswith("/") else dst.path
    dst = _Location(True, remote_path, dst.environment_id, dst.spec)
    progress = _Progress(f"{local.name} ->", total)
    digest = hashlib.sha256()
    async with target.connect() as client:
        with contextlib.suppress(ServerError):  # absent is fine; a directory is not ours
            if (await client.fs.get_metadata(remote_path)).is_directory:
                raise CliError(
                    f"{dst.spec} is a directory; cp copies files",
                    hint=f"to copy into it, end it with a slash: {dst.spec.rstrip('/')}/",
                )
        ranged = await _has_ranged_io(client, remote_path)
        if not ranged:
            _whole_file_limit(dst.spec, total)
        try:
            if ranged:
                await _send_chunks(client, fh, remote_path, digest, progress)
            else:
                data = fh.read()
                digest.update(data)
                await client.fs.write_file(remote_path, data)
                progress.advance(len(data))
        except ServerError as exc:
            progress.finish()
            error = _remote_error(exc, dst, "write")
            if exc.code != NOT_FOUND:  # a missing directory: nothing was written
                removal = await _remove_partial(client, remote_path)
                error = CliError(f"{error.message}; {removal}", hint=error.hint)
            raise error from None
        except TransportClosed as exc:
            progress.finish()
            raise CliError(
                f"lost the connection to {target.describe()} while writing {dst.spec}: {exc}; "
                + await _remove_partial(client, remote_path),
                exit_code=EXIT_CONNECTION,
            ) from None
        progress.finish()
        try:
            if not ranged:
                size = (await client.fs.get_metadata(remote_path)).size
                if size != total:
                    raise CliError(
                        f"size mismatch after upload to {dst.spec}: {total} bytes sent, "
                        f"{size} on the environment"
                    )
                click.echo(
                    f"copied {_human(total)} to {remote_path} (size verified; the environment "
                    "has no fs/checksum)",
                    err=True,
                )
                return
            remote = await client.fs.checksum(remote_path)
        except ServerError as exc:
            raise _remote_error(exc, dst, "write") from None
    if remote.digest != digest.hexdigest() or remote.size != total:
        raise CliError(
            f"checksum mismatch after upload to {dst.spec}: local sha256 {digest.hexdigest()} "
            f"({total} bytes), remote {remote.digest} ({remote.size} bytes)"
        )
    click.echo(f"copied {_human(total)} to {remote_path} (sha256 {remote.digest[:16]}…)", err=True)


async def _send_chunks(
    client: ExecServerClient,
    fh: BinaryIO,
    remote_path: str,
    digest: hashlib._Hash,
    progress: _Progress,
) -> None:
    first = fh.read(CP_CHUNK_BYTES)
    digest.update(first)
    await client.fs.write_file(remote_path, first)  # creates or truncates
    progress.advance(len(first))
    offset = len(first)

    async def put(chunk: bytes, at: int) -> None:
        await client.fs.write_file(remote_path, chunk, offset=at)
        progress.advance(len(chunk))

    in_flight: set[asyncio.Future[None]] = set()
    try:
        while chunk := fh.read(CP_CHUNK_BYTES):
            digest.update(chunk)
            while len(in_flight) >= CP_PIPELINE_DEPTH:
                in_flight = await _settle_one(in_flight)
            in_flight.add(asyncio.ensure_future(put(chunk, offset)))
            offset += len(chunk)
        while in_flight:
            in_flight = await _settle_one(in_flight)
    finally:
        for task in in_flight:
            task.cancel()
        await asyncio.gather(*in_flight, return_exceptions=True)


async def _remove_partial(client: ExecServerClient, remote_path: str) -> str:
    """Remove what a failed upload left, so that no partial file passes for the whole
    one; says how that went."""
    try:
        await client.fs.remove(remote_path, recursive=False, force=True)
    except TransportClosed:
        return "the partial file may remain (the environment is unreachable)"
    except ServerError as exc:
        return f"the partial file may remain ({exc.message})"
    return "the partial file was removed"


async def _settle_one(tasks: set[asyncio.Future[None]]) -> set[asyncio.Future[None]]:
    """Wait for one of ``tasks``; raise its error; return the rest."""
    done, rest = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    errors = [error for task in done if (error := task.exception()) is not None]
    if errors:
        raise errors[0]
    return rest


async def _download(target: Target, src: _Location, local: Path) -> None:
    tmp = local.with_name(f".{local.name}.part")
    async with target.connect() as client:
        try:
            meta = await client.fs.get_metadata(src.path)
        except ServerError as exc:
            raise _remote_error(exc, src, "read") from None
        if meta.is_directory:
            raise click.UsageError(f"{src.spec} is a directory; cp copies files")
        if not await _has_ranged_io(client, src.path):
            await _download_whole(client, src, local, meta.size)
            return
        progress = _Progress(f"{posixpath.basename(src.path)} <-", meta.size)
        digest = hashlib.sha256()
        try:
            fh = tmp.open("wb")
        except OSError as exc:
            raise CliError(f"cannot write {local}: {exc.strerror or exc}") from None
        try:
            with fh:
                received = await _receive_chunks(client, src.path, meta.size, fh, digest, progress)
            remote = await client.fs.checksum(src.path)
        except ServerError as exc:
            tmp.unlink(missing_ok=True)
            raise _remote_error(exc, src, "read") from None
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        finally:
            progress.finish()
    if remote.digest != digest.hexdigest():
        tmp.unlink(missing_ok=True)
        raise CliError(
            f"checksum mismatch after downloading {src.spec} (did it change while copying?): "
            f"remote sha256 {remote.digest}, received {digest.hexdigest()}"
        )
    tmp.replace(local)
    click.echo(f"copied {_human(received)} to {local} (sha256 {remote.digest[:16]}…)", err=True)


async def _download_whole(client: ExecServerClient, src: _Location, local: Path, size: int) -> None:
    """A download from an environment without ranged reads: one call, size-verified."""
    _whole_file_limit(src.spec, size)
    try:
        data = await client.fs.read_file(src.path)
    except ServerError as exc:
        raise _remote_error(exc, src, "read") from None
    if len(data) != size:
        raise CliError(
            f"size mismatch after downloading {src.spec} (did it change while copying?): "
            f"{size} bytes announced, {len(data)} received"
        )
    tmp = local.with_name(f".{local.name}.part")
    try:
        tmp.write_bytes(data)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise CliError(f"cannot write {local}: {exc.strerror or exc}") from None
    tmp.replace(local)
    click.echo(
        f"copied {_human(len(data))} to {local} (size verified; the environment has no "
        "fs/checksum)",
        err=True,
    )


async def _receive_chunks(
    client: ExecServerClient,
    path: str,
    total: int,
    fh: BinaryIO,
    digest: hashlib._Hash,
    progress: _Progress,
) -> int:
    """Read ``path`` in pipelined ranged reads until a short chunk at or past ``total``."""
    received = 0
    window: list[asyncio.Task[bytes]] = []
    next_offset = 0
    try:
        while True:
            while len(window) < CP_PIPELINE_DEPTH and next_offset <= total:
                read = client.fs.read_file(path, offset=next_offset, length=CP_CHUNK_BYTES)
                window.append(asyncio.ensure_future(read))
                next_offset += CP_CHUNK_BYTES
            if not window:
                return received
            data = await window.pop(0)
            if not data:
                return received
            fh.write(data)
            digest.update(data)
            received += len(data)
            progress.advance(len(data))
            if len(data) < CP_CHUNK_BYTES and received >= total:
                return received
    finally:
        # Every read still in the window is cancelled and awaited, whatever each ends with.
        for pending in window:
            pending.cancel()
        await asyncio.gather(*window, return_exceptions=True)
