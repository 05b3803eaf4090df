"""The journal of a compaction into the base (``edits/journal.json``): what makes
``compact --into-base`` resumable, and what lets a reader read a table it left half done.

A compaction into the base rewrites chunk files of the base, which readers read in place, so it
cannot be one rename. It goes in three steps:

1. each touched chunk is written whole (base rows with the commits' rows over them) to
   ``edits/staging/<layer>-<chunk>.chunk`` and fsynced; a kill here leaves staged files only,
   removed at the next open for writing (rolled back: the table never changed);
2. the journal is written (one atomic rename): the merged commits and, per chunk, its staged
   file and new CRC-32 and size. From here the compaction is decided and rolled forward;
3. :func:`finish_journal`: each staged file is renamed over its chunk, its block checksum record
   rewritten (:mod:`~engramctl.table.core.blocksums`), the manifest written (``zarr.json``),
   the merged commits dropped from the log, the journal removed. Every step can be redone, so a
   kill anywhere in it is finished by the next open for writing (or ``compact --into-base``).

The table reads the same at every point: a new chunk holds what the old chunk read with the
commits over it, and the log keeps those commits until every chunk and the manifest are in
place, so old chunk + commits and new chunk + commits read equal. Only a chunk's checksum tells
the two apart: a reader whose manifest has the old entry of a chunk renamed since takes the
journal's entry (:func:`journal_entry`), so it neither fails nor waits.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from ..._files import write_file_atomic
from ...errors import EngramError
from ..core.blocksums import blocks_key, update_block_record
from ..core.codec import chunk_key
from ..core.manifest import read_group, write_group_attrs
from .log import EDITS_DIR, edits_path, read_log, remove_unlisted_segments, restate, write_log

JOURNAL_NAME = "journal.json"
STAGING_DIR = "staging"
JOURNAL_FORMAT = "engramctl-compact-journal"
SOURCE = "compact"  # the manifest source of a chunk a compaction into the base wrote


def journal_path(table_path) -> Path:
    return edits_path(table_path) / JOURNAL_NAME


def staging_path(table_path) -> Path:
    return edits_path(table_path) / STAGING_DIR


def staged_name(layer_id: int, chunk_index: int) -> str:
    return f"{layer_id}-{chunk_index}.chunk"


@dataclass(frozen=True)
class ChunkRewrite:
    """One chunk a compaction into the base rewrites: its staged file, new CRC-32 and size."""

    layer: int
    chunk: int
    staged: str
    crc32: int
    size: int

    @property
    def entry(self) -> list:
        """Its manifest entry after the rewrite."""
        return [self.crc32, self.size, SOURCE]


@dataclass(frozen=True)
class Journal:
    """A decided compaction into the base: the commits it merges (ids, oldest first), the
    chunks it rewrites, and the event ``history`` records for it."""

    merged: tuple[str, ...]
    chunks: tuple[ChunkRewrite, ...]
    event: dict
    states: tuple[str, str] = ("", "")  # the rows' state before and after (run records)

    def to_dict(self) -> dict:
        body = {
            "format": JOURNAL_FORMAT,
            "merged": list(self.merged),
            "chunks": [[c.layer, c.chunk, c.staged, c.crc32, c.size] for c in self.chunks],
            "event": self.event,
            "states": list(self.states),
        }
        return body | {"sha256": _digest(body)}

    def entry(self, layer_id: int, chunk_index: int) -> list | None:
        for c in self.chunks:
            if c.layer == layer_id and c.chunk == chunk_index:
                return c.entry
        return None


def _digest(body: dict) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def write_journal(table_path, journal: Journal) -> None:
    """Decide the compaction: the journal in place by one atomic rename, fsynced."""
    write_file_atomic(journal_path(table_path), json.dumps(journal.to_dict()).encode())


def parse_journal(data: bytes, *, where: str) -> Journal:
    try:
        doc = json.loads(data)
        if not isinstance(doc, dict) or doc.get("format") != JOURNAL_FORMAT:
            raise ValueError("not a compaction journal")
        digest = doc.pop("sha256", None)
        if digest != _digest(doc):
            raise ValueError("its checksum does not match its content")
        chunks = tuple(
            ChunkRewrite(int(a), int(b), str(c), int(d), int(e)) for a, b, c, d, e in doc["chunks"]
        )
        merged = tuple(str(i) for i in doc["merged"])
        before, after = (str(s) for s in doc["states"])
        return Journal(merged, chunks, dict(doc["event"]), (before, after))
    except (ValueError, KeyError, TypeError) as exc:
        raise EngramError(
            f"{where} is damaged ({exc}); the compaction into the base it records cannot be "
            "finished: restore the table from a copy"
        ) from None


def read_journal(store) -> Journal | None:
    """The table's journal (a :class:`~engramctl.table.core.store.TableStore`), or ``None``."""
    key = f"{EDITS_DIR}/{JOURNAL_NAME}"
    try:
        data = store.read_bytes(key)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise EngramError(f"cannot read {store.where(key)}: {exc.strerror or exc}") from None
    return parse_journal(data, where=store.where(key))


