"""What the server tells a harness about its environment (Codex 0.171's ``EnvironmentInfo``).

Sent in every ``initialize`` result (``environmentInfo``) and by ``environment/info``.
A 0.171 harness decides from it which features to use: with every capability it
needs, it sends no ``environment/info`` and no ``process/read`` at all and relies
on notifications. Each :class:`~exec_server.protocol.messages.EnvironmentCapabilities`
flag here is true only for a feature implemented (and tested against the real
0.171 harness or binary) in this server; see :data:`CAPABILITIES`.

Fields that 0.171 fills from its own install have honest equivalents here:
``executorVersion`` is this package's version, ``prependPathDirs`` is empty (we
ship no helper binaries to put on ``PATH``), and ``providerId`` is a SHA-256 of
the machine's identity (``/etc/machine-id``, else the host name), so two servers
on one machine share it as two 0.171 executors do.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import os
import pwd
import socket
import sys
import tempfile

from ..protocol import messages as m
from ..protocol.path_uri import path_to_uri
from .missing_path_watch import inotify_available


def capabilities() -> m.EnvironmentCapabilities:
    """The features this server implements, as 0.171 names them (all others false)."""
    return m.EnvironmentCapabilities(
        fs_watch_missing=inotify_available(),
        environment_config_read=True,
        file_write_streaming=True,
        # capabilities/discoverV2 and capabilityRoots/discoverV1, each read through
        # the request's (or root's) sandbox.
        capability_discovery_v2=True,
        capability_discovery_sandbox=True,
        # fs/open under a sandbox checks the policy when the handle is opened (the
        # differential suite compares it with 0.171's).
        sandboxed_file_streaming=True,
    )


_PLATFORM_OS = {"linux": "linux", "darwin": "macos", "win32": "windows"}


@functools.cache
def executor_version() -> str:
    try:
        return importlib.metadata.version("exec-server")
    except importlib.metadata.PackageNotFoundError:
        return "0.0.0"


@functools.cache
def provider_id() -> str:
    identity = ""
    try:
        with open("/etc/machine-id", encoding="ascii") as f:
            identity = f.read().strip()
    except (OSError, UnicodeDecodeError):
        pass
    identity = identity or socket.gethostname()
    return "sha256:" + hashlib.sha256(identity.encode()).hexdigest()


def user_shell() -> m.ShellInfo:
    """The user's login shell: ``$SHELL``, else the password database, else ``/bin/sh``."""
    path = os.environ.get("SHELL") or ""
    if not path:
        try:
            path = pwd.getpwuid(os.getuid()).pw_shell
        except KeyError:
            path = ""
    path = path or "/bin/sh"
    return m.ShellInfo(name=os.path.basename(path), path=path)


def _cwd() -> str:
    try:
        return os.getcwd()
    except OSError:  # the directory was removed under us
        return "/"


def home_dir() -> str:
    return os.path.expanduser("~")


def environment_info() -> m.EnvironmentInfoResult:
    return m.EnvironmentInfoResult(
        shell=user_shell(),
        executor_version=executor_version(),
        provider_id=provider_id(),
        cwd=path_to_uri(_cwd()),
        user_home_dir=path_to_uri(home_dir()),
        platform_os=_PLATFORM_OS.get(sys.platform, sys.platform),
        prepend_path_dirs=[],
        temporary_directories=[],
        temp_dir=path_to_uri(tempfile.gettempdir()),
        capabilities=capabilities(),
    )
