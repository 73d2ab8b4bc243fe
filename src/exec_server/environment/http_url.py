"""URL parsing for ``http/request``: the WHATWG URL rules Codex's ``url`` crate applies.

Codex 0.133 parses ``http/request`` URLs (and redirect ``Location`` headers) with the
Rust ``url`` crate, and both its ``-32602 http/request url is invalid: <reason>`` texts
and the URL shown in ``error sending request for url (<url>)`` come from it. Python's
``urllib``/``yarl`` normalize differently (``http:///x``, ``http://0x7f.1/``,
``/a/%2e%2e/b``...), so this module implements the part of the WHATWG URL standard
that matters for HTTP requests:

* special schemes (``http``, ``https``, ``ws``, ``wss``, ``ftp``): authority with
  userinfo, IPv6, WHATWG IPv4 (hex, octal, fewer than four parts), IDNA domains,
  default-port elision, dot-segment removal, ``\\`` as ``/`` and percent-encoding of
  path, query and fragment; relative references against a base (for redirects);
* any other scheme is kept opaque: enough to name it in "only supports http and
  https URLs, got <scheme>" and to show it in an error.

Reasons match the ``url`` crate's ``ParseError`` display texts as 0.133 reports them,
for example ``relative URL without a base``, ``empty host``, ``invalid port number``,
``invalid IPv4 address``, ``invalid IPv6 address`` and ``invalid international domain
name`` (0.133 reports forbidden host characters such as a space with that last one).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, replace

import yarl

SPECIAL_DEFAULT_PORTS: dict[str, int | None] = {
    "http": 80,
    "https": 443,
    "ws": 80,
    "wss": 443,
    "ftp": 21,
}

RELATIVE_WITHOUT_BASE = "relative URL without a base"
EMPTY_HOST = "empty host"
INVALID_PORT = "invalid port number"
INVALID_IPV4 = "invalid IPv4 address"
INVALID_IPV6 = "invalid IPv6 address"
INVALID_DOMAIN = "invalid international domain name"

_SCHEME_FIRST = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
_SCHEME_REST = _SCHEME_FIRST | frozenset("0123456789+-.")
_HEX = frozenset("0123456789abcdefABCDEF")
_C0_AND_SPACE = "".join(chr(c) for c in range(0x21))

# Percent-encode sets (the ``url`` crate's; bytes >= 0x7F are always encoded).
_QUERY_SET = frozenset(b' "#<>')
_SPECIAL_QUERY_SET = _QUERY_SET | frozenset(b"'")
_FRAGMENT_SET = frozenset(b' "<>`')
_PATH_SET = _QUERY_SET | frozenset(b"?`{}")
_USERINFO_SET = _PATH_SET | frozenset(b"/:;=@[\\]^|")
# WHATWG forbidden domain code points (forbidden host code points, C0, % and DEL).
_FORBIDDEN_DOMAIN = frozenset("\x00\t\n\r #/:<>?@[\\]^|%\x7f") | frozenset(
    chr(c) for c in range(0x20)
)


class UrlError(ValueError):
    """The text is not a usable URL; ``str(exc)`` is the ``url`` crate's reason."""


@dataclass(frozen=True, slots=True)
class Url:
    """A parsed URL, already normalized; :meth:`serialize` gives the WHATWG href."""

    scheme: str
    #: Percent-encoded userinfo parts ("" when absent).
    username: str = ""
    password: str = ""
    #: Serialized host: a lower-case ASCII domain, dotted IPv4 or ``[ipv6]``.
    host: str = ""
    #: None for the scheme's default port.
    port: int | None = None
    #: Serialized path (always starting with ``/`` for special schemes).
    path: str = "/"
    query: str | None = None
    fragment: str | None = None
    #: For non-special schemes: everything after ``scheme:``, kept as given.
    opaque: str | None = None

    @property
    def is_special(self) -> bool:
        return self.opaque is None

    @property
    def effective_port(self) -> int | None:
        return self.port if self.port is not None else SPECIAL_DEFAULT_PORTS.get(self.scheme)

    @property
    def authority(self) -> str:
        """``host[:port]`` as sent in the ``Host`` header."""
        return self.host if self.port is None else f"{self.host}:{self.port}"

    @property
    def target(self) -> str:
        """The request target: path and query, never the fragment."""
        return self.path if self.query is None else f"{self.path}?{self.query}"

    def serialize(self) -> str:
        if self.opaque is not None:
            return f"{self.scheme}:{self.opaque}"
        userinfo = ""
        if self.username or self.password:
            userinfo = self.username + (f":{self.password}" if self.password else "") + "@"
        text = f"{self.scheme}://{userinfo}{self.authority}{self.target}"
        return text if self.fragment is None else f"{text}#{self.fragment}"

    def without_credentials(self) -> Url:
        return replace(self, username="", password="")

    def origin_key(self) -> tuple[str, int | None]:
        """What must match for credentials to follow a redirect (host and port)."""
        return self.host, self.effective_port

    def __str__(self) -> str:
        return self.serialize()


