"""The writer lock of a table: an exclusive ``flock`` on ``<table>/.engramctl.lock`` holding the
writer's ``pid N on HOST``, and :func:`active_writer`, which reads that note without locking.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import socket
import time
from pathlib import Path

from ...errors import EngramError

LOCK_NAME = ".engramctl.lock"
log = logging.getLogger(__name__)


class WriterLock:
    """An exclusive ``flock`` on ``<table>/.engramctl.lock``; a second writer is refused.

    The kernel drops the lock when the holder exits, so a crash never leaves a stale lock.
    """

    def __init__(self, table_path: Path):
        self.path = Path(table_path) / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> WriterLock:
        import fcntl

        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise EngramError(
                f"cannot write {self.path.parent}: {exc.strerror or exc} (its writer lock "
                f"{self.path.name} cannot be created)"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = ""
            for _ in range(20):  # the holder writes its note just after taking the lock
                holder = os.pread(fd, 200, 0).decode(errors="replace").strip()
                if holder:
                    break
                time.sleep(0.01)
            holder = holder or "another process"
            os.close(fd)
            if exc.errno in (errno.EAGAIN, errno.EACCES):
                raise EngramError(
                    f"{self.path.parent} is being written by {holder}; wait for it to finish "
                    "(only one writer at a time)"
                ) from None
            raise EngramError(f"cannot lock {self.path}: {exc.strerror}") from exc
        stale = os.pread(fd, 200, 0).decode(errors="replace").strip()
        if stale:  # a writer that died without releasing: the kernel dropped its flock
            log.warning(
                "%s: took over the writer lock of %s, which ended without releasing it (a commit "
                "it had not made visible is dropped)",
                self.path.parent,
                stale,
            )
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, 0)
            os.close(self._fd)  # closing drops the flock
            self._fd = None

    def __enter__(self) -> WriterLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def active_writer(table_path) -> str | None:
    """``"pid N on HOST"`` of the process holding a table's writer lock, or ``None``.

    Read-only: the holder's own note in the lock file (a writer truncates it on release; a
    killed writer's note names a dead pid on this host and is ignored). Taking the lock to test
    it could make a starting writer fail, so it is not taken.
    """
    try:
        note = (Path(table_path) / LOCK_NAME).read_text(errors="replace").strip()
    except OSError:
        return None
    parts = note.split()
    if len(parts) != 4 or parts[0] != "pid" or not parts[1].isdigit():
        return None
    if parts[3] == socket.gethostname():
        try:
            os.kill(int(parts[1]), 0)
        except ProcessLookupError:
            return None  # the writer died (the kernel released its lock)
        except PermissionError:
            pass  # alive, another user's
    return note
