"""Finding layout rows among a store's sorted row ids, through a radix directory.

A format-2 count memory stores its occupied rows only, ``row_ids`` ascending, the all-zero
sentinel row last; each query row must be located among them (``P x G`` of them per batch).
A binary search over the whole store is ~20 scattered reads a row. :class:`RowLocator` keeps a
directory built once, in one sequential pass over the ids: ``starts[b]`` is the first position
whose id is ``>= b << shift``, with about two ids per bucket (4 B of RAM per occupied row), so a
lookup reads two directory entries and binary-searches a bucket of a few ids (a dense stretch,
as the unigram column, only makes its buckets' searches a few steps longer).

:func:`locate_reference` (``np.searchsorted``) is the
specification it is held to (tests).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .._numba import njit, prange

IDS_PER_BUCKET = 2  # the directory's mean bucket size


def locate_reference(row_ids: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """numpy specification of :class:`RowLocator`: indices of ``rows`` in sorted ``row_ids``
    (the sentinel last), absent rows mapped to the last."""
    last = row_ids.shape[0] - 1
    idx = np.minimum(np.searchsorted(row_ids, rows), last)
    idx[np.asarray(row_ids[idx]) != rows] = last
    return idx


@njit(cache=True)
def _directory_kernel(ids, shift, starts):
    """``starts[b]``: the first position of sorted ``ids`` whose id is ``>= b << shift``."""
    j = 0
    n = ids.shape[0]
    for b in range(starts.shape[0]):
        bound = np.int64(b) << shift
        while j < n and ids[j] < bound:
            j += 1
        starts[b] = j


@njit(cache=True, parallel=True)
def _locate_kernel(ids, starts, shift, absent, rows, out):
    buckets = starts.shape[0] - 1
    for j in prange(rows.shape[0]):
        r = rows[j]
        out[j] = absent
        if r < 0:
            continue
        b = r >> shift
        if b >= buckets:
            continue
        lo, hi = starts[b], starts[b + 1]
        while lo < hi:
            mid = (lo + hi) >> 1
            if ids[mid] < r:
                lo = mid + 1
            else:
                hi = mid
        if lo < starts[b + 1] and ids[lo] == r:
            out[j] = lo


@dataclass(frozen=True)
class RowLocator:
    """Positions of layout rows in a store's sorted ``row_ids`` (the sentinel last).

    Attributes
    ----------
    row_ids : numpy.ndarray
        The store's row ids (int64, ascending, the sentinel row last; memory-mapped or in RAM).
    starts : numpy.ndarray
        The directory: ``starts[b]`` is the first position whose id is ``>= b << shift``.
    shift : int
        Bits of a row id below its bucket.
    """

    row_ids: np.ndarray
    starts: np.ndarray
    shift: int

    @classmethod
    def build(cls, row_ids) -> RowLocator:
        """The directory of ``row_ids`` (sorted int64, the sentinel last), in one pass."""
        row_ids = np.ascontiguousarray(row_ids, dtype=np.int64)
        if row_ids.ndim != 1 or row_ids.shape[0] < 1:
            raise ValueError("row_ids must be a 1-D array ending with the sentinel row")
        stored = row_ids[:-1]  # the sentinel is never searched: an absent row maps to it
        n = stored.shape[0]
        top = int(stored[-1]) + 1 if n else 1
        shift = max(0, (top // max(1, n // IDS_PER_BUCKET)).bit_length() - 1)
        starts = np.empty((top >> shift) + 2, dtype=np.int64)
        _directory_kernel(stored, np.int64(shift), starts)
        return cls(row_ids, starts, shift)

    @property
    def nbytes(self) -> int:
        """RAM of the directory (the ids aside)."""
        return int(self.starts.nbytes)

    def __call__(self, rows) -> np.ndarray:
        """Indices into the store of ``rows`` (any shape); an absent row maps to the last
        (all-zero) row. Equal to :func:`locate_reference`."""
        rows = np.asarray(rows, dtype=np.int64)
        flat = np.ascontiguousarray(rows).reshape(-1)
        out = np.empty(flat.shape[0], np.int64)
        absent = np.int64(self.row_ids.shape[0] - 1)
        _locate_kernel(self.row_ids, self.starts, np.int64(self.shift), absent, flat, out)
        return out.reshape(rows.shape)
