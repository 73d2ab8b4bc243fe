"""What the environment says about itself: shell, working directory, home.

Defaults for a process's ``cwd`` come from here, never from the harness machine.
Codex 0.171 sends it in the ``initialize`` result (``environmentInfo``, paths as
``file://`` URIs); our server answers ``environment/info`` (plain paths); Codex 0.133
has neither (-32601), and then nothing is known. Paths are kept as the server wrote
them, because that is the form it accepts back (0.171 refuses plain paths, 0.133
refuses URIs); :func:`local_path` turns either into a plain path for display.

When the environment announced URI paths in ``initialize``, the client sends the
absolute paths it is given as URIs too (:func:`path_uri`), so the same code drives
both eras; otherwise paths go as given.
"""

from __future__ import annotations

import msgspec

#: The working directory when the environment reports none (Codex 0.133).
FALLBACK_CWD = "/"


class EnvironmentInfo(msgspec.Struct, frozen=True):
    """The environment's own description (``None`` where it did not say).

    ``cwd``, ``home`` and ``temp_dir`` are as the server reported them: plain paths
    or ``file://`` URIs. ``default_cwd`` is where processes start unless told
    otherwise: the server's ``cwd``, else its home, else ``/``.
    """

    shell_name: str | None = None
    shell_path: str | None = None
    cwd: str | None = None
    home: str | None = None
    temp_dir: str | None = None
    platform_os: str | None = None
    executor_version: str | None = None

    @property
    def default_cwd(self) -> str:
        return self.cwd or self.home or FALLBACK_CWD


def local_path(path_or_uri: str) -> str:
    """``file:///a%20b`` -> ``/a b``; a plain path is returned unchanged."""
    if not path_or_uri.startswith("file:"):
        return path_or_uri
    from urllib.parse import unquote, urlsplit

    parts = urlsplit(path_or_uri)
    return unquote(parts.path) or "/"


def path_uri(path: str) -> str:
    """``/a b`` -> ``file:///a%20b``; anything not an absolute path is returned unchanged."""
    if not path.startswith("/"):
        return path
    from urllib.parse import quote

    return "file://" + quote(path, safe="/")


def uses_uris(info: EnvironmentInfo | None) -> bool:
    """Whether the environment writes its paths as ``file://`` URIs (Codex 0.169+)."""
    return info is not None and (info.cwd or info.home or "").startswith("file:")


class _ShellWire(msgspec.Struct):
    name: str | None = None
    path: str | None = None


class _InfoWire(msgspec.Struct, rename="camel"):
    shell: _ShellWire | None = None
    cwd: str | None = None
    home: str | None = None
    user_home_dir: str | None = None
    temp_dir: str | None = None
    platform_os: str | None = None
    executor_version: str | None = None


class InitializeWire(msgspec.Struct, rename="camel"):
    """The ``initialize`` result; ``environmentInfo`` (0.169+) is read leniently."""

    session_id: str
    environment_info: msgspec.Raw = msgspec.Raw(b"null")


_info_decoder = msgspec.json.Decoder(_InfoWire)


def parse_environment_info(raw: msgspec.Raw | bytes | None) -> EnvironmentInfo | None:
    """The environment info in ``raw``, or ``None`` if absent or not understood (a
    field of an unexpected type must not break the session)."""
    if raw is None or bytes(raw) in (b"", b"null"):
        return None
    try:
        wire = _info_decoder.decode(raw)
    except msgspec.DecodeError:
        return None
    shell = wire.shell or _ShellWire()
    return EnvironmentInfo(
        shell_name=shell.name,
        shell_path=shell.path,
        cwd=wire.cwd,
        home=wire.home or wire.user_home_dir,
        temp_dir=wire.temp_dir,
        platform_os=wire.platform_os,
        executor_version=wire.executor_version,
    )
