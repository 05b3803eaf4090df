"""Reading through commits: :class:`Overlay` puts a log's segments over the base's rows.

A read takes the base's rows first (one vectorised gather of every id), then overwrites the ids
that a commit holds with the newest commit's row. Per layer the overlay keeps an index of the
written rows: sorted row ids and, for each, the segment and slot of its newest row. With one
segment per layer (a single commit, or after ``engramctl compact``) the index *is* the segment's
sorted id column, memory-mapped: no RAM at all. With several it is built once, at the layer's
first read, by a stable sort of the segments' ids (newest first): 20 bytes of RAM per distinct
row written (8 id + 4 segment + 8 slot), never per table row. When written rows outgrow RAM,
``engramctl compact`` folds the commits into one segment per layer (index memory-mapped again)
or ``compact --into-base`` folds them into the base's chunks.

A gather finds each id in the index (:func:`._kernels.find`: a radix directory, then a short
binary search, in parallel; :func:`lookup` and ``np.searchsorted`` are the plain reference),
gathers only the other ids from the base, then puts the read together in one parallel pass
(:meth:`Overlay.merge`) that copies each row once, from the base's rows or from whichever
segment holds its newest version (segments read by address, not one pass per segment). The
written rows' segments are checked against the log's CRC-32 at the layer's first read when
``check_crc`` (the ``check_chunks`` of :func:`~engramctl.table.sources.table.open_table`).
"""

from __future__ import annotations

import functools
import threading
from dataclasses import dataclass

import numpy as np

from ...errors import EngramError
from ._kernels import copy_rows, directory, find, merge_rows
from .log import EDITS_DIR, SEGMENTS_DIR, EditLog, segments_path
from .segment import Segment


@dataclass(frozen=True)  # (a cached_property needs the instance __dict__ a plain dataclass has)
class LayerIndex:
    """Written rows of one layer: sorted distinct ``ids``; for each, the ``segment`` (an index
    into the layer's segments) and ``slot`` of its newest row. ``segment``/``slot`` are None
    when the layer has one segment (slot = position in ``ids``)."""

    ids: np.ndarray
    segment: np.ndarray | None
    slot: np.ndarray | None

    @functools.cached_property
    def radix(self) -> tuple[np.ndarray, int]:
        """The ids' radix directory (:func:`._kernels.directory`), made at the first read."""
        return directory(np.asarray(self.ids))


def build_index(id_columns: list[np.ndarray]) -> LayerIndex:
    """The index of segments' sorted id columns given oldest first (newest row wins)."""
    if len(id_columns) == 1:
        return LayerIndex(id_columns[0], None, None)
    newest_first = id_columns[::-1]
    ids = np.concatenate(newest_first)
    last = len(id_columns) - 1
    segment = np.concatenate(
        [np.full(c.size, last - i, dtype=np.int32) for i, c in enumerate(newest_first)]
    )
    slot = np.concatenate([np.arange(c.size, dtype=np.int64) for c in newest_first])
    order = np.argsort(ids, kind="stable")
    ids = ids[order]
    first = np.ones(ids.size, dtype=bool)
    first[1:] = ids[1:] != ids[:-1]  # the first of equal ids is the newest (stable sort)
    keep = order[first]
    return LayerIndex(ids[first], segment[keep], slot[keep])


