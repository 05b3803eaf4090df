"""Row gather kernels: copy scattered rows out of per-chunk arrays (memory maps) in parallel.

A layer is a table of chunk base addresses: chunk ``c`` is a C-contiguous ``[chunk_rows, W]``
array (a memory-mapped chunk file viewed as the widest unsigned word dividing a row) starting at
``bases[c]``, or ``0`` if it is not loaded. :func:`gather_rows` copies row ``r`` from chunk
``r // chunk_rows``; rows of chunks not loaded are reported for the caller to fill (lazy init
values, decoded chunks). Addresses rather than a numba typed list of arrays: fetching an array
from a typed list per row costs reference counting that halved the throughput.
The caller keeps the arrays alive while their addresses are in ``bases``.
:func:`gather_rows_reference` is the plain-numpy specification and test oracle.
"""

from __future__ import annotations

import sys

import numpy as np

from ..._numba import address_as_pointer, njit, prange
from ...errors import EngramError

carray = sys.modules["numba"].carray  # numba itself is imported (cache set up) by ._numba


CHUNK_UNKNOWN, CHUNK_LOADED, CHUNK_UNWRITTEN = 0, 1, 2  # a loaded chunk's state (per layer)


def word_dtype(row_bytes: int) -> np.dtype:
    """Widest unsigned integer dtype whose size divides ``row_bytes`` (rows copied word-wise).

    >>> word_dtype(264), word_dtype(130)
    (dtype('uint64'), dtype('uint16'))
    """
    for dtype in (np.uint64, np.uint32, np.uint16):
        if row_bytes % np.dtype(dtype).itemsize == 0:
            return np.dtype(dtype)
    return np.dtype(np.uint8)


def check_row_ids(row_ids, rows: int, *, what: str = "row id") -> np.ndarray:
    """Row ids as a flat C-contiguous int64 array, refusing any outside ``[0, rows)``.

    The error names the first bad id and its position.
    """
    ids = np.asarray(row_ids)
    if ids.dtype.kind not in "iu":
        raise EngramError(f"{what}s must be integers, got dtype {ids.dtype}")
    ids = np.ascontiguousarray(ids.reshape(-1), dtype=np.int64)
    if ids.size:
        bad = (ids < 0) | (ids >= rows)
        if bad.any():
            first = int(np.argmax(bad))
            raise EngramError(
                f"{what} {int(ids[first])} (position {first}) is out of range: the layer has "
                f"{rows} rows (0..{rows - 1})"
            )
    return ids


# ------------------------------------------------------------------------ specification
def gather_rows_reference(chunks: list, chunk_rows: int, row_ids: np.ndarray) -> np.ndarray:
    """Plain-numpy gather from a list of full chunk arrays (none missing) -> ``[n, words]``."""
    ids = np.asarray(row_ids, dtype=np.int64)
    if not len(ids):
        return np.empty((0, chunks[0].shape[1]), dtype=chunks[0].dtype)
    return np.concatenate(chunks)[ids] if len(chunks) > 1 else chunks[0][ids]


# ------------------------------------------------------------------------------- kernel


@njit(cache=True, inline="always")
def _carray(address, width, dtype):
    return carray(address_as_pointer(address), (width,), dtype)


@njit(cache=True, parallel=True)
def _gather_kernel(bases, chunk_rows, row_ids, out, missing):
    """bases (n_chunks,) int64 addresses of (chunk_rows, W) arrays of out's dtype, 0 = not
    loaded; row_ids (n,) int64; out (n, W); missing (n,) uint8 set to 1 where the chunk is not
    loaded. Returns the number of missing rows."""
    n, W = out.shape
    row_stride = W * out.itemsize
    n_missing = 0
    for i in prange(n):
        r = row_ids[i]
        c = r // chunk_rows
        base = bases[c]
        if base != 0:
            src = _carray(base + (r - c * chunk_rows) * row_stride, W, out.dtype)
            for j in range(W):
                out[i, j] = src[j]
            missing[i] = 0
        else:
            missing[i] = 1
            n_missing += 1
    return n_missing


def chunk_address(chunk: np.ndarray, chunk_rows: int, width: int, dtype) -> int:
    """Base address of a chunk array after checking it is a C-contiguous ``[chunk_rows, W]``."""
    if chunk.shape != (chunk_rows, width) or chunk.dtype != dtype or not chunk.flags.c_contiguous:
        raise EngramError(
            f"chunk arrays must be C-contiguous {np.dtype(dtype)} [{chunk_rows}, {width}], got "
            f"{chunk.dtype} {list(chunk.shape)}"
        )
    return int(chunk.ctypes.data)


def gather_rows(
    bases: np.ndarray, chunk_rows: int, row_ids: np.ndarray, out: np.ndarray
) -> np.ndarray:
    """Copy rows into ``out`` from loaded chunks; return the positions of rows left to fill.

    Parameters
    ----------
    bases : ndarray of int64, ``(n_chunks,)``
        Address of each loaded chunk array (from :func:`chunk_address`, so of ``out``'s dtype
        and width, C-contiguous ``[chunk_rows, W]``), ``0`` where a chunk is not loaded. The
        caller keeps the arrays alive.
    chunk_rows : int
        Rows per chunk.
    row_ids : ndarray of int64, ``(n,)``
        Rows to copy, already checked to be in ``[0, n_chunks * chunk_rows)``.
    out : ndarray ``(n, W)``
        C-contiguous destination.

    Returns
    -------
    ndarray of int64
        Positions ``i`` whose chunk is not loaded (``out[i]`` untouched).
    """
    if out.ndim != 2 or not out.flags.c_contiguous or out.shape[0] != row_ids.shape[0]:
        raise EngramError(f"gather buffer must be C-contiguous [{row_ids.shape[0]}, W]")
    if bases.dtype != np.int64 or row_ids.dtype != np.int64:
        raise EngramError("gather needs int64 chunk addresses and int64 row ids")
    if row_ids.size and not 0 <= row_ids.min() <= row_ids.max() < bases.shape[0] * chunk_rows:
        raise EngramError("row ids must lie inside the chunks (check them with check_row_ids)")
    missing = np.empty(row_ids.shape[0], dtype=np.uint8)
    if _gather_kernel(bases, np.int64(chunk_rows), row_ids, out, missing):
        return np.flatnonzero(missing)
    return np.empty(0, dtype=np.int64)


@njit(cache=True)
def _copy_spans_kernel(staging, sources, out, positions):
    nbytes = out.shape[1]
    for i in range(sources.shape[0]):
        s = sources[i]
        p = positions[i]
        for j in range(nbytes):
            out[p, j] = staging[s + j]


def copy_spans(
    staging: np.ndarray, sources: np.ndarray, out: np.ndarray, positions: np.ndarray
) -> None:
    """``out[positions[i]] = staging[sources[i] : sources[i] + row_bytes]`` for every ``i``
    (``out`` a C-contiguous ``[n, row_bytes]`` uint8 view; serial: a few MB per call, cheaper
    than waking the thread pool). Reference: the same assignment in a Python loop."""
    if (
        out.dtype != np.uint8
        or out.ndim != 2
        or staging.dtype != np.uint8
        or sources.shape != positions.shape
    ):
        raise EngramError("copy_spans needs uint8 buffers and one source per position")
    if sources.size and (
        sources.min() < 0
        or sources.max() + out.shape[1] > staging.size
        or positions.min() < 0
        or positions.max() >= out.shape[0]
    ):
        raise EngramError("copy_spans positions must lie inside the buffers")
    _copy_spans_kernel(staging, sources.astype(np.int64), out, positions.astype(np.int64))
