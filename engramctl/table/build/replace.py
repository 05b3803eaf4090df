"""Putting a table directory in place without a moment where a half-made one is visible.

A table is created or replaced under its writer lock, held from the first check to the last
rename (:func:`locked_path`): a second writer (another ``init-table``, ``train``) is refused with
"is being written by pid N" instead of slipping in between. A new table, or the replacement of an
old one, is built in a directory beside the target and swapped in at the end
(:func:`install_table`): an interruption leaves the old state (the old table, or no table) or the
new one, never neither and never a mix.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
from pathlib import Path

from ..core.lock import LOCK_NAME, WriterLock

RENAME_EXCHANGE = 2  # linux/fs.h: swap two paths atomically (renameat2)
AT_FDCWD = -100


def is_unborn(path: Path) -> bool:
    """A directory holding at most a writer lock and the layer directories of a creation that
    was interrupted before its ``zarr.json`` arrived: a table slot, not a table or user data."""
    path = Path(path)
    if not path.is_dir():
        return False
    for entry in path.iterdir():
        if entry.name == LOCK_NAME or (entry.name.startswith("layer_") and entry.is_dir()):
            continue
        return False
    return True


@contextlib.contextmanager
def locked_path(path: Path):
    """Create ``path`` (a directory) if missing and hold its writer lock for the block.

    A directory this call created is removed again if the block leaves nothing but the lock.
    """
    path = Path(path)
    created = False
    with contextlib.suppress(FileExistsError):
        path.mkdir()
        created = True
    lock = WriterLock(path).acquire()  # refused: another writer holds it (and the directory)
    try:
        yield lock
    finally:
        with contextlib.suppress(OSError):
            if created and [p.name for p in path.iterdir()] == [LOCK_NAME]:
                (path / LOCK_NAME).unlink()
                path.rmdir()
        lock.release()


def clear_unborn(path: Path) -> None:
    """Remove the leftovers of an interrupted creation (the caller holds the lock)."""
    for entry in Path(path).iterdir():
        if entry.name != LOCK_NAME:
            shutil.rmtree(entry)


def exchange(a: Path, b: Path) -> bool:
    """Swap two directories in one step (Linux ``renameat2(RENAME_EXCHANGE)``); ``False`` where
    the system or file system cannot (the caller then renames twice)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p] * 2 + [ctypes.c_uint]
    return renameat2(AT_FDCWD, os.fsencode(a), AT_FDCWD, os.fsencode(b), RENAME_EXCHANGE) == 0


def install_table(built: Path, path: Path) -> WriterLock:
    """Put the complete table directory ``built`` at ``path`` (whose lock the caller holds).

    ``built``'s own lock is taken first and returned, still held: after the swap it is the lock
    of ``path``, so no other writer gets in before the caller releases it. What stood at ``path``
    (an old table, or an empty slot) is removed afterwards.
    """
    built, path = Path(built), Path(path)
    new_lock = WriterLock(built).acquire()
    try:
        if not exchange(built, path):  # two renames: a moment with no table at path
            old = path.with_name(f".{path.name}.replaced-{os.getpid()}")
            os.replace(path, old)
            os.replace(built, path)
            built = old
        shutil.rmtree(built, ignore_errors=True)  # the old table (or slot), now beside
    except BaseException:
        new_lock.release()
        raise
    return new_lock
