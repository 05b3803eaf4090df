"""The count memory's estimator: interpolated absolute discounting over context lengths.

Levels: ``0`` is the unigram (exact counts), ``k = 1..M`` the contexts of the last ``k``
tokens (``M`` = the layout's ``max_ngram``). Level 1 is keyed exactly by the canonical id of the
last token; levels ``k >= 2`` by the Engram rows of the order-``k`` n-gram (several heads, several
layers: count-min). For a level with context total ``T`` (0: no data), continuation counts
``c_y`` and discount ``D_k``::

    P_k(y) = max(c_y - D_k, 0) / T + (1 - sum_z max(c_z - D_k, 0) / T) * P_{k-1}(y)   (T > 0)
    P_k(y) = P_{k-1}(y)                                                               (T = 0)
    P_0(y) = max(c_y - D_0, 0) / N + D_0 * distinct / N / V

so every token has probability > 0 and each level sums to 1 (the dropped mass, discounted or
truncated by top-K, goes to the level below). ``c_y`` is the count-min over the level's rows of
the *guaranteed* count: a row whose K slots are all taken may have been truncated, and
SpaceSaving then over-counts each kept continuation by at most the row's smallest count, so that
floor is subtracted (rows with a free slot are exact). ``D_k = n1 / (n1 + 2 n2)`` (Ney's
estimate from the counts of counts), clipped to ``[0.05, 0.95]``.

:func:`level_probability_kernel` is the numba query of many positions; :func:`distribution`
the whole next-token distribution of one position (numpy, for ``generate``). The plain
reference estimator (:mod:`engramctl.counts.reference`) computes the same formula from exact
dicts.
"""

from __future__ import annotations

import numpy as np

from .._numba import njit, prange

DEFAULT_DISCOUNT = 0.75  # when a level has no counts of counts to estimate it from
DISCOUNT_RANGE = (0.05, 0.95)


def ney_discount(n1: int, n2: int) -> float:
    """``n1 / (n1 + 2 n2)`` clipped to :data:`DISCOUNT_RANGE`; 0.75 without data.

    >>> ney_discount(10, 5)
    0.5
    """
    if n1 + n2 == 0:
        return DEFAULT_DISCOUNT
    low, high = DISCOUNT_RANGE
    return float(min(high, max(low, n1 / (n1 + 2 * n2))))


def unigram_probabilities(counts: np.ndarray, discount: float) -> np.ndarray:
    """``P_0`` over the whole vocab from exact unigram counts (> 0 everywhere, sums to 1).

    >>> unigram_probabilities(np.array([3, 1, 0, 0]), 0.5).round(4).tolist()
    [0.6875, 0.1875, 0.0625, 0.0625]
    """
    counts = np.asarray(counts, dtype=np.float64)
    total, vocab = counts.sum(), counts.shape[0]
    if total <= 0:
        return np.full(vocab, 1.0 / vocab)
    distinct = float(np.count_nonzero(counts))
    return np.maximum(counts - discount, 0.0) / total + discount * distinct / total / vocab


@njit(cache=True)
def row_floor(counts, row):
    """What every kept count of ``row`` may over-count by: its smallest count when all K slots
    are taken (SpaceSaving's error bound), else 0 (the row was never truncated)."""
    K = counts.shape[1]
    if counts[row, K - 1] == 0:
        return np.int64(0)
    low = np.int64(counts[row, 0])
    for s in range(1, K):
        if np.int64(counts[row, s]) < low:
            low = np.int64(counts[row, s])
    return low


@njit(cache=True)
def _count_in_row(tokens, counts, row, y):
    """The guaranteed count of ``y`` in ``row``: its kept count less the row's floor (0 when it
    holds no slot). A true count is never below it."""
    K = tokens.shape[1]
    for s in range(K):
        c = counts[row, s]
        if c == 0:
            return np.int64(0)
        if tokens[row, s] == y:
            return np.int64(c) - row_floor(counts, row)
    return np.int64(0)


