"""The sandbox: one policy object built from Codex's portable sandbox intent.

* :mod:`.spec` parses Codex's ``FileSystemSandboxContext`` (the ``sandbox`` of
  ``process/start`` and of the fs methods);
* :mod:`.policy` resolves it against the disk into a :class:`SandboxPolicy`;
* :mod:`.fs_sandbox` answers "may this path be read / written?" for the fs
  handler (:data:`ALLOW_ALL` for ``sandbox: null``);
* :mod:`.confinement` turns the same policy into kernel confinement for a child
  process (Landlock, a private mount namespace for carve-outs, seccomp, no
  capabilities), and fails closed when this machine cannot apply what it asks.
"""

from ...protocol.path_uri import RELATIVE_PATH_MESSAGE, normalize_path
from .fs_sandbox import (
    ALLOW_ALL,
    FileSandbox,
    FsSandbox,
    ResolvedEntry,
    SandboxDenied,
    Unrestricted,
    resolve_location,
)
from .policy import UNRESTRICTED, SandboxPolicy, resolve_policy, resolve_sandbox
from .spec import (
    DYNAMIC_PERMISSIONS_NEED_CWD_MESSAGE,
    MALFORMED_PROFILE_MESSAGE,
    PLATFORM_DEFAULT_READ_ROOTS,
    PROTECTED_SUBDIRECTORIES,
    PROTECTED_SUBDIRECTORIES_0171,
    Access,
    EntrySpec,
    SandboxSpec,
    UnsupportedPolicy,
    parse_absolute_path,
    parse_sandbox,
)

__all__ = [
    "ALLOW_ALL",
    "DYNAMIC_PERMISSIONS_NEED_CWD_MESSAGE",
    "MALFORMED_PROFILE_MESSAGE",
    "PLATFORM_DEFAULT_READ_ROOTS",
    "PROTECTED_SUBDIRECTORIES",
    "PROTECTED_SUBDIRECTORIES_0171",
    "RELATIVE_PATH_MESSAGE",
    "UNRESTRICTED",
    "Access",
    "EntrySpec",
    "FileSandbox",
    "FsSandbox",
    "ResolvedEntry",
    "SandboxDenied",
    "SandboxPolicy",
    "SandboxSpec",
    "Unrestricted",
    "UnsupportedPolicy",
    "normalize_path",
    "parse_absolute_path",
    "parse_sandbox",
    "resolve_location",
    "resolve_policy",
    "resolve_sandbox",
]
