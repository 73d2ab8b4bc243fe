"""Texts as Codex's Rust build writes them, for a wire identical to it.

* :func:`os_error_text`: an OS error as Rust's ``io::Error`` displays it on Codex's
  static musl build (``Symbolic link loop (os error 40)``: musl's ``strerror``
  wording, not glibc's). Every method uses it: ``process/start`` spawn errors as
  much as ``fs/*`` errors (probed: 0.171 says ``Symbolic link loop`` for both).
* :func:`decode_base64`: standard padded base64 as the Rust ``base64`` crate
  decodes it, failing with that crate's messages.
"""

from __future__ import annotations

import binascii
import errno
import re

import pybase64

from ..protocol.errors import InvalidRequest

# --- OS errors -----------------------------------------------------------------------

# musl's strerror() texts (Codex's Linux build is static musl, and Rust's io::Error
# prints strerror), keyed by errno name so the table stays portable.
_MUSL_STRERROR_BY_NAME = {
    "EILSEQ": "Illegal byte sequence",
    "EDOM": "Domain error",
    "ERANGE": "Result not representable",
    "ENOTTY": "Not a tty",
    "EACCES": "Permission denied",
    "EPERM": "Operation not permitted",
    "ENOENT": "No such file or directory",
    "ESRCH": "No such process",
    "EEXIST": "File exists",
    "EOVERFLOW": "Value too large for data type",
    "ENOSPC": "No space left on device",
    "ENOMEM": "Out of memory",
    "EBUSY": "Resource busy",
    "EINTR": "Interrupted system call",
    "EAGAIN": "Resource temporarily unavailable",
    "ESPIPE": "Invalid seek",
    "EXDEV": "Cross-device link",
    "EROFS": "Read-only file system",
    "ENOTEMPTY": "Directory not empty",
    "ECONNRESET": "Connection reset by peer",
    "ETIMEDOUT": "Operation timed out",
    "ECONNREFUSED": "Connection refused",
    "EHOSTDOWN": "Host is down",
    "EHOSTUNREACH": "Host is unreachable",
    "EADDRINUSE": "Address in use",
    "EPIPE": "Broken pipe",
    "EIO": "I/O error",
    "ENXIO": "No such device or address",
    "ENOTBLK": "Block device required",
    "ENODEV": "No such device",
    "ENOTDIR": "Not a directory",
    "EISDIR": "Is a directory",
    "ETXTBSY": "Text file busy",
    "ENOEXEC": "Exec format error",
    "EINVAL": "Invalid argument",
    "E2BIG": "Argument list too long",
    "ELOOP": "Symbolic link loop",
    "ENAMETOOLONG": "Filename too long",
    "ENFILE": "Too many open files in system",
    "EMFILE": "No file descriptors available",
    "EBADF": "Bad file descriptor",
    "ECHILD": "No child process",
    "EFAULT": "Bad address",
    "EFBIG": "File too large",
    "EMLINK": "Too many links",
    "ENOLCK": "No locks available",
    "EDEADLK": "Resource deadlock would occur",
    "ENOTRECOVERABLE": "State not recoverable",
    "EOWNERDEAD": "Previous owner died",
    "ECANCELED": "Operation canceled",
    "ENOSYS": "Function not implemented",
    "ENOMSG": "No message of desired type",
    "EIDRM": "Identifier removed",
    "ENOSTR": "Device not a stream",
    "ENODATA": "No data available",
    "ETIME": "Device timeout",
    "ENOSR": "Out of streams resources",
    "ENOLINK": "Link has been severed",
    "EPROTO": "Protocol error",
    "EBADMSG": "Bad message",
    "EBADFD": "File descriptor in bad state",
    "ENOTSOCK": "Not a socket",
    "EDESTADDRREQ": "Destination address required",
    "EMSGSIZE": "Message too large",
    "EPROTOTYPE": "Protocol wrong type for socket",
    "ENOPROTOOPT": "Protocol not available",
    "EPROTONOSUPPORT": "Protocol not supported",
    "ESOCKTNOSUPPORT": "Socket type not supported",
    "ENOTSUP": "Not supported",
    "EPFNOSUPPORT": "Protocol family not supported",
    "EAFNOSUPPORT": "Address family not supported by protocol",
    "EADDRNOTAVAIL": "Address not available",
    "ENETDOWN": "Network is down",
    "ENETUNREACH": "Network unreachable",
    "ENETRESET": "Connection reset by network",
    "ECONNABORTED": "Connection aborted",
    "ENOBUFS": "No buffer space available",
    "EISCONN": "Socket is connected",
    "ENOTCONN": "Socket not connected",
    "ESHUTDOWN": "Cannot send after socket shutdown",
    "EALREADY": "Operation already in progress",
    "EINPROGRESS": "Operation in progress",
    "ESTALE": "Stale file handle",
    "EREMOTEIO": "Remote I/O error",
    "EDQUOT": "Quota exceeded",
    "ENOMEDIUM": "No medium found",
    "EMEDIUMTYPE": "Wrong medium type",
    "EMULTIHOP": "Multihop attempted",
    "ENOKEY": "Required key not available",
    "EKEYEXPIRED": "Key has expired",
    "EKEYREVOKED": "Key has been revoked",
    "EKEYREJECTED": "Key was rejected by service",
}
_MUSL_STRERROR: dict[int, str] = {
    getattr(errno, name): text
    for name, text in reversed(_MUSL_STRERROR_BY_NAME.items())
    if hasattr(errno, name)
}
# Aliases share a number (EWOULDBLOCK=EAGAIN, EOPNOTSUPP=ENOTSUP); building the map
# in reverse lets the first-listed name win, as musl's table order does.


