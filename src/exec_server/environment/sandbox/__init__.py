"""The sandbox: one policy object built from Codex's portable sandbox intent.

* :mod:`.policy` parses Codex's ``FileSystemSandboxContext`` (the ``sandbox`` of
  ``process/start`` and of the fs methods) and resolves it into a
  :class:`SandboxPolicy`; its file part answers "may this path be read / written?"
  for the fs handler. ``sandbox: null`` is :data:`UNRESTRICTED`.
* :mod:`.confinement` turns the same policy into kernel confinement for a child
  process (Landlock, a private mount namespace for carve-outs, seccomp, no
  capabilities), and fails closed when this machine cannot apply what it asks.
"""

from ...protocol.path_uri import RELATIVE_PATH_MESSAGE, normalize_path
from .policy import (
    DYNAMIC_PERMISSIONS_NEED_CWD_MESSAGE,
    MALFORMED_PROFILE_MESSAGE,
    PLATFORM_DEFAULT_READ_ROOTS,
    PROTECTED_SUBDIRECTORIES,
    PROTECTED_SUBDIRECTORIES_0171,
    UNRESTRICTED,
    Access,
    EntrySpec,
    FsSandbox,
    ResolvedEntry,
    SandboxDenied,
    SandboxPolicy,
    SandboxSpec,
    UnsupportedPolicy,
    parse_absolute_path,
    parse_sandbox,
    resolve_location,
    resolve_policy,
    resolve_sandbox,
)

__all__ = [
    "DYNAMIC_PERMISSIONS_NEED_CWD_MESSAGE",
    "MALFORMED_PROFILE_MESSAGE",
    "PLATFORM_DEFAULT_READ_ROOTS",
    "PROTECTED_SUBDIRECTORIES",
    "PROTECTED_SUBDIRECTORIES_0171",
    "RELATIVE_PATH_MESSAGE",
    "UNRESTRICTED",
    "Access",
    "EntrySpec",
    "FsSandbox",
    "ResolvedEntry",
    "SandboxDenied",
    "SandboxPolicy",
    "SandboxSpec",
    "UnsupportedPolicy",
    "normalize_path",
    "parse_absolute_path",
    "parse_sandbox",
    "resolve_location",
    "resolve_policy",
    "resolve_sandbox",
]
