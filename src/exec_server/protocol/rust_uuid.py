"""UUID text validation with the Rust ``uuid`` crate's rules and error texts.

Codex 0.171 types ``process/start.metadata.threadId`` as a ``Uuid``, so a bad one is
a -32602 whose message is the crate's (``invalid character: expected an optional
prefix of `urn:uuid:` followed by [0-9a-fA-F-], found `n` at 1``). Accepted forms:
32 hex digits, the hyphenated 8-4-4-4-12 form, and that form in braces or after
``urn:uuid:``; hex digits in either case.
"""

from __future__ import annotations

_HEX = frozenset("0123456789abcdefABCDEF")
_GROUP_LENGTHS = (8, 4, 4, 4, 12)
_GROUP_STARTS = (0, 9, 14, 19, 24)
_URN = "urn:uuid:"


def uuid_error(text: str) -> str | None:
    """``None`` when ``text`` is a UUID the crate parses, else the crate's message."""
    if _parses(text):
        return None
    body, offset, simple = text, 0, True
    if len(text) >= 2 and text[0] == "{" and text[-1] == "}":
        body, offset, simple = text[1:-1], 1, False
    elif text.startswith(_URN):
        body, offset, simple = text[len(_URN) :], len(_URN), False
    hyphens: list[int] = []
    byte_index = 0
    for char in body:
        if ord(char) > 0x7F or (char != "-" and char not in _HEX):
            return (
                "invalid character: expected an optional prefix of `urn:uuid:` followed by "
                f"[0-9a-fA-F-], found `{char}` at {byte_index + offset + 1}"
            )
        if char == "-":
            hyphens.append(byte_index)
        byte_index += len(char.encode())
    if not hyphens and simple:
        return f"invalid length: expected length 32 for simple format, found {len(text)}"
    if len(hyphens) != 4:
        return f"invalid group count: expected 5, found {len(hyphens) + 1}"
    for group, bound in enumerate(hyphens):
        if bound != _GROUP_STARTS[group + 1] - 1:
            return _group_length(group, bound - _GROUP_STARTS[group])
    return _group_length(4, len(body) - hyphens[3] - 1)


def _group_length(group: int, found: int) -> str:
    expected = _GROUP_LENGTHS[group]
    return f"invalid group length in group {group}: expected {expected}, found {found}"


def _parses(text: str) -> bool:
    if len(text) == 32:
        return all(c in _HEX for c in text)
    if len(text) == 38 and text[0] == "{" and text[-1] == "}":
        text = text[1:-1]
    elif len(text) == 45 and text.startswith(_URN):
        text = text[len(_URN) :]
    if len(text) != 36:
        return False
    groups = text.split("-")
    return [len(g) for g in groups] == list(_GROUP_LENGTHS) and all(
        c in _HEX for g in groups for c in g
    )
