"""``python -m engramctl`` runs the CLI."""

from engramctl.cli import main

main()
