"""Kernels of reading through commits: find each read id among a layer's written ids (binary
search) and copy the newest row over the base's, in parallel (numba).

:func:`lookup_reference` (``np.searchsorted``) is the plain-numpy specification the tests hold
the kernels to, and :func:`merge_rows_reference` that of :func:`merge_rows`, the one pass that
puts a read together from the base's rows and any number of segments. Rows are copied as the
widest unsigned word dividing a row's bytes (and every buffer's address).
"""

from __future__ import annotations

import sys

import numpy as np

from ..._numba import address_as_pointer, njit, prange

carray = sys.modules["numba"].carray  # numba itself is imported (cache set up) by ._numba


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


@njit(cache=True, parallel=True)
def _merge_kernel(found, segment, slot, addresses, base_at, base_rows, out):
    """out[i] = base_rows[base_at[i]] where found[i] < 0, else the newest written row: row
    slot[found[i]] of the segment at addresses[segment[found[i]]] (segment/slot empty: one
    segment, row found[i]). One parallel pass (a pass per block of an in-place variant was
    slower on a loaded machine: every pass waits for all threads). Addresses rather than a
    typed list of arrays: fetching an array from a typed list per row costs reference
    counting (see ``table.sources._gather``)."""
    n, width = out.shape
    stride = width * out.itemsize
    many = segment.shape[0] > 0
    for i in prange(n):
        f = found[i]
        if f < 0:
            b = base_at[i]
            for j in range(width):
                out[i, j] = base_rows[b, j]
        else:
            if many:
                s = segment[f]
                r = slot[f]
            else:
                s = 0
                r = f
            src = carray(address_as_pointer(addresses[s] + r * stride), (width,), out.dtype)
            for j in range(width):
                out[i, j] = src[j]


def merge_rows_reference(
    found: np.ndarray,
    segment: np.ndarray | None,
    slot: np.ndarray | None,
    arrays: list,
    base_rows: np.ndarray,
    out: np.ndarray,
) -> np.ndarray:
    """Plain-numpy :func:`merge_rows`: ``base_rows`` in order where ``found < 0``, else row
    ``slot[found]`` of ``arrays[segment[found]]`` (``segment is None``: ``arrays[0][found]``)."""
    base = found < 0
    out[base] = base_rows[: int(base.sum())]
    for i in np.flatnonzero(~base):
        f = int(found[i])
        out[i] = arrays[0][f] if segment is None else arrays[int(segment[f])][int(slot[f])]
    return out


def _word_for(arrays: list, row_bytes: int) -> np.dtype:
    for dtype in (np.uint64, np.uint32, np.uint16):
        size = np.dtype(dtype).itemsize
        if row_bytes % size == 0 and all(a.ctypes.data % size == 0 for a in arrays):
            return np.dtype(dtype)
    return np.dtype(np.uint8)


def merge_rows(
    found: np.ndarray,
    segment: np.ndarray | None,
    slot: np.ndarray | None,
    arrays: list,
    base_rows: np.ndarray,
    out: np.ndarray,
) -> np.ndarray:
    """Put a read together in one parallel pass (:func:`merge_rows_reference` is the spec).

    Parameters
    ----------
    found : ndarray of int64, ``(n,)``
        Each read id's position in the layer's index (:func:`find`), -1 for the base's.
    segment, slot : ndarray or None
        The index's segment and slot of each written row; None when the layer has one segment
        (the row is ``arrays[0][found]``).
    arrays : list of ndarray
        The segments' C-contiguous ``[rows, w]`` row arrays, of ``out``'s dtype and width; kept
        alive by the caller for the call.
    base_rows : ndarray
        The base's rows of the ids with ``found < 0``, in order (``[0, w]`` if none).
    out : ndarray ``(n, w)``
        C-contiguous destination.
    """
    width = out.shape[1]
    every = [*arrays, base_rows, out]
    for a in every:
        if a.dtype != out.dtype or a.ndim != 2 or a.shape[1] != width or not a.flags.c_contiguous:
            raise ValueError("merge_rows needs C-contiguous rows of out's dtype and width")
    if found.shape != (out.shape[0],) or found.dtype != np.int64:
        raise ValueError("merge_rows needs one int64 position per row of out")
    base_at = np.cumsum(found < 0, dtype=np.int64) - 1
    if base_rows.shape[0] != (int(base_at[-1]) + 1 if base_at.size else 0):
        raise ValueError("merge_rows needs one base row per id no segment holds")
    word = _word_for(every, width * out.itemsize)

    def words(a):
        return a.view(np.uint8).reshape(a.shape[0], width * a.itemsize).view(word)

    addresses = np.array([a.ctypes.data for a in arrays], dtype=np.int64)
    empty = np.empty(0, dtype=np.int64)
    _merge_kernel(
        found,
        empty.astype(np.int32) if segment is None else np.ascontiguousarray(segment, np.int32),
        empty if slot is None else np.ascontiguousarray(slot, np.int64),
        addresses,
        base_at,
        words(base_rows),
        words(out),
    )
    return out


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


__all__ = [
    "find",
    "copy_rows",
    "directory",
    "lookup_reference",
    "merge_rows",
    "merge_rows_reference",
]