def lookup(index: LayerIndex, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(positions in ids that are written, their positions in the index)``."""
    if not index.ids.size or not ids.size:
        empty = np.empty(0, dtype=np.int64)
        return empty, empty
    at = np.searchsorted(index.ids, ids)
    np.minimum(at, index.ids.size - 1, out=at)
    hits = np.flatnonzero(index.ids[at] == ids)
    return hits, at[hits]


class Overlay:
    """The segments of one log over a table's base (see the module docstring)."""

    def __init__(self, store, log: EditLog, *, check_crc: bool):
        """``store``: the table's :class:`~engramctl.table.core.store.TableStore` (local files
        are memory-mapped, an object store's are fetched whole)."""
        self.log = log
        self.check_crc = check_crc
        self.store = store
        self._segments: dict[int, list[Segment]] | None = None
        self._indexes: dict[int, LayerIndex] = {}
        self._mutex = threading.RLock()
        self._open()  # mapped now: a segment deleted later stays readable

    def _open(self) -> dict[int, list[Segment]]:
        with self._mutex:
            if self._segments is None:
                segments: dict[int, list[Segment]] = {}
                try:
                    for commit in self.log.commits:
                        for layer_id, record in sorted(commit.layers.items()):
                            segment = Segment(self._source(record.name), record, commit=commit.id)
                            segments.setdefault(layer_id, []).append(segment)
                except BaseException:
                    for opened in segments.values():
                        for segment in opened:
                            segment.close()
                    raise
                self._segments = segments
            return self._segments

    def _source(self, name: str):
        if self.store.supports_mmap:
            return segments_path(self.store.location) / name
        key = f"{EDITS_DIR}/{SEGMENTS_DIR}/{name}"
        try:
            return self.store.read_bytes(key)
        except FileNotFoundError:
            raise EngramError(f"segment {self.store.where(key)} is missing") from None

    @property
    def segments(self) -> dict[int, list[Segment]]:
        """Per layer, the mapped segments oldest first (mapped again after :meth:`close`)."""
        return self._open()

    @property
    def empty(self) -> bool:
        return not self.segments

    def index(self, layer_id: int) -> LayerIndex | None:
        """The layer's index (built and, with ``check_crc``, checked at the first call)."""
        segments = self.segments.get(layer_id)
        if not segments:
            return None
        with self._mutex:
            if layer_id not in self._indexes:
                if self.check_crc:
                    for segment in segments:
                        segment.check_crc()
                self._indexes[layer_id] = build_index([s.ids for s in segments])
            return self._indexes[layer_id]

    def _copy(self, layer_id: int, index: LayerIndex, at: np.ndarray, out, where) -> None:
        segments = self.segments[layer_id]
        if index.segment is None:
            out[where] = segments[0].rows[at]
            return
        seg, slot = index.segment[at], index.slot[at]
        if len(segments) == 1 or (seg.size and (seg == seg[0]).all()):
            out[where] = segments[int(seg[0]) if seg.size else 0].rows[slot]
            return
        order = np.argsort(seg, kind="stable")
        bounds = np.flatnonzero(np.diff(seg[order])) + 1
        for group in np.split(order, bounds):
            out[where[group]] = segments[int(seg[group[0]])].rows[slot[group]]

    def find(self, layer_id: int, ids: np.ndarray) -> tuple[np.ndarray | None, int]:
        """For each id, its position among the layer's written rows (-1: the base's), and how
        many are written; ``(None, 0)`` if the layer has no commits."""
        index = self.index(layer_id)
        if index is None or not ids.size:
            return None, 0
        return find(index.ids, ids, index.radix)

    def apply(
        self, layer_id: int, ids: np.ndarray, out: np.ndarray, found: np.ndarray | None = None
    ) -> np.ndarray:
        """Overwrite the rows of ``out`` (``out[i]`` is row ``ids[i]``, C-contiguous) that
        commits hold: a parallel binary search and copy (:mod:`._kernels`). ``found`` is
        :meth:`find`'s answer for these ids, if the caller has it."""
        if found is None:
            found, hits = self.find(layer_id, ids)
            if not hits:
                return out
        index = self.index(layer_id)
        segments = self.segments[layer_id]
        if index.segment is None:
            copy_rows(found, None, 0, segments[0].rows, out)
            return out
        hit = found >= 0
        slot = np.where(hit, index.slot[np.where(hit, found, 0)], -1)
        segment = index.segment[np.where(hit, found, 0)]
        for which in np.unique(segment[hit]).tolist():
            copy_rows(slot, segment, which, segments[which].rows, out)
        return out

    def merge(
        self, layer_id: int, found: np.ndarray, base_rows: np.ndarray, out: np.ndarray
    ) -> np.ndarray:
        """Put a read together in one parallel pass (:func:`._kernels.merge_rows`): ``out[i]``
        is the newest commit's row where ``found[i] >= 0`` (:meth:`find`'s answer), else the
        next of ``base_rows`` (the base's rows of the other ids, in order)."""
        index = self.index(layer_id)
        arrays = [s.rows for s in self.segments[layer_id]]  # alive through the call
        return merge_rows(found, index.segment, index.slot, arrays, base_rows, out)

    def apply_range(self, layer_id: int, start: int, stop: int, out: np.ndarray) -> np.ndarray:
        """Overwrite the rows of ``out`` (rows ``[start, stop)``) that commits hold."""
        index = self.index(layer_id)
        if index is not None:
            lo, hi = np.searchsorted(index.ids, [start, stop])
            if hi > lo:
                at = np.arange(lo, hi)
                self._copy(layer_id, index, at, out, np.asarray(index.ids[lo:hi]) - start)
        return out

    def side_names(self, layer_id: int) -> tuple[str, ...]:
        """The side columns (moments, master copies) any of the layer's segments carries."""
        names = {n for s in self.segments.get(layer_id, ()) for n in s.columns}
        return tuple(sorted(names - {"ids", "rows"}))

    def side(self, layer_id: int, name: str, ids: np.ndarray) -> np.ndarray | None:
        """Side column ``name`` of rows ``ids`` as the newest commit holding each row has it:
        ``[n, width]``, NaN where that commit has no such column or no commit holds the row;
        ``None`` if no segment of the layer has the column."""
        segments = self.segments.get(layer_id, ())
        having = [i for i, s in enumerate(segments) if name in s.columns]
        if not having:
            return None
        column = segments[having[0]].column(name)
        out = np.full((ids.size, column.shape[1]), np.nan, dtype=column.dtype)
        found, hits = self.find(layer_id, ids)
        if not hits:
            return out
        hit = np.flatnonzero(found >= 0)
        index = self.index(layer_id)
        if index.segment is None:
            out[hit] = column[found[hit]]
            return out
        seg, slot = index.segment[found[hit]], index.slot[found[hit]]
        for which in having:
            mine = seg == which
            if mine.any():
                out[hit[mine]] = segments[which].column(name)[slot[mine]]
        return out

    def written_ids(self, layer_id: int) -> np.ndarray:
        """Sorted distinct row ids the commits hold in a layer (empty if none)."""
        index = self.index(layer_id)
        return np.empty(0, dtype=np.int64) if index is None else index.ids

    def close(self) -> None:
        """Unmap the segments (a later read maps them again)."""
        with self._mutex:
            for segments in (self._segments or {}).values():
                for segment in segments:
                    segment.close()
            self._segments = None
            self._indexes.clear()


__all__ = ["Overlay", "LayerIndex", "build_index", "lookup"]
