"""Kernel confinement of a child process: the :class:`SandboxEnforcer`.

Codex 0.171 runs a ``workspace-write`` command in a bubblewrap namespace plus a
seccomp filter and answers ``sandboxType: "linuxSeccomp"`` (probed). We get the same
confinement from the kernel directly: Landlock, a private mount namespace for the
carve-outs, seccomp and no privileges. Who does what:

* :mod:`.kernel` probes what this machine can do (once);
* :mod:`.plan` decides what a policy needs (:func:`~.plan.plan_confinement`), in
  the server, and refuses what cannot be enforced;
* :mod:`.confine` applies it: in a throwaway thread that then spawns the child
  (a root server), or in the forked child inside a new user namespace (a server
  without ``CAP_SYS_ADMIN`` whose kernel allows unprivileged user namespaces);
* :mod:`.placeholders` owns what the sandbox creates on disk.

The enforcer ties them together and keeps plans: parsing a ``sandbox`` and planning
its confinement is most of a sandboxed spawn's Python cost, so the last plans are
reused while the disk they were made from is unchanged (:mod:`.disk_view`), with
their Landlock rulesets built ahead of time.

**Fail closed.** :meth:`SandboxEnforcer.prepare` refuses (raising
:class:`UnsupportedPolicy`, -32603, with the reason) when the policy asks for
something this machine cannot enforce. Any failure while confining happens before
the child execs and refuses the same way: a command never runs with less
confinement than asked.
"""

from __future__ import annotations

import _thread
import contextlib
import os
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any, TypeVar

import msgspec

from . import landlock
from .confine import confine_child, confine_thread
from .disk_view import DiskView
from .kernel import KernelSupport, probe_kernel_support
from .placeholders import PLACEHOLDERS, ConfinementLease
from .plan import Confinement, PreparedRuleset, plan_confinement, refuse
from .policy import SandboxPolicy, resolve_policy
from .spec import SandboxSpec, UnsupportedPolicy, parse_sandbox

T = TypeVar("T")

#: Plans (and parsed sandboxes) kept per enforcer for reuse.
MAX_CACHED_PLANS = 64

#: Code a spawn runs in the forked child before exec (``subprocess``'s ``preexec_fn``).
PreexecFn = Callable[[], None]
#: Spawns the child, given what to run in it before exec (``None``: nothing, so
#: ``subprocess`` may vfork).
Launch = Callable[[PreexecFn | None], T]

#: A sandbox and the ``TMPDIR`` its ``tmpdir`` entries name.
_PlanKey = tuple[SandboxSpec, str | None]