def parse_url(text: str, base: Url | None = None) -> Url:
    """Parse ``text`` (absolute, or relative to ``base``) the WHATWG way.

    Raises :class:`UrlError` with the ``url`` crate's reason text.
    """
    text = text.strip(_C0_AND_SPACE).replace("\t", "").replace("\n", "").replace("\r", "")
    scheme, rest = _split_scheme(text)
    if scheme is None:
        if base is None or not base.is_special:
            raise UrlError(RELATIVE_WITHOUT_BASE)
        return _parse_relative(text, base)
    if scheme not in SPECIAL_DEFAULT_PORTS:
        return Url(scheme=scheme, path="", opaque=_encode(rest, frozenset()))
    if base is not None and base.scheme == scheme and base.is_special and not _starts_slash(rest):
        # "http:foo" relative to an http base is a path-relative reference.
        return _parse_relative(rest, base)
    return _parse_authority_and_rest(scheme, rest.lstrip("/\\"))


def _split_scheme(text: str) -> tuple[str | None, str]:
    if not text or text[0] not in _SCHEME_FIRST:
        return None, text
    for i, ch in enumerate(text):
        if ch == ":":
            return text[:i].lower(), text[i + 1 :]
        if ch not in _SCHEME_REST:
            return None, text
    return None, text


def _starts_slash(text: str) -> bool:
    return text[:1] in ("/", "\\")


def _parse_relative(text: str, base: Url) -> Url:
    if text[:2] in ("//", "\\\\", "/\\", "\\/"):
        return _parse_authority_and_rest(base.scheme, text.lstrip("/\\"))
    rest, fragment = _split_once(text, "#")
    if not rest and fragment is None:
        return replace(base, fragment=None)
    path_text, query = _split_once(rest, "?")
    if not path_text:
        if query is None:
            return replace(base, fragment=_fragment(fragment))
        return replace(base, query=_query(query), fragment=_fragment(fragment))
    if _starts_slash(path_text):
        path = _path(path_text)
    else:
        base_segments = base.path.split("/")[1:-1]
        path = _path(path_text, base_segments)
    return replace(base, path=path, query=_query(query), fragment=_fragment(fragment))


def _parse_authority_and_rest(scheme: str, text: str) -> Url:
    end = len(text)
    for i, ch in enumerate(text):
        if ch in "/\\?#":
            end = i
            break
    authority, remainder = text[:end], text[end:]
    username = password = ""
    at = authority.rfind("@")
    if at >= 0:
        userinfo, authority = authority[:at], authority[at + 1 :]
        user, _, pw = userinfo.partition(":")
        username, password = _encode(user, _USERINFO_SET), _encode(pw, _USERINFO_SET)
    host_text, port_text = _split_host_port(authority)
    if not host_text:
        raise UrlError(EMPTY_HOST)
    host = _parse_host(host_text)
    port = _parse_port(port_text, scheme)
    rest, fragment = _split_once(remainder, "#")
    path_text, query = _split_once(rest, "?")
    return Url(
        scheme=scheme,
        username=username,
        password=password,
        host=host,
        port=port,
        path=_path(path_text),
        query=_query(query),
        fragment=_fragment(fragment),
    )


def _split_once(text: str, sep: str) -> tuple[str, str | None]:
    head, found, tail = text.partition(sep)
    return head, (tail if found else None)


def _split_host_port(authority: str) -> tuple[str, str | None]:
    in_brackets = False
    for i, ch in enumerate(authority):
        if ch == "[":
            in_brackets = True
        elif ch == "]":
            in_brackets = False
        elif ch == ":" and not in_brackets:
            return authority[:i], authority[i + 1 :]
    return authority, None


def _parse_port(text: str | None, scheme: str) -> int | None:
    if not text:
        return None
    if not text.isascii() or not text.isdigit():
        raise UrlError(INVALID_PORT)
    port = int(text)
    if port > 65535:
        raise UrlError(INVALID_PORT)
    return None if port == SPECIAL_DEFAULT_PORTS.get(scheme) else port


# --- hosts -----------------------------------------------------------------------------


def _parse_host(text: str) -> str:
    if text.startswith("["):
        if not text.endswith("]"):
            raise UrlError(INVALID_IPV6)
        return f"[{_parse_ipv6(text[1:-1])}]"
    domain = _percent_decode(text)
    if any(ch in _FORBIDDEN_DOMAIN for ch in domain):
        raise UrlError(INVALID_DOMAIN)
    ascii_domain = _domain_to_ascii(domain)
    if _ends_in_number(ascii_domain):
        return _parse_ipv4(ascii_domain)
    return ascii_domain


def _domain_to_ascii(domain: str) -> str:
    if domain.isascii():
        lowered = domain.lower()
        for label in lowered.split("."):
            if label.startswith("xn--"):
                _check_punycode(label)
        return lowered
    try:
        encoded = yarl.URL.build(scheme="http", host=domain).raw_host
    except (ValueError, UnicodeError):
        raise UrlError(INVALID_DOMAIN) from None
    if not encoded or any(ch in _FORBIDDEN_DOMAIN for ch in encoded):
        raise UrlError(INVALID_DOMAIN)
    return encoded


