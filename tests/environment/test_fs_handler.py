"""Tests for the fs/* methods (spec section 8, items 26-29, 33, 35).

Expected errors are what the Codex 0.133 binary answered to the same request on
the same tree (``codex exec-server --listen ws://127.0.0.1:0``, probed 2026-11-24).
Observed request -> response pairs, for the record:

* readFile missing / missing parent / broken symlink -> -32004 "No such file or
  directory (os error 2)"; a directory -> -32603 "Is a directory (os error 21)";
  a path through a file -> -32603 "Not a directory (os error 20)"; a symlink loop ->
  -32603 "Symbolic link loop (os error 40)"; ``"rel/x"``, ``""``, ``"~/x"`` and
  ``"file:///..."`` -> -32602 "AbsolutePathBuf deserialized without a base path";
  a NUL byte -> -32600 "file name contained an unexpected NUL byte";
  ``/tmp/pt/ld2/../f`` (ld2 a symlink elsewhere) reads /tmp/pt/f: ``..`` is
  lexical; ``//tmp/pt/f/`` works. ``maxBytes`` is ignored by 0.133.
* writeFile with missing parent -> -32004; onto a directory -> -32603 EISDIR;
  invalid base64 -> -32600 "fs/writeFile requires valid base64 dataBase64: <err>"
  (table below); /proc/version -> -32603 "I/O error (os error 5)"; /dev/full ->
  -32603 "No space left on device (os error 28)"; a 300-byte name -> -32603
  "Filename too long (os error 36)". A write through a hard link updates the inode.
* createDirectory recursive:false with missing parent -> -32004; of an existing
  dir -> -32603 "File exists (os error 17)"; recursive:true on an existing dir ->
  ``{}``; on a file -> "File exists"; below a file -> "Not a directory".
* getMetadata -> ``{isDirectory,isFile,isSymlink,createdAtMs:0,modifiedAtMs}``;
  symlinks report the target's type plus isSymlink; a FIFO is neither; broken ->
  -32004.
* readDirectory omits broken and looping symlinks, reports symlinks by target
  type, FIFOs as neither; of a file -> "Not a directory (os error 20)". Order is
  readdir order in 0.133 (we sort).
* remove of a missing path -> ``{}`` with force (default), -32004 without; below a
  file -> -32603 ENOTDIR even with force; a non-empty dir with recursive:false ->
  -32603 "Directory not empty (os error 39)"; /proc/version -> -32600 "Operation
  not permitted (os error 1)"; a symlink removes the link only.
* copy of a directory without recursive -> -32600 "fs/copy requires recursive:
  true when sourcePath is a directory"; onto itself or a descendant -> -32600
  "fs/copy cannot copy a directory to itself or one of its descendants"; a FIFO ->
  -32600 "fs/copy only supports regular files, directories, and symlinks";
  symlinks (file, dir, broken) are recreated as symlinks; a symlink onto an
  existing path -> "File exists"; a recursive copy merges into an existing
  directory, skips FIFOs, keeps file modes but not directory modes; a directory
  onto a file -> "File exists"; a file onto a directory -> "Is a directory";
  missing ``recursive`` -> -32602 "missing field `recursive`" (decode layer).
  0.133 truncates a file copied onto itself to 0 bytes; we keep it.

A differential run of 116 such requests against 0.133 and this handler on
identical trees gave identical responses and identical resulting trees.
"""

# These tests inspect the tree the handler left behind with plain blocking calls on
# purpose: nothing else runs on the loop meanwhile.

from __future__ import annotations

import asyncio
import errno
import hashlib
import os
import stat
import sys
import threading
import tracemalloc
from pathlib import Path
from typing import Any, TypeVar

import msgspec
import pybase64
import pytest

from exec_server.environment.fs_handler import (
    DEFAULT_MAX_READ_BYTES,
    MIB,
    FileSystemHandler,
    FsLimits,
    map_os_error,
)
from exec_server.environment.rust_compat import decode_base64, os_error_text
from exec_server.environment.sandbox import SandboxDenied
from exec_server.protocol import messages as m
from exec_server.protocol.errors import (
    INTERNAL_ERROR,
    INVALID_PARAMS,
    INVALID_REQUEST,
    NOT_FOUND,
    InternalError,
    InvalidParams,
    InvalidRequest,
    NotFound,
    RpcError,
)

P = TypeVar("P")

ENOENT_TEXT = "No such file or directory (os error 2)"
EISDIR_TEXT = "Is a directory (os error 21)"
ENOTDIR_TEXT = "Not a directory (os error 20)"
EEXIST_TEXT = "File exists (os error 17)"
ELOOP_TEXT = "Symbolic link loop (os error 40)"
RELATIVE_TEXT = "AbsolutePathBuf deserialized without a base path"
COPY_DIR_TEXT = "fs/copy requires recursive: true when sourcePath is a directory"
COPY_INTO_SELF_TEXT = "fs/copy cannot copy a directory to itself or one of its descendants"
COPY_SPECIAL_TEXT = "fs/copy only supports regular files, directories, and symlinks"


def params(cls: type[P], **wire: Any) -> P:
    """Build params the way the processor does: from camelCase wire JSON."""
    return msgspec.convert(wire, cls)


def b64(data: bytes) -> str:
    return pybase64.b64encode(data).decode()


async def expect_error(awaitable: Any, code: int, message: str) -> RpcError:
    with pytest.raises(RpcError) as info:
        await awaitable
    assert (info.value.code, info.value.message) == (code, message)
    return info.value


