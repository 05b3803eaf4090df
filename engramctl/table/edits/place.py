"""Where a table's commits live, and opening them: beside the table, or in a commits directory.

A local table keeps its commits beside its chunks (``<table>/edits/``, the writer lock
``<table>/.engramctl.lock``). A table whose directory is at a URL (``s3://bucket/t.zarr``) cannot:
an object store has no atomic rename for the log and no lock. Its commits go to a local
**commits directory** (``open_table(url, "r+", commits_dir=DIR)``, ``--commits-dir DIR``) that
holds the same files (``DIR/edits/``, ``DIR/.engramctl.lock``) and ``DIR/base.json``: the base it
belongs to, its URL and its state (:func:`~engramctl.table.core.manifest.table_state`, a checksum
of its recipe and every written chunk's CRC-32). The base is only ever read.

A commits directory is made by the first open for writing (the directory missing or empty) and
refused, in one line, for a base of another state: its commits were written over other rows.
The same base at another URL (a copied bucket) has the same state and is accepted. Opening to
read through a commits directory that is not one is refused too (a mistyped name would
otherwise read the bare base without a word).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from ..._files import write_file_atomic
from ...errors import EngramError, UsageError
from ..core.lock import WriterLock
from ..core.manifest import read_group, table_state
from ..core.store import LocalStore, TableStore, is_url
from .journal import finish_journal
from .log import EditLog, Pin, read_log, remove_unlisted_segments, snapshot

log = logging.getLogger(__name__)

BASE_NAME = "base.json"
PLACE_FORMAT = "engramctl-commits-dir"
PLACE_VERSION = 1


def _read_base_record(root: Path) -> dict | None:
    path = root / BASE_NAME
    try:
        doc = json.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise EngramError(f"cannot read {path}: {exc}; it names the base of the commits") from None
    if not isinstance(doc, dict) or doc.get("format") != PLACE_FORMAT or "state" not in doc:
        raise EngramError(f"{path} is not an engramctl commits directory's record of its base")
    return doc


def commits_store(store: TableStore, base_state: str, commits_dir, *, create: bool) -> TableStore:
    """The store holding the commits of the table in ``store`` (whose base has ``base_state``):
    ``store`` itself without ``commits_dir``, else the commits directory, checked to belong to
    this base (and made, with its ``base.json``, where ``create`` and it is missing or empty)."""
    if commits_dir is None:
        return store
    if is_url(commits_dir):
        raise UsageError(
            f"--commits-dir {commits_dir}: the commits directory must be a local directory "
            "(commits need an atomic rename and a lock, which object stores lack)"
        )
    root = Path(commits_dir)
    if store.is_local and root.resolve() == Path(store.location).resolve():
        return store  # the table's own directory: its commits are there already
    record = _read_base_record(root) if root.is_dir() else None
    if record is None:
        if root.exists() and not root.is_dir():
            raise UsageError(f"--commits-dir {root} is a file; give a directory")
        if root.is_dir() and any(root.iterdir()):
            raise UsageError(
                f"--commits-dir {root} is not a commits directory (no {BASE_NAME}) and not "
                "empty; give a new or empty directory"
            )
        if not create:
            raise UsageError(
                f"--commits-dir {root} holds no commits yet (the first write makes it); leave "
                "it out to read the bare base"
            )
        body = {"format": PLACE_FORMAT, "version": PLACE_VERSION, "base": store.url}
        try:
            root.mkdir(parents=True, exist_ok=True)
            write_file_atomic(root / BASE_NAME, json.dumps(body | {"state": base_state}).encode())
        except OSError as exc:
            raise EngramError(f"cannot write {root}: {exc.strerror or exc}") from None
    elif record["state"] != base_state:
        raise EngramError(
            f"--commits-dir {root} holds the commits of another base ({record.get('base')}, "
            f"state {str(record['state'])[:12]}; {store.url} has state {base_state[:12]}); give "
            "this table's commits directory, or a new one"
        )
    return LocalStore(root)


@dataclass(frozen=True)
class OpenedCommits:
    """What :func:`open_commits` gives a :class:`~engramctl.table.sources.table.Table`."""

    store: TableStore  # where the commits live (the table's store, or a commits directory)
    meta: object  # the table's metadata, re-read under the lock by a writer
    manifest: dict
    edit_log: EditLog
    lock: WriterLock | None
    pin: Pin | None


def open_commits(store: TableStore, meta, manifest: dict, *, mode: str, commits_dir=None):
    """Open the commits of the table in ``store``: a writer (``mode="r+"``) takes the lock where
    they live, finishes a compaction into the base cut short, re-reads the metadata and removes
    orphan segments; a reader pins its snapshot of the log. Without a commits directory, a
    table that cannot hold its commits (a URL) is refused for writing, saying how to give one."""
    writer = mode == "r+"
    place = commits_store(store, table_state(meta, manifest), commits_dir, create=writer)
    if writer:
        place.check_writable()
    lock = WriterLock(place.location).acquire() if writer else None
    try:
        if lock is None:
            edit_log, pin = snapshot(place)
            return OpenedCommits(place, meta, manifest, edit_log, None, pin)
        if place is store and finish_journal(store) is not None:  # into the base, cut short
            log.warning("%s: finished a compaction into the base cut short", store.url)
        meta, manifest = read_group(store)  # re-read under the lock
        if place is not store:  # the base may have changed since it was checked
            commits_store(store, table_state(meta, manifest), commits_dir, create=False)
        edit_log = read_log(place)
        removed = remove_unlisted_segments(place.location, edit_log)
        if removed:
            log.warning(
                "%s: removed %d segment files no commit lists (a commit cut short, or dropped "
                "by revert or compaction)",
                place.url,
                len(removed),
            )
        return OpenedCommits(place, meta, manifest, edit_log, lock, None)
    except BaseException:
        if lock is not None:
            lock.release()
        raise


__all__ = ["commits_store", "open_commits", "OpenedCommits", "BASE_NAME"]
