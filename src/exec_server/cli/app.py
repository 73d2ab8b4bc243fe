"""The ``exec-server`` command: a click group whose subcommands load when used.

Only click and this module load at start; ``exec-server run`` then imports the
harness SDK and its websocket client, never the server, the rendezvous or the relay
(unless it dials one). That keeps a one-shot command close to the interpreter's own
start-up cost (``benchmarks/sdk_bench.py``).
"""

from __future__ import annotations

import importlib
import logging
import os
import sys

import click

from .. import __version__

#: name -> (module, attribute), in the order ``--help`` lists them.
COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("exec_server.cli.run_cmd", "run"),
    "shell": ("exec_server.cli.run_cmd", "shell"),
    "cp": ("exec_server.cli.cp_cmd", "cp"),
    "envs": ("exec_server.cli.envs_cmd", "envs"),
    "harness-url": ("exec_server.cli.envs_cmd", "harness_url"),
    "serve": ("exec_server.cli.main", "serve"),
    "up": ("exec_server.cli.up_cmd", "up"),
    "rendezvous": ("exec_server.cli.rendezvous_cmd", "rendezvous"),
}


class _LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = COMMANDS.get(cmd_name)
        if target is None:
            return None
        command = getattr(importlib.import_module(target[0]), target[1])
        assert isinstance(command, click.Command)
        return command


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(
    __version__, "-V", "--version", prog_name="exec-server", message="%(prog)s %(version)s"
)
@click.option(
    "--log-level",
    default=lambda: os.environ.get("EXEC_SERVER_LOG", "warning"),
    show_default="warning (env EXEC_SERVER_LOG)",
    help="stderr log level: debug, info, warning, error.",
)
def main(log_level: str) -> None:
    """Run commands and touch files on a machine a coding agent drives (Codex-compatible).

    Exit codes of `run`: the remote command's own; 127 command not found, 126 cannot
    execute, 124 timed out, 130 interrupted, 255 connection failed or lost (as ssh).
    """
    logging.basicConfig(
        stream=sys.stderr,
        level=getattr(logging, log_level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # Every subcommand streams large buffers (servers, run, cp); see the module.
    from ..malloc_tuning import tune_malloc

    tune_malloc()


if __name__ == "__main__":  # pragma: no cover
    main()
