"""Kernels of reading through commits: find each read id among a layer's written ids (binary
search) and copy the newest row over the base's, in parallel (numba).

:func:`lookup_reference` (``np.searchsorted``) is the plain-numpy specification the tests hold
the kernels to. Rows are copied as the widest unsigned word dividing a row's bytes.
"""

from __future__ import annotations

import numpy as np

from ..._numba import njit, prange


def lookup_reference(written: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """For each id, its position in the sorted ``written`` ids, or -1."""
    if not written.size:
        return np.full(ids.size, -1, dtype=np.int64)
    at = np.minimum(np.searchsorted(written, ids), written.size - 1)
    return np.where(written[at] == ids, at, -1).astype(np.int64)


def directory(written: np.ndarray) -> tuple[np.ndarray, int]:
    """A radix directory of sorted ``written`` ids: ``starts[b]`` is the first position whose id
    is ``>= b << shift``, with about four ids per bucket (2 bytes of RAM per written row), so a
    search is two reads and a few steps instead of ~20 scattered ones."""
    if not written.size:
        return np.zeros(2, dtype=np.int64), 0
    top = int(written[-1]) + 1
    shift = max(0, (top // max(1, written.size // 4)).bit_length() - 1)
    buckets = (top >> shift) + 2
    starts = np.searchsorted(written, np.arange(buckets, dtype=np.int64) << shift)
    return starts.astype(np.int64), shift


@njit(cache=True, parallel=True)
def _find_kernel(written, starts, shift, ids, found):
    m = written.shape[0]
    last = starts.shape[0] - 1
    hits = 0
    for i in prange(ids.shape[0]):
        q = ids[i]
        b = q >> shift
        if b >= last:
            found[i] = -1
            continue
        lo, hi = starts[b], starts[b + 1]
        while lo < hi:
            mid = (lo + hi) >> 1
            if written[mid] < q:
                lo = mid + 1
            else:
                hi = mid
        if lo < m and written[lo] == q:
            found[i] = lo
            hits += 1
        else:
            found[i] = -1
    return hits


@njit(cache=True, parallel=True)
def _copy_kernel(slot, segment, which, rows, out):
    """out[i] = rows[slot[i]] where slot[i] >= 0 and (which < 0 or segment[i] == which)."""
    width = out.shape[1]
    for i in prange(slot.shape[0]):
        s = slot[i]
        if s >= 0 and (which < 0 or segment[i] == which):
            for j in range(width):
                out[i, j] = rows[s, j]


def find(written: np.ndarray, ids: np.ndarray, radix=None) -> tuple[np.ndarray, int]:
    """Positions of ``ids`` in ``written`` (sorted int64; -1: not written) and the hit count;
    ``radix`` is :func:`directory` of ``written`` (made here if not given)."""
    found = np.empty(ids.size, dtype=np.int64)
    if not written.size:
        found.fill(-1)
        return found, 0
    starts, shift = radix if radix is not None else directory(written)
    return found, int(_find_kernel(np.asarray(written), starts, np.int64(shift), ids, found))


def _words(array: np.ndarray) -> np.ndarray:
    """A C-contiguous 2-D array viewed as rows of the widest word dividing a row's bytes."""
    row_bytes = array.shape[1] * array.itemsize
    for dtype in (np.uint64, np.uint32, np.uint16, np.uint8):
        size = np.dtype(dtype).itemsize
        if row_bytes % size == 0 and array.ctypes.data % size == 0:
            return array.view(np.uint8).reshape(array.shape[0], row_bytes).view(dtype)
    raise AssertionError("unreachable: uint8 divides every row")


def copy_rows(
    slot: np.ndarray, segment: np.ndarray | None, which: int, rows: np.ndarray, out: np.ndarray
) -> None:
    """``out[i] = rows[slot[i]]`` for the ``i`` with ``slot[i] >= 0`` (and ``segment[i] ==
    which`` when ``segment`` is given); ``rows`` and ``out`` C-contiguous, same row bytes."""
    tag = segment if segment is not None else np.empty(0, dtype=np.int32)
    _copy_kernel(
        slot, tag, np.int32(which if segment is not None else -1), _words(rows), _words(out)
    )


__all__ = ["find", "copy_rows", "directory", "lookup_reference"]
