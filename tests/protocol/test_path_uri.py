"""Wire paths of both eras. The expected texts are what the real binaries answered:
0.133 for native paths, 0.171 for ``file://`` URIs (probed against
``codex exec-server`` 0.171.0; the interop suite checks the same side by side)."""

from __future__ import annotations

import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

from exec_server.protocol.errors import INVALID_PARAMS, INVALID_REQUEST, RpcError
from exec_server.protocol.path_uri import (
    RELATIVE_PATH_MESSAGE,
    WirePath,
    parse_wire_path,
    path_to_uri,
    speaks_uri,
)


def error_of(raw: str) -> tuple[int, str]:
    with pytest.raises(RpcError) as info:
        parse_wire_path(raw)
    return info.value.code, info.value.message


@pytest.mark.parametrize(
    ("raw", "native"),
    [
        ("/a/./b//c/", "/a/b/c"),
        ("/a/link/../x", "/a/x"),
        ("//x", "/x"),
    ],
)
def test_native_paths_are_0133_requests(raw: str, native: str) -> None:
    assert parse_wire_path(raw) == WirePath(native, is_uri=False)


@pytest.mark.parametrize(
    ("raw", "native"),
    [
        ("file:///tmp/f.txt", "/tmp/f.txt"),
        ("FILE:///tmp/f.txt", "/tmp/f.txt"),
        ("file://localhost/tmp/f.txt", "/tmp/f.txt"),
        ("file://LocalHost/tmp/f.txt", "/tmp/f.txt"),
        ("file:///tmp/f%2etxt", "/tmp/f.txt"),
        ("file:///tmp/d/../f.txt", "/tmp/f.txt"),
        ("file:///tmp/f.txt/", "/tmp/f.txt"),
        ("file:rel", "/rel"),
        ("file:/abs/x", "/abs/x"),
        ("file://", "/"),
        ("file:///", "/"),
        ("file:////x", "/x"),
        ("file:///sp%20ace/%C3%BC", "/sp ace/ü"),
    ],
)
def test_file_uris_are_0171_requests(raw: str, native: str) -> None:
    assert parse_wire_path(raw) == WirePath(native, is_uri=True)


def test_non_utf8_escapes_survive_as_bytes() -> None:
    path = parse_wire_path("file:///tmp/bad%FF").native
    assert os.fsencode(path) == b"/tmp/bad\xff"
    assert path_to_uri(path) == "file:///tmp/bad%FF"


@pytest.mark.parametrize(
    ("raw", "code", "message"),
    [
        ("http://x/y", INVALID_PARAMS, "unsupported path URI scheme `http`"),
        ("C:/x", INVALID_PARAMS, "unsupported path URI scheme `c`"),
        ("file:///tmp/f?q=1", INVALID_PARAMS, "query parameters are not allowed in path URIs"),
        ("file:///tmp/f#frag", INVALID_PARAMS, "fragments are not allowed in path URIs"),
        ("file://otherhost/x", INVALID_REQUEST, "'file://otherhost/x' is invalid on 'linux'"),
        ("file://127.0.0.1/x", INVALID_REQUEST, "'file://127.0.0.1/x' is invalid on 'linux'"),
        ("file://%41/x", INVALID_REQUEST, "'file://a/x' is invalid on 'linux'"),
        ("file:///a%00b", INVALID_PARAMS, "'file:///a%00b' is invalid on 'linux'"),
        # 0.133's texts for what is not a URI.
        ("relative", INVALID_PARAMS, RELATIVE_PATH_MESSAGE),
        ("", INVALID_PARAMS, RELATIVE_PATH_MESSAGE),
        ("/a\x00b", INVALID_REQUEST, "file name contained an unexpected NUL byte"),
    ],
)
def test_errors_in_each_eras_words(raw: str, code: int, message: str) -> None:
    assert error_of(raw) == (code, message)


@pytest.mark.parametrize(
    ("name", "encoded"),
    [
        ("p%c", "p%25c"),
        ("h#sh", "h%23sh"),
        ("q?m", "q%3Fm"),
        ("br{}", "br%7B%7D"),
        ("ü", "%C3%BC"),
        ("back\\sl", "back%5Csl"),
        ("sq[]", "sq[]"),
        ("car^et", "car^et"),
        ("pi|pe", "pi|pe"),
        ('dq"', "dq%22"),
        ("lt<gt>", "lt%3Cgt%3E"),
        ("bt`", "bt%60"),
        ("sp ace", "sp%20ace"),
        ("\x01ctl", "%01ctl"),
        ("del\x7f", "del%7F"),
        ("semi;colon:at@eq=amp&plus+dol$co,ma()star*apo'ti~lde!", None),
    ],
)
def test_uris_are_encoded_like_the_url_crate(name: str, encoded: str | None) -> None:
    # Observed in fs/canonicalize answers of the 0.171 binary.
    assert path_to_uri("/tmp/" + name) == "file:///tmp/" + (encoded or name)


def test_speaks_uri() -> None:
    assert speaks_uri("file:///x") and speaks_uri("http://x") and speaks_uri("a+b.c-d:x")
    assert not speaks_uri("/x") and not speaks_uri("rel") and not speaks_uri("1a:x")


@given(st.binary(min_size=1, max_size=40).filter(lambda b: b"\x00" not in b))
def test_uri_round_trip(name: bytes) -> None:
    path = os.fsdecode(b"/d/" + name.replace(b"/", b"_"))
    parsed = parse_wire_path(path_to_uri(path))
    expected = parse_wire_path(path).native
    assert parsed == WirePath(expected, is_uri=True)