@pytest.fixture
def fs() -> FileSystemHandler:
    return FileSystemHandler()


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """The layout used for the 0.133 probes."""
    (tmp_path / "d" / "sub").mkdir(parents=True)
    (tmp_path / "empty").mkdir()
    (tmp_path / "f").write_bytes(b"hi\n")
    (tmp_path / "d" / "sub" / "a").write_bytes(b"x\n")
    (tmp_path / "d" / "only_in_d").write_bytes(b"d")
    (tmp_path / "d" / "Z").mkdir()
    for name in ("b", "_x", ".h"):
        (tmp_path / "d" / name).write_bytes(b"")
    os.symlink(tmp_path / "f", tmp_path / "d" / "lf")
    os.symlink(tmp_path / "d" / "sub", tmp_path / "d" / "ld")
    os.symlink(tmp_path / "nowhere", tmp_path / "d" / "broken")
    os.symlink(tmp_path / "d" / "loop2", tmp_path / "d" / "loop1")
    os.symlink(tmp_path / "d" / "loop1", tmp_path / "d" / "loop2")
    os.symlink("sub/a", tmp_path / "d" / "rel")
    os.symlink(tmp_path / "d" / "sub", tmp_path / "ld2")
    os.mkfifo(tmp_path / "d" / "fifo")
    return tmp_path


# --- error mapping -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "text"),
    [
        (errno.ENOENT, ENOENT_TEXT),
        (errno.ELOOP, ELOOP_TEXT),
        (errno.EBUSY, "Resource busy (os error 16)"),
        (errno.EIO, "I/O error (os error 5)"),
        (errno.ENAMETOOLONG, "Filename too long (os error 36)"),
        (errno.EROFS, "Read-only file system (os error 30)"),
        (errno.ENOTEMPTY, "Directory not empty (os error 39)"),
        (errno.EXDEV, "Cross-device link (os error 18)"),
        (errno.EAGAIN, "Resource temporarily unavailable (os error 11)"),
        (errno.EOPNOTSUPP, "Not supported (os error 95)"),
        (4095, "No error information (os error 4095)"),
    ],
)
def test_os_error_text_is_rusts_display_with_musl_wording(code: int, text: str) -> None:
    assert os_error_text(code) == text


@pytest.mark.parametrize(
    ("code", "kind"),
    [
        (errno.ENOENT, NotFound),
        (errno.EACCES, InvalidRequest),
        (errno.EPERM, InvalidRequest),
        (errno.EINVAL, InvalidRequest),
        (errno.EISDIR, InternalError),
        (errno.ENOTDIR, InternalError),
        (errno.EEXIST, InternalError),
        (errno.EROFS, InternalError),
        (errno.ENOSPC, InternalError),
    ],
)
def test_map_os_error_follows_codex_error_kinds(code: int, kind: type[RpcError]) -> None:
    err = map_os_error(OSError(code, os.strerror(code), "/some/path"))
    assert type(err) is kind
    assert err.message == os_error_text(code)


def test_map_os_error_without_errno_is_internal() -> None:
    err = map_os_error(OSError("`x` is a named pipe"))
    assert (err.code, err.message) == (INTERNAL_ERROR, "`x` is a named pipe")


def test_sandbox_denials_map_through_the_same_table() -> None:
    denied = map_os_error(SandboxDenied(errno.EROFS, "writing /x is not permitted"))
    assert (denied.code, denied.message) == (INTERNAL_ERROR, "Read-only file system (os error 30)")
    hidden = map_os_error(SandboxDenied(errno.ENOENT, "reading /x is not permitted"))
    assert (hidden.code, hidden.message) == (NOT_FOUND, ENOENT_TEXT)


# --- paths ---------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["rel/x", "", "~/x", "./x"])
async def test_relative_paths_are_invalid_params(fs: FileSystemHandler, path: str) -> None:
    await expect_error(
        fs.read_file(params(m.FsReadFileParams, path=path)), INVALID_PARAMS, RELATIVE_TEXT
    )


async def test_nul_byte_is_invalid_request(fs: FileSystemHandler, tree: Path) -> None:
    await expect_error(
        fs.read_file(params(m.FsReadFileParams, path=f"{tree}/f\x00x")),
        INVALID_REQUEST,
        "file name contained an unexpected NUL byte",
    )


async def test_file_uris_are_accepted_and_percent_decoded(
    fs: FileSystemHandler, tmp_path: Path
) -> None:
    (tmp_path / "a b%").write_bytes(b"uri")
    uri = (tmp_path / "a b%").as_uri()
    assert "%20" in uri
    result = await fs.read_file(params(m.FsReadFileParams, path=uri))
    assert result.data_base64 == b"uri"
    localhost = "file://localhost" + uri.removeprefix("file://")
    assert (await fs.read_file(params(m.FsReadFileParams, path=localhost))).data_base64 == b"uri"


async def test_file_uri_with_remote_host_is_rejected_as_codex_0171_does(
    fs: FileSystemHandler,
) -> None:
    await expect_error(
        fs.read_file(params(m.FsReadFileParams, path="file://Example.com/etc/hosts")),
        INVALID_REQUEST,
        "'file://example.com/etc/hosts' is invalid on 'linux'",
    )


async def test_dotdot_is_resolved_lexically_before_touching_the_disk(
    fs: FileSystemHandler, tree: Path
) -> None:
    # ld2 -> d/sub: physically ld2/.. is d, lexically it is the tree root (0.133).
    result = await fs.read_file(params(m.FsReadFileParams, path=f"{tree}/ld2/../f"))
    assert result.data_base64 == b"hi\n"
    await expect_error(
        fs.read_file(params(m.FsReadFileParams, path=f"{tree}/ld2/../only_in_d")),
        NOT_FOUND,
        ENOENT_TEXT,
    )


async def test_redundant_slashes_and_trailing_slash_are_normalised(
    fs: FileSystemHandler, tree: Path
) -> None:
    result = await fs.read_file(params(m.FsReadFileParams, path=f"/{tree}/./f/"))
    assert result.data_base64 == b"hi\n"