def journal_entry(store, layer_id: int, chunk_index: int) -> list | None:
    """The manifest entry a compaction into the base under way (or cut short) gives a chunk,
    or ``None``: what a reader whose manifest disagrees with the chunk file takes instead."""
    try:
        journal = read_journal(store)
    except EngramError:
        return None
    return None if journal is None else journal.entry(layer_id, chunk_index)


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def finish_journal(store, *, stop_after: str | None = None) -> Journal | None:
    """Roll a decided compaction into the base forward (the caller holds the writer lock):
    staged chunks renamed into place, block checksums, manifest, log, journal removed. Every
    step is redone safely, so this finishes a compaction cut short anywhere. Without a journal,
    staged files (a compaction cut short before it decided) are removed. Returns the journal
    finished, or ``None``. ``stop_after`` (``"renames"``, ``"manifest"``, ``"log"``) stops
    early: the tests' way of cutting it short at a known point."""
    root = Path(store.location)
    journal = read_journal(store)
    staging = staging_path(root)
    if journal is None:
        discard_staging(root)
        return None
    meta, manifest = read_group(store)
    for c in journal.chunks:
        staged = staging / c.staged
        target = root / chunk_key(c.layer, c.chunk)
        if staged.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(staged, target)
            _fsync_dir(target.parent)
        elif not target.exists() or target.stat().st_size != c.size:
            raise EngramError(
                f"{root}: the compaction into the base in progress lost chunk {c.chunk} of "
                f"layer {c.layer} (neither staged nor in place); restore the table from a copy"
            )
    if stop_after == "renames":
        return journal
    for c in journal.chunks:
        if manifest.get(c.layer, {}).get(c.chunk) != c.entry:
            if (root / blocks_key(meta, c.layer)).exists():  # the layer has block checksums
                data = np.fromfile(root / chunk_key(c.layer, c.chunk), dtype=np.uint8)
                update_block_record(store, meta, c.layer, c.chunk, c.crc32, data)
            manifest.setdefault(c.layer, {})[c.chunk] = c.entry
    write_group_attrs(root, meta, manifest)
    if stop_after == "manifest":
        return journal
    edit_log = read_log(store)
    merged = set(journal.merged)
    if any(c.id in merged for c in edit_log.commits):
        kept = tuple(c for c in edit_log.commits if c.id not in merged)
        if kept and kept[0].parent in merged:  # commits made after it: rebased on the base
            kept = (replace(kept[0], parent=None), *kept[1:])
        runs = restate(edit_log.runs, *journal.states)
        events = (*edit_log.events, journal.event)
        edit_log = replace(edit_log, commits=kept, events=events, runs=runs)
        write_log(root, edit_log)
    if stop_after == "log":
        return journal
    journal_path(root).unlink(missing_ok=True)
    _fsync_dir(journal_path(root).parent)
    discard_staging(root)
    remove_unlisted_segments(root, edit_log)
    return journal


def discard_staging(table_path) -> list[str]:
    """Remove staged chunk files no journal names (a compaction cut short before it decided)."""
    removed = []
    with contextlib.suppress(OSError):
        for entry in staging_path(table_path).iterdir():
            with contextlib.suppress(OSError):
                entry.unlink()
                removed.append(entry.name)
    return sorted(removed)


__all__ = [
    "ChunkRewrite",
    "Journal",
    "JOURNAL_NAME",
    "STAGING_DIR",
    "SOURCE",
    "journal_path",
    "staging_path",
    "staged_name",
    "write_journal",
    "read_journal",
    "parse_journal",
    "journal_entry",
    "finish_journal",
    "discard_staging",
]
