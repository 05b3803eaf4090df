"""Belady's optimum (MIN): the most hits any cache of ``C`` rows can get on a trace.

On a miss with a full cache, MIN evicts the cached row whose next use is farthest in the future;
no policy that must hold the row it reads gets more hits. The cache starts, after the warm-up,
holding the ``C`` warm-up rows used soonest afterwards (the best state any policy could have built
from the warm-up), so the figure bounds every policy scored on the same accesses.

Unlike LRU, MIN has no cheap all-sizes pass here: each size is one simulation, O(n log C) with an
indexed max-heap of next-use times, so it takes about as long as the LRU pass per size asked.
:func:`opt_hits_spilled` runs the same simulation over a trace spilled to disk, reading it in
chunks: RAM O(distinct rows + chunk) (the plan's path); :func:`opt_hits` holds the trace.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np

from .._numba import njit
from ..errors import EngramError


@njit(cache=True)
def next_use_kernel(ids, base, upcoming, out):
    """``out[i]``: position of the next access to ``ids[i]`` (``base + i`` is its own position),
    from ``upcoming`` (each row's first use after the chunk; updated). Chunks go last to first."""
    for i in range(ids.shape[0] - 1, -1, -1):
        out[i] = upcoming[ids[i]]
        upcoming[ids[i]] = base + i


@njit(cache=True)
def warm_upcoming_kernel(ids, next_use, upcoming):
    """``upcoming[row]``: the next use of the row's last access in the chunk (warm-up chunks)."""
    for i in range(ids.shape[0]):
        upcoming[ids[i]] = next_use[i]


@njit(cache=True)
def _place(keys, rows, where, at, key, row):
    keys[at] = key
    rows[at] = row
    where[row] = at


@njit(cache=True)
def _sift_up(keys, rows, where, at, key, row):
    """Put (key, row) at ``at`` and move it towards the root of the max-heap."""
    while at > 0:
        parent = (at - 1) >> 1
        if keys[parent] >= key:
            break
        _place(keys, rows, where, at, keys[parent], rows[parent])
        at = parent
    _place(keys, rows, where, at, key, row)


@njit(cache=True)
def _sift_down(keys, rows, where, at, size, key, row):
    """Put (key, row) at ``at`` and move it towards the leaves of the max-heap."""
    while True:
        child = 2 * at + 1
        if child >= size:
            break
        if child + 1 < size and keys[child + 1] > keys[child]:
            child += 1
        if keys[child] <= key:
            break
        _place(keys, rows, where, at, keys[child], rows[child])
        at = child
    _place(keys, rows, where, at, key, row)


@njit(cache=True)
def opt_start_kernel(warm_rows, warm_keys, where, keys, rows):
    """Fill the cache with the first rows of the warm start (soonest next use first); how many."""
    filled = min(keys.shape[0], warm_rows.shape[0])
    for j in range(filled):
        _sift_up(keys, rows, where, j, warm_keys[j], warm_rows[j])
    return filled


@njit(cache=True)
def opt_hits_kernel(ids, next_use, where, keys, rows, state):
    """MIN over a chunk of counted accesses; ``state``: [rows cached, hits] (updated).

    The cache is a max-heap of (next use, row) of ``len(keys)`` slots, keys stored beside the rows
    so that sifting reads consecutive memory; ``where`` finds a cached row's heap slot (-1: not
    cached).
    """
    size = keys.shape[0]
    filled, hits = state[0], state[1]
    for i in range(ids.shape[0]):
        row = ids[i]
        key = next_use[i]
        at = where[row]
        if at >= 0:
            hits += 1
            _sift_up(keys, rows, where, at, key, row)  # its next use only moves later
        elif filled < size:
            filled += 1
            _sift_up(keys, rows, where, filled - 1, key, row)
        else:
            where[rows[0]] = -1  # evict the row used farthest ahead
            _sift_down(keys, rows, where, 0, filled, key, row)
    state[0], state[1] = filled, hits


def warm_start(upcoming: np.ndarray, length: int) -> tuple[np.ndarray, np.ndarray]:
    """The warm-up rows used after the warm-up, soonest first, and those first uses.

    ``upcoming[row]``: the row's first use at or after the warm-up (``length``: none).
    """
    candidates = np.flatnonzero(upcoming < length)
    order = np.argsort(upcoming[candidates], kind="mergesort")
    return candidates[order], upcoming[candidates[order]]


def _check_size(size, n_distinct: int) -> int:
    if int(size) < 1:
        raise EngramError(f"cache sizes must be at least 1, got {size}")
    return min(int(size), max(1, n_distinct))


def simulate_opt(chunks, n_distinct: int, size: int, start) -> int:
    """MIN's hits with ``size`` rows over ``chunks()`` (an iterable of (ids, next uses) of the
    counted accesses), warm-started from ``start`` (:func:`warm_start`)."""
    where = np.full(n_distinct, -1, dtype=np.int64)
    keys = np.empty(size, dtype=np.int64)
    rows = np.empty(size, dtype=np.int64)
    state = np.zeros(2, dtype=np.int64)
    state[0] = opt_start_kernel(start[0], start[1], where, keys, rows)
    for ids, upcoming in chunks():
        opt_hits_kernel(ids, upcoming, where, keys, rows, state)
    return int(state[1])


def next_use(ids: np.ndarray, n_distinct: int) -> np.ndarray:
    """Position of each access's next access to the same row (``len(ids)``: never).

    >>> next_use(np.array([0, 1, 0]), 2).tolist()
    [2, 3, 3]
    """
    ids = np.ascontiguousarray(ids)
    out = np.empty(len(ids), dtype=np.int64)
    next_use_kernel(ids, 0, np.full(int(n_distinct), len(ids), dtype=np.int64), out)
    return out


def opt_hits(ids: np.ndarray, n_distinct: int, sizes, *, count_from: int = 0) -> np.ndarray:
    """MIN's hits on ``ids[count_from:]`` for each cache size (one simulation per size).

    >>> opt_hits(np.array([0, 1, 2, 0, 1]), 3, [1, 2]).tolist()
    [0, 1]
    """
    ids = np.ascontiguousarray(ids)
    if len(ids) and (int(ids.min()) < 0 or int(ids.max()) >= n_distinct):
        raise EngramError(f"trace ids must lie in [0, {n_distinct})")
    upcoming = next_use(ids, n_distinct)
    first = np.full(int(n_distinct), len(ids), dtype=np.int64)
    warm_upcoming_kernel(ids[:count_from], upcoming[:count_from], first)
    start = warm_start(first, len(ids))
    out = []
    for size in sizes:
        capped = _check_size(size, n_distinct)
        chunk = [(ids[count_from:], upcoming[count_from:])]
        out.append(simulate_opt(lambda c=chunk: c, int(n_distinct), capped, start))
    return np.asarray(out, dtype=np.int64)


def _read(path: Path, dtype, start: int, stop: int, chunk: int):
    """``[start, stop)`` of a flat binary array file, ``chunk`` entries at a time."""
    dtype = np.dtype(dtype)
    with open(path, "rb") as f:
        for lo in range(start, stop, chunk):
            f.seek(lo * dtype.itemsize)
            yield np.fromfile(f, dtype=dtype, count=min(chunk, stop - lo))


def opt_hits_spilled(
    spill, n_distinct: int, sizes, *, count_from: int = 0, chunk: int = 1 << 22
) -> np.ndarray:
    """:func:`opt_hits` of a trace spilled to disk (:class:`.stream.Spill`, closed), in RAM
    O(distinct rows + chunk): the next uses go to a file beside it (a backward pass), then each
    size reads both back in chunks."""
    length = spill.length
    upcoming_path = Path(str(spill.path) + ".next")
    upcoming = np.full(int(n_distinct), length, dtype=np.int64)
    with open(upcoming_path, "wb") as out:
        out.truncate(length * 8)
        for stop in range(length, 0, -chunk):
            lo = max(0, stop - chunk)
            ids = next(_read(spill.path, spill.dtype, lo, stop, chunk))
            found = np.empty(len(ids), dtype=np.int64)
            next_use_kernel(ids, lo, upcoming, found)
            out.seek(lo * 8)
            found.tofile(out)
    upcoming.fill(length)

    def pairs(lo, hi):
        return zip(
            _read(spill.path, spill.dtype, lo, hi, chunk),
            _read(upcoming_path, np.int64, lo, hi, chunk),
            strict=True,
        )

    for ids, found in pairs(0, count_from):
        warm_upcoming_kernel(ids, found, upcoming)
    start = warm_start(upcoming, length)
    del upcoming
    try:
        out = [
            simulate_opt(
                lambda: pairs(count_from, length),
                int(n_distinct),
                _check_size(s, n_distinct),
                start,
            )
            for s in sizes
        ]
    finally:
        upcoming_path.unlink(missing_ok=True)
    return np.asarray(out, dtype=np.int64)


def opt_hits_reference(ids, size: int, *, count_from: int = 0) -> int:
    """Brute force over every eviction choice and every warm start (tiny traces only)."""
    ids = [int(r) for r in ids]
    warm = sorted(set(ids[:count_from]))
    memo: dict = {}

    def best(i: int, cache: frozenset) -> int:
        if i == len(ids):
            return 0
        if (i, cache) in memo:
            return memo[(i, cache)]
        row = ids[i]
        if row in cache:
            result = 1 + best(i + 1, cache)
        elif len(cache) < size:
            result = best(i + 1, cache | {row})
        else:
            result = max(best(i + 1, (cache - {victim}) | {row}) for victim in cache)
        memo[(i, cache)] = result
        return result

    starts = [frozenset(c) for c in itertools.combinations(warm, min(size, len(warm)))]
    return max(best(count_from, start) for start in starts or [frozenset()])
