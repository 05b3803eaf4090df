"""Collision figures of each hash head from exact n-gram counts, and ideal-hash expectations.

Per layer the tuple of each distinct n-gram gives ``mix_n`` exactly as
:func:`engramctl.hashing.hash_layer_reference` computes it; per head ``row = mix_n mod p``. Pass 1
counts distinct n-grams per row (an int32 array of ``p`` loads, reused head by head); pass 2
visits each occupied row once and clears a per-n-gram flag where the n-gram is alone in its row;
the flags ANDed over an order's heads give the all-heads colliding occurrence fraction. Both
passes are O(distinct). :func:`head_counts_reference` is the plain-numpy specification of
:func:`head_figures`.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np

from .._numba import njit
from .._prefetch import AHEAD, prefetch
from ..errors import EngramError
from ..hashing import FAST_MOD_MIN, floor_mod_fast
from .report import HeadStats, OrderStats


@njit(cache=True, nogil=True)
def _head_rows_kernel(mix, p, inv_p, fast, loads, cap, rows):
    """Pass 1 of a head: ``rows[e] = mix[e] mod p`` and ``loads[r] += 1``, saturating at ``cap``.

    loads (p,) must be zero; returns the max row load (``cap`` means "cap or more").
    """
    max_load = 0
    D = mix.shape[0]
    for e in range(-AHEAD, D):
        ahead = e + AHEAD  # the row AHEAD entries on: computed and prefetched now
        if ahead < D:
            m = mix[ahead]
            rows[ahead] = floor_mod_fast(m, np.float64(m), p, inv_p) if fast else m % p
            prefetch(loads, rows[ahead])
        if e < 0:
            continue
        r = rows[e]
        load = np.int64(loads[r])
        if load < cap:
            load += 1
            loads[r] = load
        max_load = max(max_load, load)
    return max_load


@njit(cache=True, nogil=True)
def _head_figures_kernel(rows, counts, loads, flags, entries_by_load, reset):
    """Pass 2 of a head, O(D), reading the loads only: ``entries_by_load[k]`` counts n-grams in
    rows of load k (a row of load k is seen k times); clears ``flags[e]`` for n-grams alone in
    their row; zeroes the rows again when ``reset``. Returns the colliding occurrences."""
    colliding_occurrences = 0
    D = rows.shape[0]
    for e in range(D):
        if e + AHEAD < D:
            prefetch(loads, rows[e + AHEAD])
        d = loads[rows[e]]
        entries_by_load[d] += 1
        if d >= 2:
            colliding_occurrences += counts[e]
        else:
            flags[e] = False
    if reset:
        for e in range(D):
            if e + AHEAD < D:
                prefetch(loads, rows[e + AHEAD])
            loads[rows[e]] = 0
    return colliding_occurrences


def head_figures(mix: np.ndarray, counts: np.ndarray, p: int, flags: np.ndarray, loads=None):
    """Every figure of one head of ``p`` rows (checks dtypes and shapes).

    Returns ``(figures, histogram)``: (occupied rows, collided rows, colliding distinct, colliding
    occurrences, max row load) and rows per load ``0..max``. Clears ``flags`` (D,) bool where an
    n-gram is alone in its row. ``loads`` is an all-zero uint8 scratch array of at least ``p``
    (one byte a row keeps it cache-friendly), left all zero again; a head with a row of 255 or
    more n-grams is redone with int64 loads.
    """
    if mix.dtype != np.int64 or counts.dtype != np.int64 or flags.dtype != np.bool_:
        raise EngramError("head_figures needs int64 mix and counts and bool flags")
    if not mix.shape == counts.shape == flags.shape:
        raise EngramError("mix, counts and flags must have the same shape")
    p = int(p)
    if loads is None or loads.shape[0] < p or loads.dtype != np.uint8:
        loads = np.zeros(p, dtype=np.uint8)
    loads = loads[:p]
    rows = np.empty(mix.shape[0], dtype=np.uint32 if p <= 2**32 else np.int64)
    args = (mix, np.int64(p), 1.0 / p, p >= FAST_MOD_MIN)
    max_load = _head_rows_kernel(*args, loads, 255, rows)
    if max_load == 255:  # saturated: count exactly in 8 bytes a row
        loads.fill(0)
        loads = np.zeros(p, dtype=np.int64)
        max_load = _head_rows_kernel(*args, loads, 2**62, rows)
    entries_by_load = np.zeros(max_load + 1, dtype=np.int64)
    # zeroing D scattered rows beats clearing all p bytes only while D is far below p
    reset = 32 * mix.shape[0] < p
    colliding_occurrences = _head_figures_kernel(rows, counts, loads, flags, entries_by_load, reset)
    if not reset:
        loads.fill(0)
    histogram = entries_by_load // np.maximum(np.arange(max_load + 1), 1)
    occupied = int(histogram[1:].sum())
    histogram[0] = p - occupied
    figures = (
        occupied,
        int(histogram[2:].sum()),
        int(entries_by_load[2:].sum()),
        int(colliding_occurrences),
        int(max_load),
    )
    return figures, tuple(histogram.tolist())


def head_counts_reference(mix: np.ndarray, counts: np.ndarray, p: int):
    """Plain-numpy specification of :func:`head_figures`.

    Returns ``(figures, row_loads, collided)``: the same 5-tuple, distinct n-grams per row
    ``(p,)``, and whether each n-gram shares its row ``(D,)``.
    """
    rows = np.asarray(mix, dtype=np.int64) % p
    loads = np.bincount(rows, minlength=p)
    shared = loads >= 2
    figures = (
        int((loads > 0).sum()),
        int(shared.sum()),
        int(loads[shared].sum()),
        int(np.asarray(counts)[shared[rows]].sum()),
        int(loads.max(initial=0)),
    )
    return figures, loads, shared[rows]


# ------------------------------------------------------------------------- finalization
def ngram_mix(grams: np.ndarray, multipliers: np.ndarray) -> np.ndarray:
    """``mix_n`` of each n-gram (``grams[:, k] = tok_k``) in wrapping int64, as in the spec."""
    grams = np.asarray(grams, dtype=np.int64)
    with np.errstate(over="ignore"):
        mix = grams[:, 0] * multipliers[0]
        for k in range(1, grams.shape[1]):
            mix = np.bitwise_xor(mix, grams[:, k] * multipliers[k])
    return mix


def order_stats(
    grams: np.ndarray,
    counts: np.ndarray,
    multipliers: np.ndarray,
    head_rows,
    *,
    order: int,
    histograms: bool = True,
    threads: int = 1,
    scratch: list | None = None,
) -> OrderStats:
    """Every figure of one (layer, order).

    ``grams``/``counts`` come from :meth:`NgramCounter.entries`; ``multipliers`` are the layer's,
    ``head_rows`` the prime row count of each of the order's heads. ``threads`` workers take the
    heads in turn, each with its own all-zero per-row load array (from ``scratch`` when given, one
    per thread; see :func:`head_figures`); the result does not depend on ``threads``.
    """
    mix = np.ascontiguousarray(ngram_mix(grams, multipliers))
    counts = np.ascontiguousarray(counts, dtype=np.int64)
    head_rows = [int(p) for p in head_rows]
    distinct, occurrences = int(mix.shape[0]), int(counts.sum())

    def work(worker: int):
        group = list(range(worker, len(head_rows), workers))
        flags = np.ones(mix.shape[0], dtype=np.bool_)
        loads = scratch[worker] if scratch is not None else None
        result = {}
        for h in group:
            figures, histogram = head_figures(mix, counts, head_rows[h], flags, loads)
            occupied, collided, col_distinct, col_occ, max_load = figures
            result[h] = HeadStats(
                rows=head_rows[h], occupied_rows=occupied, collided_rows=collided,
                colliding_distinct=col_distinct, colliding_occurrences=col_occ,
                max_row_load=max_load, distinct=distinct,
                occurrences=occurrences,
                row_load_histogram=histogram if histograms else (),
            )  # fmt: skip
        return flags, result

    workers = max(1, min(threads, len(head_rows)))
    if workers == 1:
        outputs = [work(0)]
    else:
        with ThreadPoolExecutor(workers) as pool:
            outputs = list(pool.map(work, range(workers)))
    all_collided = np.logical_and.reduce([flags for flags, _ in outputs])
    heads = {h: stats for _, result in outputs for h, stats in result.items()}
    return OrderStats(
        order=order,
        occurrences=occurrences,
        distinct=distinct,
        all_heads_colliding_occurrences=int(counts[all_collided].sum()) if heads else 0,
        heads=tuple(heads[h] for h in range(len(head_rows))),
    )
