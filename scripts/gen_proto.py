#!/usr/bin/env python3
"""Regenerate the checked-in Python bindings of the relay frame schema.

Usage::

    python scripts/gen_proto.py            # rewrite src/exec_server/relay/proto/relay_v1_pb2.py(i)
    python scripts/gen_proto.py --check    # exit 1 if the checked-in files are stale

The schema keeps Codex's file name, ``codex.exec_server.relay.v1.proto``. protoc's Python
generator turns the dots of that name into package directories
(``codex/exec_server/relay/v1_pb2.py``), so the schema is staged in a temporary tree as
``exec_server/relay/proto/relay_v1.proto`` and compiled from there: the bindings then import as
``exec_server.relay.proto.relay_v1_pb2`` and name that module in their descriptors. The wire
format depends only on the package, message and field definitions, never on file names.

It uses the protoc bundled with grpcio-tools (``python -m grpc_tools.protoc``), so it works
offline. The generated code pins the protobuf runtime it needs: runtime >= the
"Protobuf Python Version" printed in the generated header.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = REPO_ROOT / "src" / "exec_server" / "relay" / "proto"
SCHEMA = PROTO_DIR / "codex.exec_server.relay.v1.proto"
STAGED_PACKAGE = Path("exec_server") / "relay" / "proto"
STAGED_NAME = "relay_v1.proto"
OUTPUTS = ("relay_v1_pb2.py", "relay_v1_pb2.pyi")


def generate(out_dir: Path) -> list[Path]:
    """Compile the schema and write the bindings into ``out_dir``; return the files written.

    Raises ``RuntimeError`` with protoc's stderr if compilation fails.
    """
    with tempfile.TemporaryDirectory(prefix="relay-proto-") as tmp:
        stage = Path(tmp) / "in"
        gen = Path(tmp) / "out"
        (stage / STAGED_PACKAGE).mkdir(parents=True)
        gen.mkdir()
        shutil.copyfile(SCHEMA, stage / STAGED_PACKAGE / STAGED_NAME)
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "grpc_tools.protoc",
                f"--proto_path={stage}",
                f"--python_out={gen}",
                f"--pyi_out={gen}",
                str(STAGED_PACKAGE / STAGED_NAME),
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(f"protoc failed ({result.returncode}): {result.stderr.strip()}")
        out_dir.mkdir(parents=True, exist_ok=True)
        written = []
        for name in OUTPUTS:
            target = out_dir / name
            shutil.copyfile(gen / STAGED_PACKAGE / name, target)
            written.append(target)
        return written


def stale_files(out_dir: Path = PROTO_DIR) -> list[str]:
    """Names of checked-in outputs that differ from a fresh generation."""
    with tempfile.TemporaryDirectory(prefix="relay-proto-check-") as tmp:
        fresh_dir = Path(tmp)
        generate(fresh_dir)
        stale = []
        for name in OUTPUTS:
            current = out_dir / name
            if not current.exists() or current.read_bytes() != (fresh_dir / name).read_bytes():
                stale.append(name)
        return stale


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only verify, write nothing")
    args = parser.parse_args(argv)
    if args.check:
        stale = stale_files()
        if stale:
            print(f"stale generated files: {', '.join(stale)}; run scripts/gen_proto.py")
            return 1
        print("generated relay bindings are up to date")
        return 0
    for path in generate(PROTO_DIR):
        print(f"wrote {path.relative_to(REPO_ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
