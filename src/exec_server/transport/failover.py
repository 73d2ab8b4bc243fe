"""Several rendezvous base URLs for one service: which to use, and where to go next.

A rendezvous cluster (``exec-server rendezvous --cluster``) is reached at any of its
nodes; clients are given a list (``--remote URL1,URL2``, ``--rendezvous URL1,URL2``,
``connect(rendezvous=[...])``), start with the first and move to the next when one is
unreachable or dies mid-session. :class:`Failover` keeps that position (sans-IO: the
caller says what failed or worked). Every node verifies every node's signed URLs, so a
relay URL handed out by one node is rewritten for another with :func:`rebase_url`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar
from urllib.parse import urlsplit, urlunsplit

__all__ = [
    "RELAY_PATH_MARKER",
    "Failover",
    "alternate_urls",
    "dial_first",
    "parse_base_urls",
    "rebase_url",
]

_T = TypeVar("_T")

RELAY_PATH_MARKER = "/relay/"
"""Where a rendezvous websocket URL's own path starts (after any public prefix)."""


def parse_base_urls(urls: str | Sequence[str]) -> tuple[str, ...]:
    """``"http://a:1, http://b:2"`` (or a sequence of URLs) -> the URLs, trimmed, in order
    (duplicates dropped); ``ValueError`` when there is none."""
    parts = urls.split(",") if isinstance(urls, str) else list(urls)
    found: list[str] = []
    for part in parts:
        url = part.strip().rstrip("/")
        if url and url not in found:
            found.append(url)
    if not found:
        raise ValueError("no rendezvous URL given")
    return tuple(found)


def rebase_url(url: str, base: str) -> str:
    """The same relay websocket URL (path from ``/relay/`` on, query) on another node's
    base URL (``http(s)://`` becomes ``ws(s)://``)."""
    relay = urlsplit(url)
    at = relay.path.rfind(RELAY_PATH_MARKER)
    if at < 0:
        raise ValueError(f"not a rendezvous relay URL: {relay.path!r}")
    target = urlsplit(base)
    scheme = {"http": "ws", "https": "wss"}.get(target.scheme, target.scheme)
    path = target.path.rstrip("/") + relay.path[at:]
    return urlunsplit((scheme, target.netloc, path, relay.query, ""))


class Failover:
    """A position in a list of base URLs.

    :attr:`current` is the one to use; :meth:`failed` moves on and says whether a
    whole round failed since the last success (then back off before going on);
    :meth:`succeeded` starts a new round. :meth:`others` lists the rest, next first.
    """

    def __init__(self, urls: str | Sequence[str]) -> None:
        self.urls = parse_base_urls(urls)
        self._index = 0
        self._failures = 0

    @property
    def current(self) -> str:
        return self.urls[self._index]

    @property
    def index(self) -> int:
        return self._index

    def failed(self) -> bool:
        """The current URL failed: move to the next. True once every URL has failed
        since the last success (the caller should wait before trying again)."""
        self._failures += 1
        self._index = (self._index + 1) % len(self.urls)
        if self._failures >= len(self.urls):
            self._failures = 0
            return True
        return False

    def succeeded(self) -> None:
        self._failures = 0

    def others(self) -> list[str]:
        count = len(self.urls)
        return [self.urls[(self._index + step) % count] for step in range(1, count)]


def alternate_urls(url: str, bases: Sequence[str]) -> list[str]:
    """``url`` (a node's relay URL) on each of ``bases`` but its own node."""
    own = urlsplit(url).netloc
    return [
        other
        for other in (rebase_url(url, base) for base in bases)
        if urlsplit(other).netloc != own
    ]


async def dial_first(urls: Sequence[str], dial: Callable[[str], Awaitable[_T]]) -> tuple[str, _T]:
    """Dial ``urls`` in order: the first that answers, with what ``dial`` returned. When
    none does, the last one's error is raised."""
    if not urls:
        raise ValueError("no URL to dial")
    for index, url in enumerate(urls):
        try:
            return url, await dial(url)
        except Exception:
            if index == len(urls) - 1:
                raise
    raise AssertionError("unreachable")
