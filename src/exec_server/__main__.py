"""``python -m exec_server`` runs the CLI."""

from .cli.app import main

main()
