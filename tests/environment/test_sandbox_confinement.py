"""Kernel confinement of sandboxed processes (environment/sandbox/confinement.py).

Real children run under Codex 0.171's portable policies; what they may and may not
do is checked from inside them (exit codes and the kernel's own error texts) and
from outside (what is left on disk). The expected behaviour is the real 0.171
executor's, probed with the same commands: writes outside the writable roots fail,
reads outside work where the policy reads, ``.git`` / ``.agents`` / ``.codex`` /
``.aws`` under a writable root are read-only (missing ones cannot be created),
``none`` entries are inaccessible, sockets other than AF_UNIX cannot be made, and
children of the sandboxed process stay confined. Where our errno differs (Landlock
answers EACCES where 0.171's read-only bind mounts answer EROFS) only "denied" is
asserted.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pytest
from msgspec import UNSET

from exec_server.environment.process_manager import ProcessManager
from exec_server.environment.sandbox import (
    parse_sandbox,
    resolve_policy,
)
from exec_server.environment.sandbox.confinement import SandboxEnforcer
from exec_server.environment.sandbox.denial import looks_like_sandbox_denial
from exec_server.environment.sandbox.kernel import KernelSupport, probe_kernel_support
from exec_server.environment.sandbox.placeholders import PLACEHOLDERS
from exec_server.environment.sandbox.plan import plan_confinement
from exec_server.environment.server import ExecServer, ServerConfig
from exec_server.protocol.errors import InternalError, InvalidParams
from exec_server.protocol.messages import (
    Message,
    ProcessClosedNotification,
    ProcessExitedNotification,
    ProcessOutputNotification,
    ProcessReadParams,
    ProcessStartParams,
)

pytestmark = pytest.mark.timeout(60)


class Recorder:
    """A NotificationSink that records everything and lets tests wait on it."""

    def __init__(self) -> None:
        self.events: list[tuple[str, Message]] = []
        self._changed = asyncio.Condition()

    async def __call__(self, method: str, message: Message) -> None:
        self.events.append((method, message))
        async with self._changed:
            self._changed.notify_all()

    def of(self, process_id: str) -> list[tuple[str, Message]]:
        return [(m, e) for m, e in self.events if getattr(e, "process_id", None) == process_id]

    def output(self, process_id: str) -> bytes:
        return b"".join(
            e.chunk for _, e in self.of(process_id) if isinstance(e, ProcessOutputNotification)
        )

    async def wait_closed(self, process_id: str) -> list[tuple[str, Message]]:
        def closed() -> bool:
            return any(isinstance(e, ProcessClosedNotification) for _, e in self.of(process_id))

        async with self._changed:
            await self._changed.wait_for(closed)
        return self.of(process_id)


_SUPPORT = probe_kernel_support()
_PROBLEMS = [
    problem
    for problem in (
        _SUPPORT.landlock_problem,
        _SUPPORT.seccomp_problem,
        _SUPPORT.mount_namespace_problem,
    )
    if problem is not None
]
needs_kernel_sandbox = pytest.mark.skipif(
    bool(_PROBLEMS),
    reason=f"this machine cannot confine processes ({'; '.join(_PROBLEMS)}); "
    "the fail-closed tests below cover what happens then",
)

ENV = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
PYTHON = sys.executable


def special(kind: str, access: str, **value: Any) -> dict[str, Any]:
    return {"path": {"type": "special", "value": {"kind": kind, **value}}, "access": access}


def at(path: Path | str, access: str, **extra: Any) -> dict[str, Any]:
    uri = Path(path).as_uri()
    return {"path": {"type": "path", "path": uri}, "access": access, **extra}


def context(work: Path, *entries: dict[str, Any], network: str = "restricted") -> dict[str, Any]:
    """A process/start ``sandbox`` as the 0.171 harness sends it."""
    return {
        "permissions": {
            "type": "managed",
            "file_system": {"type": "restricted", "entries": list(entries)},
            "network": network,
        },
        "cwd": work.as_uri(),
        "workspaceRoots": [work.as_uri()],
        "windowsSandboxLevel": "disabled",
        "windowsSandboxProxySettingsMode": "reconcile",
        "useLegacyLandlock": False,
    }


def workspace_write(work: Path) -> dict[str, Any]:
    """The exact workspace-write policy of the 0.171 harness (trace harness171_ww)."""
    protected = [
        special("project_roots", "read", subpath=name) | {"missing_path_behavior": "skip"}
        for name in (".git", ".agents", ".codex")
    ]
    return context(
        work,
        special("root", "read"),
        special("project_roots", "write"),
        special("slash_tmp", "write"),
        special("tmpdir", "write"),
        *protected,
    )


@pytest.fixture
def tree(tmp_path: Path) -> Iterator[dict[str, Path]]:
    """A workspace and, outside every writable root of ``workspace_write`` (so not
    under /tmp, which it makes writable), a directory with a file in it."""
    work = tmp_path / "work"
    work.mkdir()
    outside = Path(tempfile.mkdtemp(prefix="exec-server-test-", dir=_outside_parent()))
    (outside / "secret.txt").write_text("secret\n")
    try:
        yield {"work": work, "outside": outside}
    finally:
        shutil.rmtree(outside, ignore_errors=True)


def _outside_parent() -> str:
    for candidate in ("/var/tmp", str(Path.home())):
        policy = resolve_policy(parse_sandbox(workspace_write(Path("/nonexistent-work"))))
        assert policy.files is not None
        if os.path.isdir(candidate) and not policy.files.can_write(candidate + "/x"):
            return candidate
    raise AssertionError("no directory outside the workspace-write roots to test with")


@pytest.fixture
def sink() -> Recorder:
    return Recorder()


@pytest.fixture
async def pm(sink: Recorder) -> AsyncIterator[ProcessManager]:
    manager = ProcessManager(sink)
    yield manager
    await manager.close()


async def run(
    pm: ProcessManager,
    sink: Recorder,
    process_id: str,
    script: str,
    work: Path,
    sandbox: dict[str, Any] | None,
    *,
    tty: bool = False,
) -> tuple[str, ProcessExitedNotification]:
    """Run ``sh -c script`` in ``work`` as a 0.171 client would; its output and exit."""
    result = await pm.start(
        ProcessStartParams(
            process_id=process_id,
            argv=["/bin/sh", "-c", script],
            cwd=work.as_uri(),
            env=dict(ENV),
            tty=tty,
            sandbox=sandbox,
        )
    )
    assert result.sandbox_type == ("none" if sandbox is None else "linuxSeccomp")
    events = await asyncio.wait_for(sink.wait_closed(process_id), 30)
    exited = [e for _, e in events if isinstance(e, ProcessExitedNotification)]
    assert len(exited) == 1
    return sink.output(process_id).decode(errors="replace").replace("\r\n", "\n"), exited[0]


async def placeholders_removed(root: Path) -> None:
    """Wait until the process manager removed the placeholders it made under root."""
    async with asyncio.timeout(20):
        # The removal is a timer in the process manager; nothing to await on here.
        while PLACEHOLDERS.held_under(str(root)):  # noqa: ASYNC110
            await asyncio.sleep(0.05)


def lines(output: str) -> set[str]:
    return {line.strip() for line in output.splitlines()}


# --- files -----------------------------------------------------------------------------


@needs_kernel_sandbox
@pytest.mark.parametrize("tty", [False, True], ids=["pipes", "pty"])
async def test_workspace_write_confines_writes_and_keeps_reads(
    pm: ProcessManager, sink: Recorder, tree: dict[str, Path], tty: bool
) -> None:
    work, outside = tree["work"], tree["outside"]
    script = f"""
        echo in > inside.txt && echo inside=ok
        mkdir -p sub/deep && echo x > sub/deep/f && echo nested=ok
        echo x > {outside}/new.txt 2>/dev/null || echo outside-create=denied
        echo x >> {outside}/secret.txt 2>/dev/null || echo outside-append=denied
        rm -f {outside}/secret.txt 2>/dev/null; test -e {outside}/secret.txt && echo rm=denied
        cat {outside}/secret.txt
        scratch=/tmp/exec-server-sandbox-test-$$
        echo x > $scratch && rm $scratch && echo slash-tmp=ok
        echo > /dev/null && echo devnull=ok
    """
    output, exited = await run(pm, sink, f"ww-{tty}", script, work, workspace_write(work), tty=tty)
    assert {
        "inside=ok",
        "nested=ok",
        "outside-create=denied",
        "outside-append=denied",
        "rm=denied",
        "secret",
        "slash-tmp=ok",
        "devnull=ok",
    } <= lines(output), output
    assert exited.exit_code == 0 and exited.sandbox_denied is False
    assert (work / "inside.txt").read_text() == "in\n"
    assert (work / "sub/deep/f").exists()
    assert sorted(p.name for p in outside.iterdir()) == ["secret.txt"]
    assert (outside / "secret.txt").read_text() == "secret\n"


@needs_kernel_sandbox
async def test_protected_names_are_read_only_even_when_missing(
    pm: ProcessManager, sink: Recorder, tree: dict[str, Path]
) -> None:
    work = tree["work"]
    (work / ".git").mkdir()
    (work / ".git" / "config").write_text("[core]\n")
    script = """
        echo x >> .git/config 2>/dev/null || echo git-config=denied
        mkdir .git/hooks 2>/dev/null || echo git-hooks=denied
        mv .git moved 2>/dev/null || echo git-mv=denied
        for name in .agents .codex .aws; do
            mkdir $name 2>/dev/null; echo x > $name/f 2>/dev/null || echo $name=denied
        done
        mkdir sub && mkdir sub/.git && echo nested-git=ok
        echo ok > .gitignore && echo dotfile=ok
    """
    output, exited = await run(pm, sink, "protected", script, work, workspace_write(work))
    expected = {
        "git-config=denied",
        "git-hooks=denied",
        "git-mv=denied",
        ".agents=denied",
        ".codex=denied",
        ".aws=denied",
        "nested-git=ok",
        "dotfile=ok",
    }
    assert expected <= lines(output), output
    assert exited.exit_code == 0
    assert (work / ".git" / "config").read_text() == "[core]\n"
    assert not (work / ".git" / "hooks").exists()
    # The placeholders that stood in for the missing names go away soon after.
    await placeholders_removed(work)
    assert sorted(p.name for p in work.iterdir()) == [".git", ".gitignore", "sub"]


@needs_kernel_sandbox
async def test_none_entries_and_missing_path_behaviour(
    pm: ProcessManager, sink: Recorder, tree: dict[str, Path]
) -> None:
    work, outside = tree["work"], tree["outside"]
    (work / "hidden").mkdir()
    (work / "hidden" / "data").write_text("private\n")
    (work / "token").write_text("t0ken\n")
    sandbox = context(
        work,
        special("root", "read"),
        special("project_roots", "write"),
        at(outside, "none"),
        at(work / "hidden", "none"),
        at(work / "token", "none"),
        # Missing: protected while the command runs unless the entry says skip.
        at(work / "not-yet", "read"),
        at(work / "optional", "read", missing_path_behavior="skip"),
    )
    script = f"""
        cat {outside}/secret.txt 2>/dev/null || echo outside=denied
        ls {outside} >/dev/null 2>&1 || echo outside-list=denied
        cat hidden/data 2>/dev/null || echo hidden=denied
        echo x > hidden/new 2>/dev/null || echo hidden-write=denied
        cat token 2>/dev/null || echo token=denied
        mkdir not-yet/x 2>/dev/null || echo not-yet=denied
        mkdir optional && echo optional=created
        cat /etc/hostname >/dev/null && echo root-read=ok
    """
    output, _ = await run(pm, sink, "none", script, work, sandbox)
    assert {
        "outside=denied",
        "outside-list=denied",
        "hidden=denied",
        "hidden-write=denied",
        "token=denied",
        "not-yet=denied",
        "optional=created",
        "root-read=ok",
    } <= lines(output), output
    assert "private" not in output and "t0ken" not in output and "secret" not in output
    assert (work / "hidden" / "data").read_text() == "private\n"
    await placeholders_removed(work)
    assert not (work / "not-yet").exists()


@needs_kernel_sandbox
async def test_reads_outside_every_root_are_denied(
    pm: ProcessManager, sink: Recorder, tree: dict[str, Path]
) -> None:
    work, outside = tree["work"], tree["outside"]
    sandbox = context(work, special("minimal", "read"), special("project_roots", "write"))
    script = f"cat {outside}/secret.txt 2>/dev/null || echo outside=denied; echo ok > f && cat f"
    output, _ = await run(pm, sink, "minimal", script, work, sandbox)
    assert {"outside=denied", "ok"} <= lines(output), output


@needs_kernel_sandbox
async def test_symlinks_and_hard_links_do_not_escape(
    pm: ProcessManager, sink: Recorder, tree: dict[str, Path]
) -> None:
    work, outside = tree["work"], tree["outside"]
    (work / "link").symlink_to(outside)
    (work / "file-link").symlink_to(outside / "secret.txt")
    script = f"""
        echo x > link/new 2>/dev/null || echo dir-link=denied
        echo x >> file-link 2>/dev/null || echo file-link=denied
        ln {outside}/secret.txt hard 2>/dev/null || echo hard-link=denied
        ln -s {outside}/secret.txt made && (echo x >> made 2>/dev/null || echo made-link=denied)
        mv {outside}/secret.txt stolen 2>/dev/null || echo rename-in=denied
        cat link/secret.txt
    """
    output, _ = await run(pm, sink, "links", script, work, workspace_write(work))
    assert {
        "dir-link=denied",
        "file-link=denied",
        "hard-link=denied",
        "made-link=denied",
        "rename-in=denied",
        "secret",
    } <= lines(output), output
    assert sorted(p.name for p in outside.iterdir()) == ["secret.txt"]
    assert (outside / "secret.txt").read_text() == "secret\n"


@needs_kernel_sandbox
async def test_children_and_daemons_stay_confined(
    pm: ProcessManager, sink: Recorder, tree: dict[str, Path]
) -> None:
    work, outside = tree["work"], tree["outside"]
    target = outside / "from-child"
    script = f"""
        sh -c 'echo x > {target}' 2>/dev/null || echo child=denied
        setsid sh -c 'echo x > {target} 2>/dev/null || echo daemon=denied > {work}/daemon' &
        wait
        {PYTHON} -c 'import os; os.execv("/bin/sh", ["sh", "-c", "echo x > {target}"])' \
            2>/dev/null || echo exec=denied
        sleep 0.2
        cat daemon
    """
    output, _ = await run(pm, sink, "children", script, work, workspace_write(work))
    assert {"child=denied", "exec=denied", "daemon=denied"} <= lines(output), output
    assert not target.exists()


@needs_kernel_sandbox
async def test_no_privileges_no_ptrace_no_signals_outside(
    pm: ProcessManager, sink: Recorder, tree: dict[str, Path]
) -> None:
    work = tree["work"]
    script = f"""
        grep -E '^(CapEff|CapPrm|NoNewPrivs|Seccomp):' /proc/self/status
        kill -0 {os.getpid()} 2>/dev/null || echo signal-server=denied
        ls /proc/{os.getpid()}/root/ >/dev/null 2>&1 || echo server-root=denied
    """
    output, _ = await run(pm, sink, "privs", script, work, workspace_write(work))
    found = {line.split(":")[0]: line.split()[-1] for line in output.splitlines() if ":" in line}
    assert found["NoNewPrivs"] == "1" and found["Seccomp"] == "2", output
    if os.geteuid() == 0:
        assert int(found["CapEff"], 16) == 0 and int(found["CapPrm"], 16) == 0, output
    assert "server-root=denied" in lines(output), output
    if _SUPPORT.landlock_abi >= 6:
        assert "signal-server=denied" in lines(output), output


# --- network ---------------------------------------------------------------------------


NETWORK_PROBE = """
import socket, sys
host, port = sys.argv[1], int(sys.argv[2])
def attempt(label, fn):
    try:
        fn()
        print(label + "=ok")
    except OSError as exc:
        print(label + "=" + str(exc.errno))
