"""Parsing of ``SCHEME://IP:PORT`` listen addresses, shared by every listener."""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit


class ListenUrlError(ValueError):
    """A ``--listen`` value that is not ``SCHEME://IP:PORT`` (the message says what is)."""


def parse_ip_port_url(url: str, scheme: str, expected: str) -> tuple[str, int]:
    """``scheme://IP:PORT`` (a literal IP, no path or query) -> ``(ip, port)``.

    ``expected`` completes the error message, e.g. "`ws://IP:PORT` or `stdio`".
    """
    error = ListenUrlError(f"unsupported --listen URL `{url}`; expected {expected}")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise error from None
    if parts.scheme != scheme or parts.hostname is None or port is None:
        raise error
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise error
    try:
        ipaddress.ip_address(parts.hostname)
    except ValueError:
        raise error from None
    return parts.hostname, port