class SandboxEnforcer:
    """Prepares and applies confinement; one per server (injectable for tests).

    ``support`` overrides the probe of this machine, e.g. to simulate a kernel
    without Landlock.
    """

    def __init__(self, support: KernelSupport | None = None) -> None:
        self._support = support
        self._plans: dict[_PlanKey, tuple[Confinement | None, DiskView]] = {}
        self._specs: dict[bytes, SandboxSpec | None] = {}

    @property
    def support(self) -> KernelSupport:
        return self._support if self._support is not None else probe_kernel_support()

    def parse(self, raw: Mapping[str, Any]) -> SandboxSpec | None:
        """:func:`~.policy.parse_sandbox`, remembered per distinct ``raw`` (parsing
        reads no disk: the same JSON always parses the same)."""
        key = msgspec.json.encode(raw)
        if key in self._specs:
            spec = self._specs.pop(key)
        else:
            spec = parse_sandbox(raw)
            if len(self._specs) >= MAX_CACHED_PLANS:
                del self._specs[next(iter(self._specs))]
        self._specs[key] = spec
        return spec

    def prepare(self, policy: SandboxPolicy, view: DiskView | None = None) -> Confinement | None:
        """The confinement for ``policy`` (``None``: none needed); fails closed.

        ``view`` is the disk the policy was resolved through (a fresh one if not given).
        """
        if view is None:
            view = DiskView(hidden=PLACEHOLDERS.owns)
        return plan_confinement(policy, self.support, view)

    def plan(
        self, spec: SandboxSpec | None, environ: Mapping[str, str] | None = None
    ) -> Confinement | None:
        """:meth:`prepare` for a parsed ``sandbox``, reusing an earlier plan for the
        same ``spec`` while the disk it was made from is unchanged (see
        :class:`~.disk_view.DiskView`); fails closed like :meth:`prepare`.

        ``environ`` supplies ``TMPDIR`` (default: this process's environment).
        """
        if spec is None:
            return None
        env = os.environ if environ is None else environ
        key = (spec, env.get("TMPDIR"))
        cached = self._plans.pop(key, None)
        if cached is not None:
            confinement, view = cached
            if view.still_holds():
                self._plans[key] = cached  # now the most recently used
                return confinement
        view = DiskView(hidden=PLACEHOLDERS.owns)
        confinement = self.prepare(resolve_policy(spec, environ=env, view=view), view)
        if confinement is not None and confinement.restricts_files:
            rules = list(confinement.landlock_rules)
            fd = landlock.build_ruleset(
                confinement.landlock_abi, rules, confinement.landlock_scopes
            )
            confinement = replace(confinement, ruleset=PreparedRuleset(fd))
        self._plans[key] = (confinement, view)
        if len(self._plans) > MAX_CACHED_PLANS:
            del self._plans[next(iter(self._plans))]  # the least recently used
        return confinement

    def spawn(self, confinement: Confinement, launch: Launch[T]) -> tuple[T, ConfinementLease]:
        """Spawn a child confined by ``confinement``; ``launch`` must only fork/exec.

        Raises :class:`UnsupportedPolicy` if the confinement cannot be applied; then
        nothing ran unconfined. The lease must be released when the child is gone.
        """
        held = PLACEHOLDERS.acquire(confinement.placeholders)
        lease = ConfinementLease(placeholders=held)
        try:
            if confinement.user_namespace:
                child = _spawn_in_user_namespace(confinement, launch, lease)
            else:
                child = _spawn_from_confined_thread(confinement, launch, lease)
        except BaseException:
            lease.release()
            raise
        return child, lease


def _spawn_from_confined_thread(
    confinement: Confinement, launch: Launch[T], lease: ConfinementLease
) -> T:
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            lease.mount_namespace = confine_thread(confinement)
        except BaseException as exc:
            outcome["confine_error"] = exc
            return
        try:
            outcome["result"] = launch(None)
        except BaseException as exc:
            outcome["spawn_error"] = exc

    # A bare thread (no threading.Thread bookkeeping: ~25 us less per spawn); the
    # lock is released as its last act, so the wait below is a join.
    done = _thread.allocate_lock()
    done.acquire()

    def confined() -> None:
        try:
            run()
        finally:
            done.release()

    _thread.start_new_thread(confined, ())
    done.acquire()
    if "result" in outcome:
        result: T = outcome["result"]
        return result
    if "spawn_error" in outcome:
        raise outcome["spawn_error"]
    error = outcome["confine_error"]
    if isinstance(error, UnsupportedPolicy):
        raise error
    raise refuse(f"applying it failed ({error})") from error


def _spawn_in_user_namespace(
    confinement: Confinement, launch: Launch[T], lease: ConfinementLease
) -> T:
    read_end, write_end = os.pipe()  # close-on-exec: the command never sees them
    failure: BaseException | None = None
    try:
        try:
            child = launch(lambda: confine_child(confinement, write_end))
        except BaseException as exc:
            failure = exc
        os.close(write_end)
        write_end = -1
        report = _read_all(read_end).decode(errors="replace")
    finally:
        os.close(read_end)
        if write_end >= 0:
            os.close(write_end)
    if report.startswith("error "):
        reason = report.removeprefix("error ")
        raise refuse(f"applying it in a user namespace failed ({reason})") from failure
    if failure is not None:
        raise failure  # confined, then the spawn itself failed (e.g. no such file)
    if report.startswith("ns "):
        lease.mount_namespace = int(report[3:])
    return child


def _read_all(fd: int) -> bytes:
    data = b""
    with contextlib.suppress(OSError):
        while chunk := os.read(fd, 4096):
            data += chunk
    return data


DEFAULT_ENFORCER = SandboxEnforcer()