def tcp():
    socket.create_connection((host, port), timeout=5).close()
def udp():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.sendto(b"x", (host, port))
def tcp6():
    socket.socket(socket.AF_INET6, socket.SOCK_STREAM).connect(("::1", port))
def netlink():
    socket.socket(socket.AF_NETLINK, socket.SOCK_RAW)
def unix():
    socket.socket(socket.AF_UNIX, socket.SOCK_STREAM).close()
for label, fn in [("tcp", tcp), ("udp", udp), ("tcp6", tcp6), ("netlink", netlink), ("unix", unix)]:
    attempt(label, fn)
"""


@needs_kernel_sandbox
async def test_restricted_network_blocks_tcp_udp_ipv6(
    pm: ProcessManager, sink: Recorder, tree: dict[str, Path]
) -> None:
    work = tree["work"]
    (work / "probe.py").write_text(NETWORK_PROBE)
    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        command = f"{PYTHON} probe.py 127.0.0.1 {port}"
        confined, _ = await run(pm, sink, "net", command, work, workspace_write(work))
        eperm = str(1)
        expected = {f"{label}={eperm}" for label in ("tcp", "udp", "tcp6", "netlink")}
        assert expected | {"unix=ok"} <= lines(confined), confined
        # The same probe unconfined reaches the listener: the test can fail.
        free, _ = await run(pm, sink, "net-free", command, work, None)
        assert {"tcp=ok", "udp=ok", "unix=ok"} <= lines(free), free
        # `network: enabled` keeps files confined but the network open.
        enabled = context(work, special("root", "read"), special("project_roots", "write"))
        enabled["permissions"]["network"] = "enabled"
        opened, _ = await run(pm, sink, "net-enabled", command, work, enabled)
        assert "tcp=ok" in lines(opened), opened
    finally:
        server.close()
        await server.wait_closed()


# --- sandboxType, sandboxDenied, eras ---------------------------------------------------


@needs_kernel_sandbox
async def test_sandbox_denied_is_reported_for_denials(
    pm: ProcessManager, sink: Recorder, tree: dict[str, Path]
) -> None:
    work, outside = tree["work"], tree["outside"]
    sandbox = workspace_write(work)
    _, denied = await run(pm, sink, "d1", f"echo x > {outside}/x", work, sandbox)
    assert denied.exit_code != 0 and denied.sandbox_denied is True
    read = await pm.read(ProcessReadParams(process_id="d1"))
    assert read.sandbox_denied is True
    _, plain_failure = await run(pm, sink, "d2", "exit 3", work, sandbox)
    assert plain_failure.sandbox_denied is False
    # Without a sandbox the same words are just output.
    _, unsandboxed = await run(pm, sink, "d3", "echo Permission denied; exit 1", work, None)
    assert unsandboxed.sandbox_denied is False


async def test_0133_requests_get_neither_field(pm: ProcessManager, sink: Recorder) -> None:
    result = await pm.start(
        ProcessStartParams(process_id="old", argv=["true"], cwd="/tmp", env=dict(ENV), tty=False)
    )
    assert result.sandbox_type is UNSET
    events = await sink.wait_closed("old")
    exited = [e for _, e in events if isinstance(e, ProcessExitedNotification)]
    assert exited[0].sandbox_denied is UNSET
    assert (await pm.read(ProcessReadParams(process_id="old"))).sandbox_denied is UNSET


@pytest.mark.parametrize(
    ("exit_code", "output", "expected"),
    [
        # Probed on the 0.171 executor under workspace-write.
        (1, b"", False),
        (1, b"Permission denied\n", True),
        (0, b"Operation not permitted\n", False),
        (2, b"sandbox\n", True),
        (3, b"SECCOMP here\n", True),
        (159, b"", True),
        (126, b"", False),
        (4, b"failed to write file\n", True),
        (5, b"landlock\n", True),
        (1, b"x: Read-only file system\n", True),
    ],
)
def test_denial_guess_matches_0171(exit_code: int, output: bytes, expected: bool) -> None:
    assert looks_like_sandbox_denial(exit_code, [output[:3], output[3:]]) is expected


# --- fail closed ---------------------------------------------------------------------------


SIMULATED = {
    "no landlock": KernelSupport(landlock_abi=0, landlock_problem="Landlock is not available"),
    "old landlock": KernelSupport(landlock_abi=2),
    "no seccomp": KernelSupport(landlock_abi=7, seccomp_problem="no libseccomp"),
    "no mount namespace": KernelSupport(
        landlock_abi=7, mount_namespace_problem="exec-server lacks CAP_SYS_ADMIN"
    ),
}


@pytest.mark.parametrize("case", list(SIMULATED))
async def test_fail_closed_when_the_kernel_cannot_confine(
    case: str, sink: Recorder, tmp_path: Path
) -> None:
    pm = ProcessManager(sink, enforcer=SandboxEnforcer(SIMULATED[case]))
    marker = tmp_path / "ran"
    try:
        with pytest.raises(InternalError) as info:
            await run(pm, sink, "refused", f"touch {marker}", tmp_path, workspace_write(tmp_path))
        message = info.value.message
        assert message.startswith("sandbox cannot be enforced here: "), message
        assert message.endswith("refusing to run the command unconfined"), message
        assert len(pm) == 0
        # `sandbox: null` still runs as before on such a machine.
        output, exited = await run(pm, sink, "free", "echo ok", tmp_path, None)
        assert output == "ok\n" and exited.exit_code == 0
    finally:
        await pm.close()
    await asyncio.sleep(0.2)
    assert not marker.exists()


def test_fail_closed_messages_name_the_reason(tmp_path: Path) -> None:
    policy = resolve_policy(parse_sandbox(workspace_write(tmp_path)))
    with pytest.raises(InternalError, match="Landlock is not available"):
        plan_confinement(policy, SIMULATED["no landlock"])
    with pytest.raises(InternalError, match=r"need >= 3|ABI"):
        plan_confinement(policy, SIMULATED["old landlock"])
    with pytest.raises(InternalError, match=r"carve-outs .* CAP_SYS_ADMIN"):
        plan_confinement(policy, SIMULATED["no mount namespace"])
    # A network-only policy needs seccomp, nothing else.
    network_only = resolve_policy(
        parse_sandbox({"permissions": {"type": "external", "network": "restricted"}})
    )
    confinement = plan_confinement(network_only, SIMULATED["no landlock"])
    assert confinement is not None and not confinement.restricts_files
    with pytest.raises(InternalError, match="no libseccomp"):
        plan_confinement(network_only, SIMULATED["no seccomp"])


def test_policies_we_cannot_express_are_refused(tmp_path: Path) -> None:
    (tmp_path / "ro").mkdir()
    inside_carve_out = context(
        tmp_path,
        special("root", "read"),
        special("project_roots", "write"),
        at(tmp_path / "ro", "read"),
        at(tmp_path / "ro" / "rw", "write"),
    )
    policy = resolve_policy(parse_sandbox(inside_carve_out))
    with pytest.raises(InternalError, match="inside the carve-out"):
        plan_confinement(policy, KernelSupport(landlock_abi=7))
    globbed = context(
        tmp_path,
        special("root", "read"),
        {"path": {"type": "glob_pattern", "pattern": f"{tmp_path}/**/*.env"}, "access": "none"},
    )
    with pytest.raises(InternalError, match="glob_pattern"):
        resolve_policy(parse_sandbox(globbed))
    bad = context(tmp_path, special("root", "read", missing_path_behavior="bogus"))
    bad["permissions"]["file_system"]["entries"][0]["missing_path_behavior"] = "bogus"
    with pytest.raises(InvalidParams, match="unknown variant `bogus`, expected `skip`"):
        parse_sandbox(bad)


def test_sandbox_null_and_disabled_confine_nothing() -> None:
    assert plan_confinement(resolve_policy(None), SIMULATED["no landlock"]) is None
    disabled = parse_sandbox({"permissions": {"type": "disabled"}})
    assert plan_confinement(resolve_policy(disabled), SIMULATED["no landlock"]) is None


# --- end to end over a websocket -------------------------------------------------------------


@needs_kernel_sandbox
async def test_workspace_write_end_to_end_over_websocket(tree: dict[str, Path]) -> None:
    """The 0.171 wire shape through the real server: start, notifications, fs calls."""
    work, outside = tree["work"], tree["outside"]
    server = ExecServer(ServerConfig())
    url = await server.start_websocket("127.0.0.1", 0)
    try:
        async with aiohttp.ClientSession() as http, http.ws_connect(url) as ws:
            calls = iter(range(1, 100))

            async def call(method: str, params: Any) -> dict[str, Any]:
                rid = next(calls)
                await ws.send_str(
                    msgspec.json.encode({"id": rid, "method": method, "params": params}).decode()
                )
                while True:
                    message = msgspec.json.decode((await ws.receive(timeout=30)).data)
                    if message.get("id") == rid:
                        return message  # type: ignore[no-any-return]
                    notes.append(message)

            notes: list[dict[str, Any]] = []
            await call("initialize", {"clientName": "codex-environment", "resumeSessionId": None})
            await ws.send_str('{"method":"initialized","params":{}}')
            sandbox = workspace_write(work)
            script = f"echo in > inside.txt; echo x > {outside}/out.txt"
            start = await call(
                "process/start",
                {
                    "processId": "1-e2e",
                    "metadata": {
                        "threadId": "01a24d57-e84e-70b3-bd0c-40a82252592e",
                        "toolCallId": "call_1",
                    },
                    "argv": ["/bin/bash", "-c", script],
                    "cwd": work.as_uri(),
                    "envPolicy": None,
                    "env": dict(ENV),
                    "tty": False,
                    "pipeStdin": False,
                    "arg0": None,
                    "sandbox": sandbox,
                    "enforceManagedNetwork": False,
                    "managedNetwork": None,
                },
            )
            assert start == {
                "id": start["id"],
                "result": {"processId": "1-e2e", "sandboxType": "linuxSeccomp"},
            }
            while not any(n.get("method") == "process/closed" for n in notes):
                notes.append(msgspec.json.decode((await ws.receive(timeout=30)).data))
            exited = next(n for n in notes if n.get("method") == "process/exited")
            assert exited["params"]["exitCode"] == 1
            assert exited["params"]["sandboxDenied"] is True
            fs_sandbox = {
                "permissions": sandbox["permissions"],
                "cwd": work.as_uri(),
                "policyContext": {"cwd": work.as_uri(), "workspaceRoots": [work.as_uri()]},
                "workspaceRoots": [work.as_uri()],
                "userHomeDir": Path.home().as_uri(),
                "windowsSandboxLevel": "disabled",
                "useLegacyLandlock": False,
            }
            data = "aGk="
            denied = await call(
                "fs/writeFile",
                {"path": (outside / "fs.txt").as_uri(), "dataBase64": data, "sandbox": fs_sandbox},
            )
            assert denied["error"] == {
                "code": -32603,
                "message": "Read-only file system (os error 30)",
            }
            allowed = await call(
                "fs/writeFile",
                {"path": (work / "fs.txt").as_uri(), "dataBase64": data, "sandbox": fs_sandbox},
            )
            assert allowed["result"] == {}
            git = await call(
                "fs/writeFile",
                {"path": (work / ".aws" / "x").as_uri(), "dataBase64": data, "sandbox": fs_sandbox},
            )
            assert git["error"]["code"] == -32603
        assert (work / "inside.txt").read_text() == "in\n"
        assert (work / "fs.txt").read_bytes() == b"hi"
        assert sorted(p.name for p in outside.iterdir()) == ["secret.txt"]
    finally:
        await server.close()
