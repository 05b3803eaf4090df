"""Output targets of long jobs: checked before the work starts, saved somewhere after it.

:func:`check_output_target` refuses a target that cannot be written (the existing-file rules of
:func:`engramctl._files.check_writable_target`, then a probe file created and removed beside it,
which a read-only file system or a missing permission fails) before a pass of minutes or hours.
:func:`save_with_fallback` writes a result that took that long; if the target fails late (the
disk filled during the pass) the result goes to a file in the temporary directory instead, and
the caller says where, so the work is not lost.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ._files import check_writable_target
from .errors import EngramError


def probe_writable(path: Path) -> None:
    """Create and remove a probe file beside ``path``; refuse if the directory is not writable."""
    path = Path(path)
    probe = path.with_name(f".{path.name}.probe-{os.getpid()}")
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except OSError as exc:
        raise EngramError(
            f"cannot write {path}: {exc.strerror or exc} (checked before starting); choose a "
            "writable place"
        ) from None
    os.close(fd)
    with contextlib.suppress(OSError):
        probe.unlink()


def check_output_target(path: Path, *, overwrite: bool, inputs=()) -> None:
    """:func:`check_writable_target` (an output that is one of ``inputs`` refused) plus
    :func:`probe_writable`: fail now, not after the work."""
    check_writable_target(path, overwrite=overwrite, inputs=inputs)
    probe_writable(path)


@dataclass(frozen=True)
class Saved:
    """Where a result went: ``path`` (the target, or the fallback) and why it is not the target."""

    path: Path
    failure: str | None = None  # the target's error when ``path`` is a fallback


def save_with_fallback(path: Path, write: Callable[[Path], None]) -> Saved:
    """Call ``write(path)``; if it fails, ``write`` a file in the temporary directory instead.

    ``write`` must write its target atomically (no half-written file is left on failure). Raises
    :class:`EngramError` naming both places only if the fallback fails too.
    """
    path = Path(path)
    try:
        write(path)
        return Saved(path)
    except (EngramError, OSError) as exc:
        failure = str(exc)
    fallback = Path(tempfile.gettempdir()) / f"engramctl-{os.getpid()}-{path.name}"
    try:
        write(fallback)
    except (EngramError, OSError) as exc:
        raise EngramError(
            f"{failure}; the fallback {fallback} failed too ({exc}): the result is lost"
        ) from None
    return Saved(fallback, failure)
