"""``python -m engramctl`` runs the CLI."""

from engramctl._entry import main

main()
