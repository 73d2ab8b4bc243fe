"""Children start with default signal dispositions and an empty signal mask.

A server started under ``nohup``, or as a background job of a non-interactive
shell, inherits SIGHUP (or SIGINT and SIGQUIT) *ignored*, and ignored dispositions
survive ``exec``: every command it ran would shrug off Ctrl-C and hangups. Signals
blocked in the server's mask would be blocked in its children too.

``posix_spawn`` could reset both per child (``setsigdef``, ``setsigmask``), but
Python's ``os.posix_spawn`` cannot set a working directory, and ``preexec_fn`` would
cost the vfork fast path. So the server fixes its own state once instead, which is
safe because it changes nothing the server can observe:

* each of :data:`RESET_SIGNALS` that is ignored gets a handler that does nothing:
  for the server the signal is still ignored, but ``exec`` resets a caught signal to
  its default, so children start with the default disposition;
* the main thread's signal mask is emptied (the server blocks no signal on
  purpose; threads started later, such as the sandbox's spawning thread, inherit
  the empty mask).

Job-control signals (SIGTSTP, SIGTTIN, SIGTTOU) are left alone: catching them would
change what a background server's terminal writes do. SIGPIPE and SIGXFSZ are
restored in the child by ``subprocess`` itself.
"""

from __future__ import annotations

import logging
import signal
import threading

log = logging.getLogger(__name__)

RESET_SIGNALS = (
    signal.SIGHUP,
    signal.SIGINT,
    signal.SIGQUIT,
    signal.SIGTERM,
    signal.SIGUSR1,
    signal.SIGUSR2,
    signal.SIGALRM,
)

_prepared = False


def _ignore(signum: int, frame: object) -> None:
    """Stands in for SIG_IGN in the server (and is reset to SIG_DFL by exec)."""


def prepare_child_signals() -> bool:
    """Make children start with default dispositions and an empty mask (idempotent).

    Must run on the main thread (Python only sets handlers there); returns whether
    the state is prepared. Call it before the first spawn.
    """
    global _prepared
    if _prepared:
        return True
    if threading.current_thread() is not threading.main_thread():
        log.debug("child signal state not prepared: not on the main thread")
        return False
    for signum in RESET_SIGNALS:
        if signal.getsignal(signum) is signal.SIG_IGN:
            signal.signal(signum, _ignore)
    signal.pthread_sigmask(signal.SIG_SETMASK, set())
    _prepared = True
    return True
