"""Exceptions that carry a user-facing message and an exit code.

The CLI turns an :class:`EngramError` into one line on stderr and its exit code, never a traceback.
"""

from __future__ import annotations


class EngramError(Exception):
    """A problem the user can fix: bad input, a missing file, a mismatched table.

    The message says what is wrong and what to do about it.
    """

    exit_code = 1


class UsageError(EngramError):
    """Nonsensical options or values (exit code 2, like click's usage errors)."""

    exit_code = 2


class Interrupted(EngramError):
    """The user interrupted a long job (Ctrl-C); the message says what was kept (exit 130)."""

    exit_code = 130
