"""``python -m exec_server`` runs the CLI."""

from .cli.main import main

main()
