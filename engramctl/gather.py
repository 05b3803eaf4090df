"""Row gather kernels: copy scattered rows out of per-chunk arrays (memory maps) in parallel.

A layer is a list of chunk arrays ``[chunk_rows, words]`` (memory-mapped chunk files viewed as
the widest unsigned word that divides a row) and a state byte per chunk (``1`` = its array holds
the chunk). :func:`gather_rows` copies row ``r`` from chunk ``r // chunk_rows``; rows of chunks
that are not loaded are flagged for the caller to fill (lazy init values, decoded chunks).
:func:`gather_rows_reference` is the plain-numpy specification and test oracle.
"""

from __future__ import annotations

import numpy as np

from ._numba import njit, prange
from .errors import EngramError

CHUNK_LOADED = 1


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
@njit(cache=True, parallel=True)
def _gather_kernel(chunks, state, chunk_rows, row_ids, out, missing):
    """chunks: typed list of (chunk_rows, W) arrays; state (n_chunks,) uint8; row_ids (n,)
    int64; out (n, W); missing (n,) uint8 set to 1 where the chunk is not loaded. Returns the
    number of missing rows."""
    n, W = out.shape
    n_missing = 0
    for i in prange(n):
        r = row_ids[i]
        c = r // chunk_rows
        if state[c] == 1:
            src = chunks[c]
            local = r - c * chunk_rows
            for j in range(W):
                out[i, j] = src[local, j]
            missing[i] = 0
        else:
            missing[i] = 1
            n_missing += 1
    return n_missing


def gather_rows(
    chunks, state: np.ndarray, chunk_rows: int, row_ids: np.ndarray, out: np.ndarray
) -> np.ndarray:
    """Copy rows into ``out`` from loaded chunks; return the positions of rows left to fill.

    Parameters
    ----------
    chunks : numba.typed.List of ndarray
        One ``[chunk_rows, W]`` array per chunk, all of ``out``'s dtype (a placeholder where
        ``state`` is not ``1``).
    state : ndarray of uint8, ``(n_chunks,)``
        ``1`` where ``chunks[c]`` holds chunk ``c``.
    chunk_rows : int
        Rows per chunk.
    row_ids : ndarray of int64, ``(n,)``
        Rows to copy, already checked to be in range.
    out : ndarray ``(n, W)``
        C-contiguous destination of the chunks' dtype.

    Returns
    -------
    ndarray of int64
        Positions ``i`` whose chunk is not loaded (``out[i]`` untouched).
    """
    if out.ndim != 2 or not out.flags.c_contiguous or out.shape[0] != row_ids.shape[0]:
        raise EngramError(f"gather buffer must be C-contiguous [{row_ids.shape[0]}, W]")
    if state.dtype != np.uint8 or row_ids.dtype != np.int64:
        raise EngramError("gather needs uint8 chunk states and int64 row ids")
    missing = np.empty(row_ids.shape[0], dtype=np.uint8)
    if _gather_kernel(chunks, state, np.int64(chunk_rows), row_ids, out, missing):
        return np.flatnonzero(missing)
    return np.empty(0, dtype=np.int64)
