"""The ``engramctl`` console script: Ctrl-C at any moment is one line, even during start-up.

The CLI's own handler (``cli.app.command``) only exists once typer, rich and the command modules
are imported, which takes a noticeable fraction of a second; an interrupt before that used to
print a ``KeyboardInterrupt`` traceback. This module imports nothing heavy itself.
"""

from __future__ import annotations

import sys


def main() -> None:
    try:
        from .cli import main as run

        run()
    except KeyboardInterrupt:
        sys.stderr.write("error: interrupted\n")
        sys.exit(130)


__all__ = ["main"]