# --- readFile ------------------------------------------------------------------------


async def test_read_file_returns_bytes(fs: FileSystemHandler, tree: Path) -> None:
    result = await fs.read_file(params(m.FsReadFileParams, path=f"{tree}/f"))
    assert result.data_base64 == b"hi\n"
    assert msgspec.json.encode(result) == b'{"dataBase64":"aGkK"}'


async def test_read_text_file_round_trips_utf8(fs: FileSystemHandler, tmp_path: Path) -> None:
    text = "héllo wörld\n"
    (tmp_path / "t.txt").write_text(text, encoding="utf-8")
    result = await fs.read_file(params(m.FsReadFileParams, path=str(tmp_path / "t.txt")))
    assert result.data_base64.decode("utf-8") == text


@pytest.mark.parametrize(
    ("relative", "code", "message"),
    [
        ("missing", NOT_FOUND, ENOENT_TEXT),
        ("missingdir/x", NOT_FOUND, ENOENT_TEXT),
        ("d/broken", NOT_FOUND, ENOENT_TEXT),
        ("d", INTERNAL_ERROR, EISDIR_TEXT),
        ("f/x", INTERNAL_ERROR, ENOTDIR_TEXT),
        ("d/loop1", INTERNAL_ERROR, ELOOP_TEXT),
        ("a" * 300, INTERNAL_ERROR, "Filename too long (os error 36)"),
    ],
)
async def test_read_file_errors(
    fs: FileSystemHandler, tree: Path, relative: str, code: int, message: str
) -> None:
    await expect_error(
        fs.read_file(params(m.FsReadFileParams, path=f"{tree}/{relative}")), code, message
    )


async def test_read_file_max_bytes_bounds_the_read(fs: FileSystemHandler, tmp_path: Path) -> None:
    (tmp_path / "four").write_bytes(b"abcd")
    path = str(tmp_path / "four")
    await expect_error(
        fs.read_file(params(m.FsReadFileParams, path=path, maxBytes=3)),
        INVALID_REQUEST,
        "file is too large to read: limit is 3 bytes",
    )
    exact = await fs.read_file(params(m.FsReadFileParams, path=path, maxBytes=4))
    assert exact.data_base64 == b"abcd"
    unbounded = await fs.read_file(params(m.FsReadFileParams, path=path, maxBytes=None))
    assert unbounded.data_base64 == b"abcd"


async def test_read_file_negative_max_bytes_is_invalid_params(
    fs: FileSystemHandler, tree: Path
) -> None:
    with pytest.raises(InvalidParams):
        await fs.read_file(params(m.FsReadFileParams, path=f"{tree}/f", maxBytes=-1))


async def test_read_file_configured_limit_names_the_limit(tmp_path: Path) -> None:
    (tmp_path / "eleven").write_bytes(b"x" * 11)
    limited = FileSystemHandler(FsLimits(max_read_bytes=10))
    await expect_error(
        limited.read_file(params(m.FsReadFileParams, path=str(tmp_path / "eleven"))),
        INVALID_REQUEST,
        "file is too large to read: limit is 10 bytes",
    )
    # maxBytes can only lower the configured limit.
    await expect_error(
        limited.read_file(params(m.FsReadFileParams, path=str(tmp_path / "eleven"), maxBytes=1000)),
        INVALID_REQUEST,
        "file is too large to read: limit is 10 bytes",
    )


def test_default_read_limit_fits_a_512_mib_message() -> None:
    envelope = len(b'{"id":18446744073709551615,"result":{"dataBase64":""}}')
    assert (DEFAULT_MAX_READ_BYTES + 2) // 3 * 4 + envelope <= 512 * MIB
    assert DEFAULT_MAX_READ_BYTES > 383 * MIB
    with pytest.raises(ValueError):
        FsLimits(max_read_bytes=-1)


async def test_read_file_of_sizeless_proc_file_reads_to_eof(fs: FileSystemHandler) -> None:
    # /proc files report st_size 0 but have content.
    result = await fs.read_file(params(m.FsReadFileParams, path="/proc/self/status"))
    assert b"Pid:" in result.data_base64
    limited = FileSystemHandler(FsLimits(max_read_bytes=16))
    await expect_error(
        limited.read_file(params(m.FsReadFileParams, path="/proc/self/status")),
        INVALID_REQUEST,
        "file is too large to read: limit is 16 bytes",
    )


async def test_read_file_of_endless_device_stops_at_the_limit() -> None:
    limited = FileSystemHandler(FsLimits(max_read_bytes=3 * MIB))
    await expect_error(
        limited.read_file(params(m.FsReadFileParams, path="/dev/zero")),
        INVALID_REQUEST,
        f"file is too large to read: limit is {3 * MIB} bytes",
    )


async def test_read_file_of_fifo_fails_instead_of_hanging(
    fs: FileSystemHandler, tree: Path
) -> None:
    with pytest.raises(InvalidRequest):
        await asyncio.wait_for(
            fs.read_file(params(m.FsReadFileParams, path=f"{tree}/d/fifo")), timeout=10
        )