def _check_punycode(label: str) -> None:
    try:
        decoded = label[4:].encode("ascii").decode("punycode")
    except (UnicodeError, ValueError):
        raise UrlError(INVALID_DOMAIN) from None
    # A valid A-label is exactly what IDNA encoding of its decoded form gives back.
    if not decoded or decoded.isascii():
        raise UrlError(INVALID_DOMAIN)
    try:
        reencoded = yarl.URL.build(scheme="http", host=decoded).raw_host
    except (ValueError, UnicodeError):
        raise UrlError(INVALID_DOMAIN) from None
    if reencoded != label:
        raise UrlError(INVALID_DOMAIN)


def _ends_in_number(domain: str) -> bool:
    parts = domain.split(".")
    if parts[-1] == "" and len(parts) > 1:
        parts.pop()
    last = parts[-1]
    if last and last.isascii() and last.isdigit():
        return True
    return last[:2] in ("0x", "0X") and all(ch in _HEX for ch in last[2:])


def _parse_ipv4(domain: str) -> str:
    parts = domain.split(".")
    if parts[-1] == "" and len(parts) > 1:
        parts.pop()
    if len(parts) > 4:
        raise UrlError(INVALID_IPV4)
    numbers = [_parse_ipv4_number(part) for part in parts]
    if any(n > 255 for n in numbers[:-1]) or numbers[-1] >= 256 ** (5 - len(numbers)):
        raise UrlError(INVALID_IPV4)
    value = numbers[-1]
    for i, n in enumerate(numbers[:-1]):
        value += n * 256 ** (3 - i)
    return str(ipaddress.IPv4Address(value))


def _parse_ipv4_number(part: str) -> int:
    if not part:
        raise UrlError(INVALID_IPV4)
    radix = 10
    if part[:2] in ("0x", "0X"):
        radix, part = 16, part[2:]
    elif len(part) > 1 and part[0] == "0":
        radix, part = 8, part[1:]
    if not part:
        return 0
    digits = "0123456789abcdef"[:radix]
    if not all(ch in digits for ch in part.lower()):
        raise UrlError(INVALID_IPV4)
    return int(part, radix)


def _parse_ipv6(text: str) -> str:
    if "%" in text or not text.isascii():
        raise UrlError(INVALID_IPV6)
    try:
        packed = ipaddress.IPv6Address(text).packed
    except ValueError:
        raise UrlError(INVALID_IPV6) from None
    pieces = [int.from_bytes(packed[i : i + 2], "big") for i in range(0, 16, 2)]
    # Compress the first longest run of two or more zero pieces.
    best_start, best_len, i = -1, 1, 0
    while i < 8:
        if pieces[i] == 0:
            j = i
            while j < 8 and pieces[j] == 0:
                j += 1
            if j - i > best_len:
                best_start, best_len = i, j - i
            i = j
        else:
            i += 1
    if best_start < 0:
        return ":".join(f"{p:x}" for p in pieces)
    head = ":".join(f"{p:x}" for p in pieces[:best_start])
    tail = ":".join(f"{p:x}" for p in pieces[best_start + best_len :])
    return f"{head}::{tail}"


# --- path, query, fragment ---------------------------------------------------------------


def _path(text: str, base_segments: list[str] | None = None) -> str:
    segments = list(base_segments or [])
    raw = text.replace("\\", "/")
    parts = raw.split("/")
    if raw.startswith("/"):
        parts = parts[1:]
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        lowered = part.lower()
        if lowered in ("..", ".%2e", "%2e.", "%2e%2e"):
            if segments:
                segments.pop()
            if last:
                segments.append("")
        elif lowered in (".", "%2e"):
            if last:
                segments.append("")
        else:
            segments.append(_encode(part, _PATH_SET))
    return "/" + "/".join(segments)


def _query(text: str | None) -> str | None:
    return None if text is None else _encode(text, _SPECIAL_QUERY_SET)


def _fragment(text: str | None) -> str | None:
    return None if text is None else _encode(text, _FRAGMENT_SET)


def _encode(text: str, encode_set: frozenset[int]) -> str:
    if text.isascii() and not any(ord(ch) < 0x20 or ord(ch) in encode_set for ch in text):
        return text
    out = []
    for byte in text.encode("utf-8", "surrogatepass"):
        if byte < 0x20 or byte >= 0x7F or byte in encode_set:
            out.append(f"%{byte:02X}")
        else:
            out.append(chr(byte))
    return "".join(out)


def _percent_decode(text: str) -> str:
    if "%" not in text:
        return text
    data = text.encode("utf-8", "surrogatepass")
    out = bytearray()
    i = 0
    while i < len(data):
        if data[i] == 0x25 and _is_hex_pair(data[i + 1 : i + 3]):
            out.append(int(data[i + 1 : i + 3], 16))
            i += 3
        else:
            out.append(data[i])
            i += 1
    return out.decode("utf-8", "replace")


def _is_hex_pair(pair: bytes) -> bool:
    return len(pair) == 2 and all(chr(b) in _HEX for b in pair)