@njit(cache=True)
def _level_stats(rows_p, cols, ncols, tokens, counts, totals, y, discount):
    """(T, c_y, discounted sum, distinct) of one level at one position; count-min over cols."""
    total = totals[rows_p[cols[0]]]
    for i in range(1, ncols):
        t = totals[rows_p[cols[i]]]
        if t < total:
            total = t
    if total == 0:
        return 0, 0, 0.0, 0
    first = rows_p[cols[0]]
    c_y = np.int64(_count_in_row(tokens, counts, first, y))
    for i in range(1, ncols):
        c = np.int64(_count_in_row(tokens, counts, rows_p[cols[i]], y))
        if c < c_y:
            c_y = c
    kept = 0.0
    distinct = 0
    K = tokens.shape[1]
    floor = row_floor(counts, first)
    for s in range(K):  # a token with a count-min above 0 holds a slot in every row, the first too
        if counts[first, s] == 0:
            break
        z = tokens[first, s]
        cmin = np.int64(counts[first, s]) - floor
        for i in range(1, ncols):
            c = np.int64(_count_in_row(tokens, counts, rows_p[cols[i]], z))
            if c < cmin:
                cmin = c
        if cmin > 0:
            distinct += 1
            kept += max(cmin - discount, 0.0)
    return np.int64(total), c_y, kept, distinct


@njit(cache=True, parallel=True)
def level_probability_kernel(
    rows, targets, level_cols, level_ncols, tokens, counts, totals, p0, discounts, out
):
    """Probability of each target and its evidence, position by position.

    rows (P, G) int64 store rows of each position's contexts (column 0: the exact level 1);
    targets (P,) raw ids; level_cols (M, C) columns of each level k = 1..M, level_ncols (M,);
    tokens/counts (R, K), totals (R,) the store; p0 (V,) the unigram level; discounts (M+1,);
    out (P, 4) float64 <- probability, count at the longest level with data, its distinct
    continuations, that level (0: none).
    """
    P = rows.shape[0]
    M = level_cols.shape[0]
    for p in prange(P):
        y = targets[p]
        prob = p0[y]
        ev_total = 0.0
        ev_distinct = 0.0
        longest = 0.0
        for k in range(M):
            total, c_y, kept, distinct = _level_stats(
                rows[p], level_cols[k], level_ncols[k], tokens, counts, totals, y,
                discounts[k + 1],
            )  # fmt: skip
            if total == 0:
                continue
            prob = max(c_y - discounts[k + 1], 0.0) / total + (1.0 - kept / total) * prob
            ev_total = float(total)
            ev_distinct = float(distinct)
            longest = float(k + 1)
        out[p, 0] = prob
        out[p, 1] = ev_total
        out[p, 2] = ev_distinct
        out[p, 3] = longest


def distribution(
    rows_p: np.ndarray,
    level_cols: np.ndarray,
    level_ncols: np.ndarray,
    tokens: np.ndarray,
    counts: np.ndarray,
    totals: np.ndarray,
    p0: np.ndarray,
    discounts: np.ndarray,
) -> np.ndarray:
    """The whole next-token distribution ``(V,)`` of one position (``rows_p``: its G rows)."""
    prob = np.array(p0, dtype=np.float64, copy=True)
    for k in range(level_cols.shape[0]):
        cols = level_cols[k, : level_ncols[k]]
        rows = rows_p[cols]
        total = int(np.min(totals[rows]))
        if total == 0:
            continue
        guaranteed = []
        for row in rows:
            row_counts = np.asarray(counts[row]).astype(np.int64)
            floor = row_counts.min() if row_counts[-1] > 0 else 0
            guaranteed.append({int(t): int(c) - floor
                               for t, c in zip(np.asarray(tokens[row]), row_counts, strict=True)
                               if c > 0})  # fmt: skip
        cand = np.array(list(guaranteed[0]), dtype=np.int64)
        cmin = np.array([min(g.get(int(t), 0) for g in guaranteed) for t in cand], np.int64)
        d = discounts[k + 1]
        share = np.maximum(cmin - d, 0.0) / total
        prob *= 1.0 - share.sum()
        np.add.at(prob, cand, share)
    return prob