async def test_read_file_of_a_file_that_grows_while_read(
    fs: FileSystemHandler, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "growing"
    path.write_bytes(b"0123")
    real_read = os.read
    appended = False

    def read_then_grow(fd: int, n: int) -> bytes:
        nonlocal appended
        data = real_read(fd, n)
        if not appended:
            appended = True
            with open(path, "ab") as f:
                f.write(b"4567")
        return data

    monkeypatch.setattr(os, "read", read_then_grow)
    result = await fs.read_file(params(m.FsReadFileParams, path=str(path)))
    assert result.data_base64 == b"01234567"


async def test_large_read_round_trips(fs: FileSystemHandler, tmp_path: Path) -> None:
    data = os.urandom(MIB) * 64
    (tmp_path / "big").write_bytes(data)
    result = await fs.read_file(params(m.FsReadFileParams, path=str(tmp_path / "big")))
    assert result.data_base64 == data
    encoded = msgspec.json.encode(result)
    assert pybase64.b64decode(encoded[len(b'{"dataBase64":"') : -2]) == data


async def test_large_read_peak_memory_is_bounded(fs: FileSystemHandler, tmp_path: Path) -> None:
    size = 64 * MIB
    with open(tmp_path / "big", "wb") as f:
        f.write(os.urandom(MIB) * 64)
    request = params(m.FsReadFileParams, path=str(tmp_path / "big"))
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        result = await fs.read_file(request)
        _, read_peak = tracemalloc.get_traced_memory()
        encoded = msgspec.json.encode(result)
        _, total_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(encoded) > size * 4 // 3
    # The handler holds the file once: any extra copy of it would double this.
    assert read_peak < 1.25 * size
    # Plus msgspec's base64 output (4/3) and its buffer growth (~2/3): no 10x.
    assert total_peak < 3.5 * size


async def test_blocking_work_does_not_stall_the_event_loop(
    fs: FileSystemHandler, tree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    loop = asyncio.get_running_loop()
    release = threading.Event()
    entered = asyncio.Event()
    real_read_file = FileSystemHandler._read_file

    def slow_read_file(self: FileSystemHandler, *args: Any) -> bytes:
        loop.call_soon_threadsafe(entered.set)
        assert release.wait(timeout=10)
        return real_read_file(self, *args)

    monkeypatch.setattr(FileSystemHandler, "_read_file", slow_read_file)
    reading = asyncio.create_task(fs.read_file(params(m.FsReadFileParams, path=f"{tree}/f")))
    await asyncio.wait_for(entered.wait(), timeout=5)
    # The read is parked in its worker thread; other fs calls still complete.
    metadata = await asyncio.wait_for(
        fs.get_metadata(params(m.FsGetMetadataParams, path=f"{tree}/f")), timeout=5
    )
    assert metadata.is_file
    assert not reading.done()
    release.set()
    assert (await reading).data_base64 == b"hi\n"


# --- writeFile -----------------------------------------------------------------------


async def test_write_file_creates_and_truncates(fs: FileSystemHandler, tmp_path: Path) -> None:
    path = str(tmp_path / "w")
    await fs.write_file(params(m.FsWriteFileParams, path=path, dataBase64=b64(b"long content")))
    assert Path(path).read_bytes() == b"long content"
    result = await fs.write_file(params(m.FsWriteFileParams, path=path, dataBase64=b64(b"hi")))
    assert msgspec.json.encode(result) == b"{}"
    assert Path(path).read_bytes() == b"hi"
    await fs.write_file(params(m.FsWriteFileParams, path=path, dataBase64=""))
    assert Path(path).read_bytes() == b""


async def test_write_file_errors(fs: FileSystemHandler, tree: Path) -> None:
    data = b64(b"hi")
    await expect_error(
        fs.write_file(params(m.FsWriteFileParams, path=f"{tree}/nop/x", dataBase64=data)),
        NOT_FOUND,
        ENOENT_TEXT,
    )
    await expect_error(
        fs.write_file(params(m.FsWriteFileParams, path=f"{tree}/d", dataBase64=data)),
        INTERNAL_ERROR,
        EISDIR_TEXT,
    )
    await expect_error(
        fs.write_file(params(m.FsWriteFileParams, path=f"{tree}/f/x", dataBase64=data)),
        INTERNAL_ERROR,
        ENOTDIR_TEXT,
    )


async def test_write_file_is_in_place_so_hard_links_share_the_update(
    fs: FileSystemHandler, tmp_path: Path
) -> None:
    original = tmp_path / "original"
    original.write_bytes(b"old")
    original.chmod(0o640)
    os.link(original, tmp_path / "alias")
    inode = original.stat().st_ino
    await fs.write_file(
        params(m.FsWriteFileParams, path=str(tmp_path / "alias"), dataBase64=b64(b"new"))
    )
    assert original.read_bytes() == b"new"
    assert original.stat().st_ino == inode
    assert stat.S_IMODE(original.stat().st_mode) == 0o640


async def test_write_file_through_symlink_updates_target(fs: FileSystemHandler, tree: Path) -> None:
    await fs.write_file(params(m.FsWriteFileParams, path=f"{tree}/d/lf", dataBase64=b64(b"via")))
    assert (tree / "f").read_bytes() == b"via"
    assert (tree / "d" / "lf").is_symlink()


async def test_write_file_does_not_block_on_a_fifo_without_reader(
    fs: FileSystemHandler, tree: Path
) -> None:
    await expect_error(
        asyncio.wait_for(
            fs.write_file(params(m.FsWriteFileParams, path=f"{tree}/d/fifo", dataBase64="")),
            timeout=10,
        ),
        INTERNAL_ERROR,
        "No such device or address (os error 6)",
    )


async def test_large_write_round_trips(fs: FileSystemHandler, tmp_path: Path) -> None:
    data = os.urandom(MIB) * 64
    path = tmp_path / "big"
    await fs.write_file(params(m.FsWriteFileParams, path=str(path), dataBase64=b64(data)))
    assert path.read_bytes() == data


# Every pair below was answered by 0.133 as -32600 "fs/writeFile requires valid
# base64 dataBase64: <detail>" (the Rust base64 crate's error), or accepted (None).
BASE64_CASES: list[tuple[str, str | None]] = [
    ("!!!", "Invalid symbol 33, offset 0."),
    ("aGk", "Invalid padding"),
    ("aG k=", "Invalid symbol 32, offset 2."),
    ("aGk=\n", "Invalid symbol 10, offset 4."),
    ("aGl=", "Invalid last symbol 108, offset 2."),
    ("aGk=aGk=", "Invalid symbol 61, offset 3."),
    ("aGk-", "Invalid symbol 45, offset 3."),
    ("", None),
    ("a", "Invalid input length: 1"),
    ("aG", "Invalid padding"),
    ("aG==", "Invalid last symbol 71, offset 1."),
    ("aG=", "Invalid padding"),
    ("aGk==", "Invalid symbol 61, offset 3."),
    ("aGkK=", "Invalid symbol 61, offset 4."),
    ("====", "Invalid symbol 61, offset 0."),
    ("=", "Invalid symbol 61, offset 0."),
    ("aGkKa", "Invalid input length: 5"),
    ("aGkKaG", "Invalid padding"),
    ("aGkKaGk", "Invalid padding"),
    ("aG=k", "Invalid symbol 61, offset 2."),
    ("a===", "Invalid symbol 61, offset 1."),
    ("aGkK====", "Invalid symbol 61, offset 4."),
    ("aGk=a", "Invalid symbol 61, offset 3."),
    ("YQ==YQ==", "Invalid symbol 61, offset 2."),
    ("Y===", "Invalid symbol 61, offset 1."),
    ("aGkK\r\n", "Invalid symbol 13, offset 4."),
    ("aGkKaGkKaGkK!", "Invalid symbol 33, offset 12."),
    ("aGkKaGkKaGkKa", "Invalid input length: 13"),
    ("YR==", "Invalid last symbol 82, offset 1."),
    ("YWI=", None),
    ("YWJ=", "Invalid last symbol 74, offset 2."),
    ("aGkKa=", "Invalid symbol 61, offset 5."),
    ("a=b=", "Invalid symbol 61, offset 1."),
    ("aGk\u00e9", "Invalid symbol 169, offset 4."),
    ("aGkK", None),
]


@pytest.mark.parametrize(("text", "detail"), BASE64_CASES)
def test_base64_errors_match_codex(text: str, detail: str | None) -> None:
    if detail is None:
        assert decode_base64(text) == pybase64.b64decode(text, validate=True)
        return
    with pytest.raises(InvalidRequest) as info:
        decode_base64(text)
    assert info.value.message == f"fs/writeFile requires valid base64 dataBase64: {detail}"


async def test_write_file_invalid_base64_is_invalid_request_and_writes_nothing(
    fs: FileSystemHandler, tmp_path: Path
) -> None:
    path = tmp_path / "w"
    await expect_error(
        fs.write_file(params(m.FsWriteFileParams, path=str(path), dataBase64="aGk")),
        INVALID_REQUEST,
        "fs/writeFile requires valid base64 dataBase64: Invalid padding",
    )
    assert not path.exists()


def test_base64_error_offsets_in_long_input() -> None:
    good = b64(b"x" * 3000)
    with pytest.raises(InvalidRequest) as info:
        decode_base64(good[:2000] + "*" + good[2001:])
    assert info.value.message.endswith("Invalid symbol 42, offset 2000.")


# --- createDirectory -----------------------------------------------------------------


async def test_create_directory_recursive_by_default(fs: FileSystemHandler, tmp_path: Path) -> None:
    result = await fs.create_directory(
        params(m.FsCreateDirectoryParams, path=str(tmp_path / "n1" / "n2" / "n3"))
    )
    assert msgspec.json.encode(result) == b"{}"
    assert (tmp_path / "n1" / "n2" / "n3").is_dir()
    # Existing directories are fine when recursive, also through a symlink.
    await fs.create_directory(params(m.FsCreateDirectoryParams, path=str(tmp_path / "n1")))


async def test_create_directory_through_symlink_to_dir(fs: FileSystemHandler, tree: Path) -> None:
    await fs.create_directory(
        params(m.FsCreateDirectoryParams, path=f"{tree}/d/ld", recursive=True)
    )


@pytest.mark.parametrize(
    ("relative", "recursive", "code", "message"),
    [
        ("nop/x", False, NOT_FOUND, ENOENT_TEXT),
        ("d", False, INTERNAL_ERROR, EEXIST_TEXT),
        ("f", True, INTERNAL_ERROR, EEXIST_TEXT),
        ("f", False, INTERNAL_ERROR, EEXIST_TEXT),
        ("f/x", True, INTERNAL_ERROR, ENOTDIR_TEXT),
        ("d/lf", True, INTERNAL_ERROR, EEXIST_TEXT),
        ("d/broken", True, INTERNAL_ERROR, EEXIST_TEXT),
        ("d/broken", False, INTERNAL_ERROR, EEXIST_TEXT),
    ],
)
async def test_create_directory_errors(
    fs: FileSystemHandler, tree: Path, relative: str, recursive: bool, code: int, message: str
) -> None:
    await expect_error(
        fs.create_directory(
            params(m.FsCreateDirectoryParams, path=f"{tree}/{relative}", recursive=recursive)
        ),
        code,
        message,
    )


async def test_create_directory_non_recursive_creates_one_level(
    fs: FileSystemHandler, tmp_path: Path
) -> None:
    await fs.create_directory(
        params(m.FsCreateDirectoryParams, path=str(tmp_path / "one"), recursive=False)
    )
    assert (tmp_path / "one").is_dir()


# --- getMetadata ---------------------------------------------------------------------


async def test_get_metadata_of_file(fs: FileSystemHandler, tree: Path) -> None:
    meta = await fs.get_metadata(params(m.FsGetMetadataParams, path=f"{tree}/f"))
    info = (tree / "f").stat()
    assert (meta.is_file, meta.is_directory, meta.is_symlink) == (True, False, False)
    assert meta.modified_at_ms == info.st_mtime_ns // 1_000_000
    assert meta.modified_at_ms > 0
    assert meta.created_at_ms == 0  # 0.133 (musl) reports 0; Python on Linux has no birthtime.
    assert meta.size == 3
    wire = msgspec.json.decode(msgspec.json.encode(meta))
    assert set(wire) == {
        "isDirectory",
        "isFile",
        "isSymlink",
        "createdAtMs",
        "modifiedAtMs",
        "size",
    }


@pytest.mark.parametrize(
    ("relative", "flags"),
    [
        ("d", (False, True, False)),
        ("d/lf", (True, False, True)),
        ("d/ld", (False, True, True)),
        ("d/fifo", (False, False, False)),
        ("d/../f", (True, False, False)),
    ],
)
async def test_get_metadata_flags(
    fs: FileSystemHandler, tree: Path, relative: str, flags: tuple[bool, bool, bool]
) -> None:
    meta = await fs.get_metadata(params(m.FsGetMetadataParams, path=f"{tree}/{relative}"))
    assert (meta.is_file, meta.is_directory, meta.is_symlink) == flags
    assert meta.modified_at_ms > 0


async def test_get_metadata_symlink_reports_target_size_and_mtime(
    fs: FileSystemHandler, tree: Path
) -> None:
    meta = await fs.get_metadata(params(m.FsGetMetadataParams, path=f"{tree}/d/lf"))
    assert meta.size == 3
    assert meta.modified_at_ms == (tree / "f").stat().st_mtime_ns // 1_000_000


@pytest.mark.parametrize(
    ("relative", "code", "message"),
    [
        ("missing", NOT_FOUND, ENOENT_TEXT),
        ("d/broken", NOT_FOUND, ENOENT_TEXT),
        ("d/loop1", INTERNAL_ERROR, ELOOP_TEXT),
        ("f/x", INTERNAL_ERROR, ENOTDIR_TEXT),
    ],
)
async def test_get_metadata_errors(
    fs: FileSystemHandler, tree: Path, relative: str, code: int, message: str
) -> None:
    await expect_error(
        fs.get_metadata(params(m.FsGetMetadataParams, path=f"{tree}/{relative}")), code, message
    )


async def test_get_metadata_before_epoch_is_zero(fs: FileSystemHandler, tmp_path: Path) -> None:
    old = tmp_path / "old"
    old.write_bytes(b"")
    os.utime(old, ns=(-5_000_000_000, -5_000_000_000))
    meta = await fs.get_metadata(params(m.FsGetMetadataParams, path=str(old)))
    assert meta.modified_at_ms == 0


# --- readDirectory -------------------------------------------------------------------


async def test_read_directory_sorted_with_broken_links_omitted(
    fs: FileSystemHandler, tree: Path
) -> None:
    result = await fs.read_directory(params(m.FsReadDirectoryParams, path=f"{tree}/d"))
    entries = [(e.file_name, e.is_directory, e.is_file) for e in result.entries]
    assert entries == [
        (".h", False, True),
        ("Z", True, False),
        ("_x", False, True),
        ("b", False, True),
        ("fifo", False, False),
        ("ld", True, False),
        ("lf", False, True),
        ("only_in_d", False, True),
        ("rel", False, True),
        ("sub", True, False),
    ]
    wire = msgspec.json.decode(msgspec.json.encode(result))
    assert wire["entries"][0] == {"fileName": ".h", "isDirectory": False, "isFile": True}


async def test_read_directory_through_symlink(fs: FileSystemHandler, tree: Path) -> None:
    result = await fs.read_directory(params(m.FsReadDirectoryParams, path=f"{tree}/d/ld"))
    assert [e.file_name for e in result.entries] == ["a"]


async def test_read_directory_errors(fs: FileSystemHandler, tree: Path) -> None:
    await expect_error(
        fs.read_directory(params(m.FsReadDirectoryParams, path=f"{tree}/f")),
        INTERNAL_ERROR,
        ENOTDIR_TEXT,
    )
    await expect_error(
        fs.read_directory(params(m.FsReadDirectoryParams, path=f"{tree}/missing")),
        NOT_FOUND,
        ENOENT_TEXT,
    )


async def test_read_directory_non_utf8_names_are_lossy(
    fs: FileSystemHandler, tmp_path: Path
) -> None:
    with open(os.path.join(os.fsencode(tmp_path), b"caf\xe9"), "wb"):
        pass
    result = await fs.read_directory(params(m.FsReadDirectoryParams, path=str(tmp_path)))
    assert [e.file_name for e in result.entries] == ["caf\ufffd"]
    msgspec.json.encode(result)  # must be encodable (no lone surrogates)


# --- remove --------------------------------------------------------------------------


async def test_remove_missing_path(fs: FileSystemHandler, tree: Path) -> None:
    result = await fs.remove(params(m.FsRemoveParams, path=f"{tree}/missing"))
    assert msgspec.json.encode(result) == b"{}"
    await fs.remove(params(m.FsRemoveParams, path=f"{tree}/missing", force=True))
    for path in (f"{tree}/missing", f"{tree}/missing/x"):
        await expect_error(
            fs.remove(params(m.FsRemoveParams, path=path, force=False)), NOT_FOUND, ENOENT_TEXT
        )


async def test_remove_below_a_file_is_not_forgiven_by_force(
    fs: FileSystemHandler, tree: Path
) -> None:
    for force in (True, False):
        await expect_error(
            fs.remove(params(m.FsRemoveParams, path=f"{tree}/f/x", force=force)),
            INTERNAL_ERROR,
            ENOTDIR_TEXT,
        )


async def test_remove_non_recursive(fs: FileSystemHandler, tree: Path) -> None:
    for force in (True, False):
        await expect_error(
            fs.remove(params(m.FsRemoveParams, path=f"{tree}/d", recursive=False, force=force)),
            INTERNAL_ERROR,
            "Directory not empty (os error 39)",
        )
    await fs.remove(params(m.FsRemoveParams, path=f"{tree}/empty", recursive=False))
    assert not (tree / "empty").exists()
    await fs.remove(params(m.FsRemoveParams, path=f"{tree}/f", recursive=False))
    assert not (tree / "f").exists()


async def test_remove_recursive_forced_by_default(fs: FileSystemHandler, tree: Path) -> None:
    await fs.remove(params(m.FsRemoveParams, path=f"{tree}/d"))
    assert not (tree / "d").exists()
    # The symlinks inside pointed out of the tree; their targets are intact.
    assert (tree / "f").read_bytes() == b"hi\n"


async def test_remove_symlink_removes_the_link_not_the_target(
    fs: FileSystemHandler, tree: Path
) -> None:
    await fs.remove(params(m.FsRemoveParams, path=f"{tree}/d/ld"))
    await fs.remove(params(m.FsRemoveParams, path=f"{tree}/d/lf", recursive=False))
    await fs.remove(params(m.FsRemoveParams, path=f"{tree}/d/broken", force=False))
    assert not os.path.lexists(tree / "d" / "ld")
    assert not os.path.lexists(tree / "d" / "lf")
    assert not os.path.lexists(tree / "d" / "broken")
    assert (tree / "d" / "sub" / "a").read_bytes() == b"x\n"
    assert (tree / "f").read_bytes() == b"hi\n"


async def test_remove_permission_error_is_invalid_request(fs: FileSystemHandler) -> None:
    await expect_error(
        fs.remove(params(m.FsRemoveParams, path="/proc/version")),
        INVALID_REQUEST,
        "Operation not permitted (os error 1)",
    )


# --- copy ----------------------------------------------------------------------------


async def test_copy_file_keeps_content_and_mode(fs: FileSystemHandler, tree: Path) -> None:
    (tree / "f").chmod(0o751)
    result = await fs.copy(
        params(
            m.FsCopyParams, sourcePath=f"{tree}/f", destinationPath=f"{tree}/f2", recursive=False
        )
    )
    assert msgspec.json.encode(result) == b"{}"
    assert (tree / "f2").read_bytes() == b"hi\n"
    assert stat.S_IMODE((tree / "f2").stat().st_mode) == 0o751


async def test_copy_file_overwrites_existing_file(fs: FileSystemHandler, tree: Path) -> None:
    (tree / "existing").write_bytes(b"old content")
    await fs.copy(
        params(
            m.FsCopyParams,
            sourcePath=f"{tree}/f",
            destinationPath=f"{tree}/existing",
            recursive=False,
        )
    )
    assert (tree / "existing").read_bytes() == b"hi\n"


async def test_copy_file_onto_itself_keeps_it(fs: FileSystemHandler, tree: Path) -> None:
    # 0.133 answers {} but leaves an empty file; we answer {} and keep the data.
    await fs.copy(
        params(m.FsCopyParams, sourcePath=f"{tree}/f", destinationPath=f"{tree}/f", recursive=False)
    )
    await fs.copy(
        params(
            m.FsCopyParams, sourcePath=f"{tree}/f", destinationPath=f"{tree}/d/lf", recursive=False
        )
    )
    assert (tree / "f").read_bytes() == b"hi\n"


async def test_copy_directory_requires_recursive(fs: FileSystemHandler, tree: Path) -> None:
    await expect_error(
        fs.copy(
            params(
                m.FsCopyParams,
                sourcePath=f"{tree}/d",
                destinationPath=f"{tree}/d2",
                recursive=False,
            )
        ),
        INVALID_REQUEST,
        COPY_DIR_TEXT,
    )
    assert not (tree / "d2").exists()


async def test_copy_directory_recursively(fs: FileSystemHandler, tree: Path) -> None:
    (tree / "d" / "sub").chmod(0o700)
    await fs.copy(
        params(m.FsCopyParams, sourcePath=f"{tree}/d", destinationPath=f"{tree}/d2", recursive=True)
    )
    copy = tree / "d2"
    assert (copy / "sub" / "a").read_bytes() == b"x\n"
    assert (copy / "only_in_d").read_bytes() == b"d"
    # Symlinks are recreated verbatim, broken and looping ones included.
    assert os.readlink(copy / "rel") == "sub/a"
    assert os.readlink(copy / "lf") == str(tree / "f")
    assert os.readlink(copy / "ld") == str(tree / "d" / "sub")
    assert os.readlink(copy / "broken") == str(tree / "nowhere")
    assert os.readlink(copy / "loop1") == str(tree / "d" / "loop2")
    # FIFOs are skipped; directory modes are not copied (as Codex).
    assert not os.path.lexists(copy / "fifo")
    assert stat.S_IMODE((copy / "sub").stat().st_mode) != 0o700
    # A second copy merges: directories and files are fine, existing symlinks are not.
    await expect_error(
        fs.copy(
            params(
                m.FsCopyParams, sourcePath=f"{tree}/d", destinationPath=f"{tree}/d2", recursive=True
            )
        ),
        INTERNAL_ERROR,
        EEXIST_TEXT,
    )


async def test_copy_directory_merges_into_existing_directory(
    fs: FileSystemHandler, tree: Path
) -> None:
    await fs.copy(
        params(
            m.FsCopyParams,
            sourcePath=f"{tree}/d/sub",
            destinationPath=f"{tree}/empty",
            recursive=True,
        )
    )
    assert (tree / "empty" / "a").read_bytes() == b"x\n"


@pytest.mark.parametrize("destination", ["d", "d/sub/inner", "d/ld/inner", "ld2/../d/new"])
async def test_copy_directory_into_itself_is_refused(
    fs: FileSystemHandler, tree: Path, destination: str
) -> None:
    await expect_error(
        fs.copy(
            params(
                m.FsCopyParams,
                sourcePath=f"{tree}/d",
                destinationPath=f"{tree}/{destination}",
                recursive=True,
            )
        ),
        INVALID_REQUEST,
        COPY_INTO_SELF_TEXT,
    )


async def test_copy_directory_to_a_sibling_with_common_prefix(
    fs: FileSystemHandler, tree: Path
) -> None:
    await fs.copy(
        params(m.FsCopyParams, sourcePath=f"{tree}/d", destinationPath=f"{tree}/dd", recursive=True)
    )
    assert (tree / "dd" / "sub" / "a").exists()


@pytest.mark.parametrize(
    ("source", "destination", "recursive"),
    [
        ("d/lf", "lf2", False),
        ("d/ld", "ld3", True),
        ("d/ld", "ld4", False),
        ("d/broken", "b2", False),
    ],
)
async def test_copy_symlink_is_preserved(
    fs: FileSystemHandler, tree: Path, source: str, destination: str, recursive: bool
) -> None:
    await fs.copy(
        params(
            m.FsCopyParams,
            sourcePath=f"{tree}/{source}",
            destinationPath=f"{tree}/{destination}",
            recursive=recursive,
        )
    )
    assert (tree / destination).is_symlink()
    assert os.readlink(tree / destination) == os.readlink(tree / source)


@pytest.mark.parametrize(
    ("source", "destination", "recursive", "code", "message"),
    [
        ("d/lf", "f", False, INTERNAL_ERROR, EEXIST_TEXT),
        ("d/fifo", "fifo2", False, INVALID_REQUEST, COPY_SPECIAL_TEXT),
        ("d", "f", True, INTERNAL_ERROR, EEXIST_TEXT),
        ("f", "d", False, INTERNAL_ERROR, EISDIR_TEXT),
        ("f", "nop/x", False, NOT_FOUND, ENOENT_TEXT),
        ("missing", "x", False, NOT_FOUND, ENOENT_TEXT),
        ("missing", "x", True, NOT_FOUND, ENOENT_TEXT),
    ],
)
async def test_copy_errors(
    fs: FileSystemHandler,
    tree: Path,
    source: str,
    destination: str,
    recursive: bool,
    code: int,
    message: str,
) -> None:
    await expect_error(
        fs.copy(
            params(
                m.FsCopyParams,
                sourcePath=f"{tree}/{source}",
                destinationPath=f"{tree}/{destination}",
                recursive=recursive,
            )
        ),
        code,
        message,
    )


async def test_copy_of_sizeless_proc_file(fs: FileSystemHandler, tmp_path: Path) -> None:
    await fs.copy(
        params(
            m.FsCopyParams,
            sourcePath="/proc/version",
            destinationPath=str(tmp_path / "v"),
            recursive=False,
        )
    )
    assert (tmp_path / "v").read_bytes() == Path("/proc/version").read_bytes()


async def test_copy_deep_tree_does_not_recurse(fs: FileSystemHandler, tmp_path: Path) -> None:
    deep = tmp_path / "src"
    leaf = deep
    for _ in range(300):
        leaf = leaf / "d"
    os.makedirs(leaf)
    (leaf / "x").write_bytes(b"leaf")
    # Worker threads start with shallow stacks: a recursive tree walk would need
    # 300+ frames there, an iterative one a couple of dozen.
    depth = 0
    frame = sys._getframe()
    while frame.f_back is not None:
        depth += 1
        frame = frame.f_back
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(depth + 150)
    try:
        await fs.copy(
            params(
                m.FsCopyParams,
                sourcePath=str(deep),
                destinationPath=str(tmp_path / "dst"),
                recursive=True,
            )
        )
    finally:
        sys.setrecursionlimit(limit)
    assert (tmp_path / "dst" / leaf.relative_to(deep) / "x").read_bytes() == b"leaf"


# --- our extensions: ranged reads, offset writes, checksum -----------------------


async def test_ranged_read_offset_write_and_checksum(tmp_path: Path) -> None:
    fs = FileSystemHandler()
    target = tmp_path / "ranged.bin"
    data = bytes(range(256)) * 64
    target.write_bytes(data)
    part = await fs.read_file(m.FsReadFileParams(path=str(target), offset=100, length=50))
    assert part.data_base64 == data[100:150]
    tail = await fs.read_file(m.FsReadFileParams(path=str(target), offset=len(data) - 10))
    assert tail.data_base64 == data[-10:]
    past = await fs.read_file(m.FsReadFileParams(path=str(target), offset=len(data) + 5, length=4))
    assert past.data_base64 == b""
    encoded = pybase64.b64encode(b"XYZ").decode()
    await fs.write_file(m.FsWriteFileParams(path=str(target), data_base64=encoded, offset=10))
    expected = data[:10] + b"XYZ" + data[13:]
    assert target.read_bytes() == expected
    result = await fs.checksum(m.FsChecksumParams(path=str(target)))
    assert result.digest == hashlib.sha256(expected).hexdigest()
    assert result.size == len(expected)
    with pytest.raises(RpcError) as info:
        await fs.write_file(
            m.FsWriteFileParams(path=str(tmp_path / "missing"), data_base64=encoded, offset=0)
        )
    assert info.value.code == -32004
    with pytest.raises(RpcError) as info:
        await fs.read_file(m.FsReadFileParams(path=str(target), offset=-1, length=2))
    assert info.value.code == -32602
