"""Was a sandboxed process's failure caused by the sandbox? (0.171's ``sandboxDenied``)

Nothing in the kernel tells a denied ``open`` apart from any other failure, so
Codex guesses from the outcome, and so do we, with the rule probed from the 0.171
executor (same commands under a ``workspace-write`` sandbox and without one):

* only a sandboxed process that exited non-zero can have been denied;
* its retained output (both streams, case-insensitive) naming a denial counts:
  "operation not permitted", "permission denied", "read-only file system",
  "seccomp", "sandbox", "landlock", "failed to write file" (exit 2 too);
* otherwise exits 2, 126 and 127 (usage, not executable, not found) do not;
* death by SIGSYS (exit 159, a seccomp kill) does.

0.171 looks at what it retained (its last 1 MiB): a keyword followed by 2 MiB of
other output is not seen, one at the end is; ours retains the same amount.
"""

from __future__ import annotations

import signal
from collections.abc import Iterable

#: Lower-case markers of a denial in a command's output.
DENIAL_MARKERS = (
    b"operation not permitted",
    b"permission denied",
    b"read-only file system",
    b"seccomp",
    b"sandbox",
    b"landlock",
    b"failed to write file",
)
#: Exit codes that say "not a denial" unless the output says otherwise.
NOT_DENIED_EXIT_CODES = frozenset({2, 126, 127})
#: A shell's exit code for death by SIGSYS (seccomp's kill).
SIGSYS_EXIT_CODE = 128 + signal.SIGSYS


def looks_like_sandbox_denial(exit_code: int, output: Iterable[bytes]) -> bool:
    """0.171's guess for a *sandboxed* process; ``exit_code`` counts a death by
    signal N as 128 + N."""
    if exit_code == 0:
        return False
    text = b"".join(output).lower()
    if any(marker in text for marker in DENIAL_MARKERS):
        return True
    if exit_code in NOT_DENIED_EXIT_CODES:
        return False
    return exit_code == SIGSYS_EXIT_CODE
