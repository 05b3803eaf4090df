"""The ``engramctl`` console script: Ctrl-C at any moment is one line, even during start-up.

The CLI's own handler (``cli.app.command``) only exists once typer, rich, numpy and the command
modules are imported, which takes a good fraction of a second. A ``KeyboardInterrupt`` raised in
the middle of those imports surfaces in odd ways (numpy turns it into an ``ImportError`` with a
page of advice, importlib prints "Exception ignored in ..."). So while importing, SIGINT ends the
process at once with one line (nothing has been written yet; it dies of SIGINT, exit status 130
in a shell); the command itself then gets
Python's usual ``KeyboardInterrupt``, which the CLI turns into ``error: interrupted`` after
closing its outputs.
"""

from __future__ import annotations

import os
import signal
import sys

INTERRUPTED_EXIT = 130


def _exit_at_once(signum, frame) -> None:
    """Say so, then die of SIGINT itself (the shell reports 130), running no cleanup code."""
    os.write(2, b"error: interrupted\n")
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGINT)


def main() -> None:
    signal.signal(signal.SIGINT, _exit_at_once)
    from .cli import main as run

    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        run()
    except KeyboardInterrupt:
        sys.stderr.write("error: interrupted\n")
        sys.exit(INTERRUPTED_EXIT)


__all__ = ["main"]
