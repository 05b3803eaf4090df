"""Writing commits: rows staged in memory (:class:`StagedWrites`) and :func:`make_commit`, which
writes one segment per layer, then the log that makes them visible.

A commit is all or nothing. Its segments are written (and fsynced) under fresh names the log does
not list yet; only then is the new log renamed into place. A failure before the rename (a full
disk, Ctrl-C, a kill) leaves the log as it was: the segments written so far are removed at once,
or, after a kill, at the next open for writing (:func:`~engramctl.table.edits.log.
remove_unlisted_segments`).
"""

from __future__ import annotations

import contextlib
import errno
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ...errors import EngramError
from .log import (
    Commit,
    EditLog,
    log_path,
    new_commit_id,
    parse_log,
    segment_name,
    segments_path,
    utc_now,
    write_log,
)
from .overlay import LayerIndex, build_index, lookup
from .segment import SegmentFile, write_segment, write_segment_columns


@dataclass(frozen=True)
class StreamedRows:
    """A layer of a commit whose rows are produced block by block as its segment is written
    (compaction: O(block) memory however many rows): sorted distinct ``ids``, the stored rows'
    ``dtype`` and ``width``, ``produce(start, stop)`` giving the rows of ``ids[start:stop]``,
    and side columns ``(name, dtype, width, produce)`` produced the same way."""

    ids: np.ndarray
    dtype: np.dtype
    width: int
    produce: Callable[[int, int], np.ndarray]
    side: tuple[tuple[str, np.dtype, int, Callable[[int, int], np.ndarray]], ...] = ()

    def write(self, path, layer_id: int) -> SegmentFile:
        ids = np.ascontiguousarray(self.ids, dtype="<i8")
        columns = [
            ("ids", ids.dtype, 1, lambda a, b: ids[a:b].reshape(-1, 1)),
            ("rows", self.dtype, self.width, self.produce),
            *self.side,
        ]
        return write_segment_columns(path, layer_id, ids.size, columns)


def last_wins(ids: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sorted distinct ``ids`` and, for each, the row of its last occurrence (a copy)."""
    if ids.size > 1 and not (np.diff(ids) > 0).all():
        reversed_ids = ids[::-1]
        unique, first = np.unique(reversed_ids, return_index=True)
        return unique, np.ascontiguousarray(rows[::-1][first])
    return ids.copy(), np.array(rows, copy=True, order="C")


class StagedWrites:
    """Rows written but not committed yet, per layer, in the order they were written."""

    def __init__(self):
        self.layers: dict[int, list[tuple[np.ndarray, np.ndarray]]] = {}

    def add(self, layer_id: int, ids: np.ndarray, rows: np.ndarray) -> None:
        """Stage rows (int64 ids in range, stored rows); of repeated ids the last one wins."""
        if ids.size:
            self.layers.setdefault(layer_id, []).append(last_wins(ids, rows))

    @property
    def empty(self) -> bool:
        return not self.layers

    @property
    def rows(self) -> int:
        return sum(ids.size for batches in self.layers.values() for ids, _ in batches)

    def clear(self) -> None:
        self.layers.clear()

    def apply(self, layer_id: int, ids: np.ndarray, out: np.ndarray) -> np.ndarray:
        """Overwrite the rows of ``out`` (row ``ids[i]``) that staged writes hold."""
        for staged_ids, staged_rows in self.layers.get(layer_id, ()):
            hits, at = lookup(LayerIndex(staged_ids, None, None), ids)
            out[hits] = staged_rows[at]
        return out

    def apply_range(self, layer_id: int, start: int, stop: int, out: np.ndarray) -> np.ndarray:
        for staged_ids, staged_rows in self.layers.get(layer_id, ()):
            lo, hi = np.searchsorted(staged_ids, [start, stop])
            out[staged_ids[lo:hi] - start] = staged_rows[lo:hi]
        return out

    def merged(self, layer_id: int) -> tuple[np.ndarray, np.ndarray]:
        """One layer's staged rows as one sorted batch (later writes win)."""
        batches = self.layers[layer_id]
        if len(batches) == 1:
            return batches[0]
        index = build_index([ids for ids, _ in batches])
        rows = np.empty((index.ids.size, batches[0][1].shape[1]), dtype=batches[0][1].dtype)
        for b, (_, batch_rows) in enumerate(batches):
            mine = np.flatnonzero(index.segment == b)
            rows[mine] = batch_rows[index.slot[mine]]
        return np.asarray(index.ids), rows


def _visible(table_path, commit_id: str) -> bool:
    """Whether the table's log already lists ``commit_id`` (the rename happened)."""
    try:
        return commit_id in (
            c.id for c in parse_log(log_path(table_path).read_bytes(), where="").commits
        )
    except (OSError, EngramError):
        return False


def make_commit(
    table_path,
    log: EditLog,
    layers: dict[int, tuple[np.ndarray, np.ndarray] | StreamedRows],
    *,
    made_by: dict,
    message: str = "",
    side: dict[int, dict[str, np.ndarray]] | None = None,
    commit_id: str | None = None,
) -> tuple[EditLog, Commit]:
    """Write ``layers`` (``{layer: (sorted distinct ids, stored rows)}``, or
    :class:`StreamedRows`) as one commit after ``log``; returns the new log (now the table's)
    and the commit. Call under the writer lock.

    ``commit_id``: the new commit's id, chosen by the caller (a run record naming the state
    after it goes into the same log), else a fresh one. A failure leaves the table's log as it
    was and removes what this call wrote; a full disk or
    another OS error is one :class:`EngramError` line.
    """
    commit_id = commit_id or new_commit_id()
    folder = segments_path(table_path)
    written: list = []
    where = f"{table_path}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        records: dict[int, SegmentFile] = {}
        for layer_id, layer in sorted(layers.items()):
            path = folder / segment_name(commit_id, layer_id)
            written.append(path)
            if isinstance(layer, StreamedRows):
                records[layer_id] = layer.write(path, layer_id)
                continue
            ids, rows = layer
            records[layer_id] = write_segment(path, layer_id, ids, rows, (side or {}).get(layer_id))
        commit = Commit(commit_id, log.head, utc_now(), dict(made_by), message, records)
        new_log = log.with_commit(commit)
        write_log(table_path, new_log)
    except BaseException as exc:
        if _visible(table_path, commit_id):  # interrupted after the log's rename: it stands
            raise
        for path in written:
            with contextlib.suppress(OSError):
                path.unlink()
        if isinstance(exc, OSError):
            why = "the disk is full" if exc.errno == errno.ENOSPC else (exc.strerror or str(exc))
            raise EngramError(
                f"cannot commit rows to {where}: {why}; nothing was committed (the table reads "
                "as before); free space and write again"
            ) from None
        raise
    return new_log, commit


__all__ = ["StagedWrites", "StreamedRows", "make_commit", "last_wins"]
