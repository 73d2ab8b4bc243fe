"""Spawn cost of a sandboxed process: workspace-write vs no sandbox, pipes and PTY.

Each row is ``process/start`` of ``/bin/true`` through our ``ProcessManager`` until
its ``process/closed`` notification (spawn-to-closed, in process: no websocket, so
the sandbox's share is not diluted), median of N samples taken round-robin over
all variants so drifts hit them alike. The sandbox is the 0.171 harness's
``workspace-write`` policy (root read, workspace + /tmp + TMPDIR write, .git &
co. read-only, network restricted) and is enforced for real: Landlock, the mount
namespace for the carve-outs (and placeholders for the missing ones), seccomp,
no capabilities.

Variants:

* ``none``: ``sandbox: null`` (vfork for pipes; fork + ``TIOCSCTTY`` for a PTY);
* ``thread`` (what the server does): confinement applied in a throwaway thread
  that then spawns, so pipes keep vfork;
* ``preexec``: the same confinement applied by ``preexec_fn`` in the forked child
  (the obvious alternative; forces fork() for pipes too);
* ``nomounts``: ``thread`` without the mount namespace (Landlock, seccomp and
  capabilities only). Not a valid sandbox for this policy (its .git would be
  writable): it shows what the carve-out namespace costs;
* ``userns``: what a server without ``CAP_SYS_ADMIN`` does: everything in the
  forked child, the mount namespace inside a new user namespace.

It also prints CPU seconds per spawn (this process, and the children) per variant.
``measure_sandbox_spawn()`` is the function another runner can call.

    python benchmarks/sandbox_bench.py [--samples 200] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from exec_server.environment.process_manager import ProcessManager
from exec_server.environment.sandbox import parse_sandbox, resolve_policy
from exec_server.environment.sandbox.confine import confine_thread
from exec_server.environment.sandbox.confinement import DEFAULT_ENFORCER, Launch, SandboxEnforcer
from exec_server.environment.sandbox.kernel import probe_kernel_support
from exec_server.environment.sandbox.placeholders import PLACEHOLDERS, ConfinementLease
from exec_server.environment.sandbox.plan import Confinement
from exec_server.protocol.messages import Message, ProcessClosedNotification, ProcessStartParams

ENV = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}


def workspace_write(work: Path) -> dict[str, Any]:
    def special(kind: str, access: str, **value: Any) -> dict[str, Any]:
        return {"path": {"type": "special", "value": {"kind": kind, **value}}, "access": access}

    protected = [
        special("project_roots", "read", subpath=name) | {"missing_path_behavior": "skip"}
        for name in (".git", ".agents", ".codex")
    ]
    entries = [
        special("root", "read"),
        special("project_roots", "write"),
        special("slash_tmp", "write"),
        special("tmpdir", "write"),
        *protected,
    ]
    return {
        "permissions": {
            "type": "managed",
            "file_system": {"type": "restricted", "entries": entries},
            "network": "restricted",
        },
        "cwd": work.as_uri(),
        "workspaceRoots": [work.as_uri()],
        "windowsSandboxLevel": "disabled",
    }


class PreexecEnforcer(SandboxEnforcer):
    """The alternative design: confine in ``preexec_fn`` (fork, Python in the child)."""

    def spawn(self, confinement: Confinement, launch: Launch[Any]) -> tuple[Any, ConfinementLease]:
        held = PLACEHOLDERS.acquire(confinement.placeholders)
        return launch(lambda: _ignore(confine_thread(confinement))), ConfinementLease(
            placeholders=held
        )


def _ignore(_value: object) -> None:
    return None


def user_namespace_enforcer() -> SandboxEnforcer:
    """What a server without CAP_SYS_ADMIN does: the mount namespace inside a user
    namespace, made in the forked child (so fork, not vfork, for pipes too)."""
    support = dataclasses.replace(probe_kernel_support(), mount_namespace_via="user_namespace")
    return SandboxEnforcer(support)


class NoMountsEnforcer(SandboxEnforcer):
    """Reference only: the thread design without the carve-out mount namespace."""

    def prepare(self, policy: Any, view: Any = None) -> Confinement | None:
        confinement = super().prepare(policy, view)
        if confinement is None:
            return None
        return dataclasses.replace(confinement, mounts=(), placeholders=())


class Sink:
    def __init__(self) -> None:
        self.closed: dict[str, asyncio.Event] = {}

    async def __call__(self, method: str, message: Message) -> None:
        if isinstance(message, ProcessClosedNotification):
            self.closed.setdefault(message.process_id, asyncio.Event()).set()


async def _one(
    pm: ProcessManager, sink: Sink, pid: str, work: Path, sandbox: Any, tty: bool
) -> float:
    params = ProcessStartParams(
        process_id=pid,
        argv=["/bin/true"],
        cwd=work.as_uri(),
        env=dict(ENV),
        tty=tty,
        sandbox=sandbox,
    )
    event = sink.closed.setdefault(pid, asyncio.Event())
    start = time.perf_counter()
    await pm.start(params)
    await asyncio.wait_for(event.wait(), 30)
    return time.perf_counter() - start


async def measure_sandbox_spawn(samples: int = 200, warmup: int = 20) -> dict[str, Any]:
    """Median spawn-to-closed (seconds) and CPU seconds per spawn for each variant."""
    with tempfile.TemporaryDirectory(prefix="sandbox-bench-", dir="/var/tmp") as tmp:
        work = Path(tmp)
        sandbox = workspace_write(work)
        # Planned once here only to fail early with the reason if it cannot be.
        DEFAULT_ENFORCER.prepare(resolve_policy(parse_sandbox(sandbox)))
        names = ("none", "thread", "nomounts", "preexec", "userns")
        sinks = {name: Sink() for name in names}
        managers = {
            "none": ProcessManager(sinks["none"]),
            "thread": ProcessManager(sinks["thread"]),
            "nomounts": ProcessManager(sinks["nomounts"], enforcer=NoMountsEnforcer()),
            "preexec": ProcessManager(sinks["preexec"], enforcer=PreexecEnforcer()),
            "userns": ProcessManager(sinks["userns"], enforcer=user_namespace_enforcer()),
        }
        variants = [
            (f"{name}/{'pty' if tty else 'pipes'}", name, tty)
            for tty in (False, True)
            for name in names
        ]
        times: dict[str, list[float]] = {label: [] for label, _, _ in variants}
        cpu: dict[str, list[float]] = {label: [] for label, _, _ in variants}
        try:
            for round_ in range(warmup + samples):
                order = variants if round_ % 2 == 0 else list(reversed(variants))
                for label, name, tty in order:
                    own0 = time.process_time()
                    kids0 = resource.getrusage(resource.RUSAGE_CHILDREN)
                    elapsed = await _one(
                        managers[name],
                        sinks[name],
                        f"{label}-{round_}",
                        work,
                        None if name == "none" else sandbox,
                        tty,
                    )
                    kids1 = resource.getrusage(resource.RUSAGE_CHILDREN)
                    if round_ >= warmup:
                        times[label].append(elapsed)
                        cpu[label].append(
                            time.process_time()
                            - own0
                            + (kids1.ru_utime - kids0.ru_utime)
                            + (kids1.ru_stime - kids0.ru_stime)
                        )
        finally:
            for manager in managers.values():
                await manager.close()
    return {
        label: {
            "p50_s": statistics.median(times[label]),
            "cpu_s_per_spawn": statistics.mean(cpu[label]),
            "samples": len(times[label]),
        }
        for label in times
    }


def render(results: dict[str, Any]) -> str:
    rows = ["| variant | spawn->closed p50 | vs none | CPU s / spawn |", "|---|---|---|---|"]
    for label, row in results.items():
        mode = label.split("/")[1]
        base = results[f"none/{mode}"]["p50_s"]
        rows.append(
            f"| {label} | {row['p50_s'] * 1e3:.3f} ms | {row['p50_s'] / base:.2f}x | "
            f"{row['cpu_s_per_spawn'] * 1e3:.3f} ms |"
        )
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--cpu", type=int, default=None, help="pin to this CPU (default: last)")
    args = parser.parse_args(argv)
    cpus = sorted(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {args.cpu if args.cpu is not None else cpus[-1]})
    results = asyncio.run(measure_sandbox_spawn(args.samples))
    print(json.dumps(results, indent=2) if args.json else render(results))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    sys.exit(main())
