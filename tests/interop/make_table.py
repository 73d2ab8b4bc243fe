"""Render recorded Codex transcripts as the "request -> 0.133 response" Markdown table.

    INTEROP_MODE=codex INTEROP_RECORD_DIR=/tmp/rec python -m pytest tests/interop -m interop
    python tests/interop/make_table.py [--compact] /tmp/rec > /tmp/table.md

``--compact`` drops rows every script repeats (successful initialize, process/start,
mutating fs calls answering ``{}``, ``initialized``).

Rows are deduplicated (the same request/response pair recorded by several scripts
appears once, under the first script that produced it). Values are normalized:
``<uuidN>``, ``<tmp>``, ``<ms>``, ``<peer>``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

#: Cell text longer than this is truncated (the full transcript stays in the JSON files).
MAX_CELL_CHARS = 400


def _compact(value: Any) -> str:
    if isinstance(value, str):
        text = value
    else:
        text = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    if len(text) > MAX_CELL_CHARS:
        text = text[: MAX_CELL_CHARS - 3] + "..."
    return text.replace("|", "\\|").replace("\n", "\\n")


def _request_text(sent: Any) -> str:
    if isinstance(sent, dict) and "<raw frame>" in sent:
        return "raw frame " + json.dumps(sent["<raw frame>"], ensure_ascii=False)
    return _compact(sent)


def _boring(entry: dict[str, Any]) -> bool:
    """Rows --compact drops: plumbing that every script repeats."""
    if "note" in entry:
        return entry["note"].endswith("closed notification arrived") and entry["value"] is True
    sent, recv = entry["send"], entry["recv"]
    method = sent.get("method") if isinstance(sent, dict) else None
    if method == "initialized":
        return True
    result = recv.get("result") if isinstance(recv, dict) else None
    if method == "process/start" and isinstance(result, dict) and "processId" in result:
        return True
    if method == "initialize" and isinstance(result, dict):
        return True
    return method in ("fs/writeFile", "fs/createDirectory", "fs/remove", "fs/copy") and (
        result == {}
    )


def render(record_dir: Path, *, compact: bool = False) -> str:
    rows: list[str] = []
    seen: set[tuple[str, str, str]] = set()
    for path in sorted(record_dir.glob("*.codex.json")):
        test = path.name.removesuffix(".codex.json")
        for entry in json.loads(path.read_text()):
            if compact and _boring(entry):
                continue
            if "note" in entry:
                request = f"*{entry['note']}*"
                response = _compact(entry["value"])
            else:
                request = _request_text(entry["send"])
                response = _compact(entry["recv"])
            # Notes only make sense next to their script; requests are deduplicated
            # across scripts.
            key = (test if "note" in entry else "", request, response)
            if key in seen:
                continue
            seen.add(key)
            rows.append(f"| {test} | `{request}` | `{response}` |")
    header = "| script | request | 0.133 response |\n|---|---|---|"
    return header + "\n" + "\n".join(rows) + "\n"


def main(argv: list[str]) -> int:
    args = [a for a in argv[1:] if a != "--compact"]
    if len(args) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    sys.stdout.write(render(Path(args[0]), compact="--compact" in argv))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