def os_error_text(code: int) -> str:
    """``code`` as Rust's ``io::Error`` displays it on Codex's musl build."""
    return f"{_MUSL_STRERROR.get(code, 'No error information')} (os error {code})"


# --- base64 --------------------------------------------------------------------------

WRITE_BASE64_ERROR_PREFIX = "fs/writeFile requires valid base64 dataBase64: "

_B64_ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
_B64_VALUE = {symbol: value for value, symbol in enumerate(_B64_ALPHABET)}
_B64_INVALID = re.compile(rb"[^A-Za-z0-9+/]")
_PAD = ord("=")


def decode_base64(text: str) -> bytes:
    """Decode standard padded base64 exactly as strictly as Codex's decoder.

    pybase64 does the work; on failure the error is described the way Rust's
    ``base64`` crate (``STANDARD``: canonical padding, no trailing bits) words it,
    so the -32600 message matches 0.133 byte for byte.
    """
    try:
        data = pybase64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        detail = _base64_error(text.encode("utf-8", "surrogatepass"))
        raise InvalidRequest(WRITE_BASE64_ERROR_PREFIX + (detail or "Invalid padding")) from None
    # pybase64 accepts non-zero trailing bits ("aGl="); the crate does not.
    size = len(text)
    if size:
        tail = text[-4:].encode("ascii")
        detail = _base64_suffix_error(tail, size - len(tail), size)
        if detail is not None:
            raise InvalidRequest(WRITE_BASE64_ERROR_PREFIX + detail)
    return data


def _base64_error(data: bytes) -> str | None:
    """The base64 crate's error for ``data``, or ``None`` if it decodes."""
    size = len(data)
    remainder = size % 4
    # The crate first reports a stray final byte (like a newline) at its offset.
    if remainder == 1 and data[-1] != _PAD and data[-1] not in _B64_VALUE:
        return _invalid_symbol(size - 1, data[-1])
    # All complete quads except the last are decoded strictly, '=' included.
    body_end = size - remainder if remainder else max(size - 4, 0)
    bad = _B64_INVALID.search(data, 0, body_end)
    if bad is not None:
        return _invalid_symbol(bad.start(), data[bad.start()])
    return _base64_suffix_error(data[body_end:], body_end, size)


def _base64_suffix_error(tail: bytes, offset: int, total: int) -> str | None:
    """The crate's checks on the final (up to 4-byte) group starting at ``offset``."""
    morsels: list[int] = []
    padding = 0
    first_padding = 0
    last_symbol = 0
    for index, symbol in enumerate(tail):
        if symbol == _PAD:
            if index < 2:
                return _invalid_symbol(offset + index, symbol)
            if padding == 0:
                first_padding = index
            padding += 1
            continue
        if padding:
            return _invalid_symbol(offset + first_padding, _PAD)
        value = _B64_VALUE.get(symbol)
        if value is None:
            return _invalid_symbol(offset + index, symbol)
        last_symbol = symbol
        morsels.append(value)
    if total and len(morsels) < 2:
        return f"Invalid input length: {offset + len(morsels)}"
    if (padding + len(morsels)) % 4:
        return "Invalid padding"
    packed = 0
    for shift, value in zip((26, 20, 14, 8), morsels, strict=False):
        packed |= value << shift
    unused_bits_mask = 0xFFFFFFFF >> (len(morsels) * 6 // 8 * 8)
    if packed & unused_bits_mask:
        return f"Invalid last symbol {last_symbol}, offset {offset + len(morsels) - 1}."
    return None


def _invalid_symbol(offset: int, symbol: int) -> str:
    return f"Invalid symbol {symbol}, offset {offset}."
