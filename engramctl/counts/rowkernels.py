"""The numba kernels of :class:`~.rowtable.RowTable` (see :mod:`.rowtable` for the layout):
grouping a batch's pairs by segment, sorting a segment's pairs by row, inserting them (the
SpaceSaving step of :func:`~.spacesaving.space_saving_reference`), growing, reading out sorted,
loading and finding rows. A segment is a ``(homes + slack, 2 + K)`` uint64 array of records:
the row's offset in its segment + 1 (0: free), the total, K of ``token | count << 32``."""

from __future__ import annotations

import numpy as np

from .._numba import njit, prange
from .spacesaving import COUNT_MAX

LOW32 = np.uint64(0xFFFFFFFF)


@njit(cache=True, nogil=True, inline="always")
def home(local, fac, C):
    """The home slot of a row ``local`` rows into its segment: monotone in ``local``."""
    return min(np.int64(local * fac), C - 1)


@njit(cache=True, nogil=True, inline="always")
def add_record(rec, i, y):
    """Add continuation ``y`` to record ``i`` (the SpaceSaving step of
    :func:`~.spacesaving.space_saving_reference`)."""
    W = rec.shape[1]
    rec[i, 1] += np.uint64(1)
    uy = np.uint64(y) & LOW32  # the token's 32 bits (a negative int32 not widened)
    slot = -1
    low = 2
    lowc = np.uint64(COUNT_MAX) + np.uint64(1)
    for j in range(2, W):
        w = rec[i, j]
        c = w >> np.uint64(32)
        if c == 0 or (w & LOW32) == uy:
            slot = j
            break
        if c < lowc:  # the first of the smallest counts
            low = j
            lowc = c
    if slot < 0:  # full and y absent: y replaces the smallest count and inherits it
        slot = low
    c = rec[i, slot] >> np.uint64(32)
    if c < np.uint64(COUNT_MAX):
        c += np.uint64(1)
    rec[i, slot] = (c << np.uint64(32)) | uy


@njit(cache=True, nogil=True, inline="always")
def segment_of(r, firsts, guess):
    """The segment holding row ``r`` (``firsts``: each segment's first row, then the end),
    starting from ``guess``; -1 outside every segment."""
    S = firsts.shape[0] - 1
    if guess >= 0 and firsts[guess] <= r < firsts[guess + 1]:
        return guess
    if r < firsts[0] or r >= firsts[S]:
        return -1
    return np.searchsorted(firsts, r, side="right") - 1


@njit(cache=True, parallel=True)
def group_kernel(rows, keep, lo, hi, firsts, counts):
    """``counts[g, s]``: the kept pairs of column ``g`` whose row lies in segment ``s`` and in
    ``[lo, hi)``."""
    P, G = rows.shape
    for g in prange(G):
        guess = -1
        for p in range(P):
            if keep[p]:
                r = rows[p, g]
                if lo <= r < hi:
                    s = segment_of(r, firsts, guess)
                    if s >= 0:
                        counts[g, s] += 1
                        guess = s


@njit(cache=True, parallel=True)
def scatter_kernel(rows, targets, keep, lo, hi, firsts, offsets, keys, ys):
    """Copy the kept pairs out, grouped by segment, each group in column-by-column pair order
    (``offsets[g, s]``: where column ``g``'s pairs of segment ``s`` start); a key is the row's
    offset in its segment."""
    P, G = rows.shape
    for g in prange(G):
        guess = -1
        for p in range(P):
            if keep[p]:
                r = rows[p, g]
                if lo <= r < hi:
                    s = segment_of(r, firsts, guess)
                    if s >= 0:
                        guess = s
                        at = offsets[g, s]
                        keys[at] = r - firsts[s]
                        ys[at] = targets[p]
                        offsets[g, s] = at + 1


@njit(cache=True, nogil=True)
def sort_kernel(keys, ys, a, b, span, out_keys, out_ys):
    """``keys[a:b]`` (with ``ys``) sorted by key into ``out_keys[a:b]``/``out_ys``, stable: a
    counting pass on the top bits (about two keys a bucket, at most 2 ** 18 buckets), then an
    insertion sort of each bucket. Returns the number of distinct keys."""
    n = b - a
    if n == 0:
        return 0
    bits = 1
    while bits < 63 and (np.int64(1) << bits) < span:
        bits += 1
    want = 1
    while want < 18 and (np.int64(1) << want) < n // 2:
        want += 1
    shift = max(0, bits - want)
    nb = ((span - 1) >> shift) + 1
    start = np.zeros(nb + 1, np.int64)
    for j in range(a, b):
        start[(keys[j] >> shift) + 1] += 1
    start[0] = a
    for q in range(nb):
        start[q + 1] += start[q]
    for j in range(a, b):
        q = keys[j] >> shift
        out_keys[start[q]] = keys[j]
        out_ys[start[q]] = ys[j]
        start[q] += 1
    lo = a
    distinct = 0
    for q in range(nb):  # start[q] is now bucket q's end
        hi = start[q]
        for i in range(lo + 1, hi):  # stable insertion sort of a few
            k, y = out_keys[i], out_ys[i]
            m = i - 1
            while m >= lo and out_keys[m] > k:
                out_keys[m + 1] = out_keys[m]
                out_ys[m + 1] = out_ys[m]
                m -= 1
            out_keys[m + 1] = k
            out_ys[m + 1] = y
        for i in range(lo, hi):
            if i == a or out_keys[i] != out_keys[i - 1]:
                distinct += 1
        lo = hi
    return distinct


@njit(cache=True, nogil=True)
def new_rows_kernel(rec, C, fac, keys, a, b):
    """How many distinct keys of sorted ``keys[a:b]`` are not in the segment ``rec`` (``C``
    homes)."""
    new = 0
    for j in range(a, b):
        r = keys[j]
        if j > a and r == keys[j - 1]:
            continue
        i = home(r, fac, C)
        tag = np.uint64(r + 1)
        while i < rec.shape[0] and rec[i, 0] != 0 and rec[i, 0] != tag:
            i += 1
        if i == rec.shape[0] or rec[i, 0] == 0:
            new += 1
    return new


@njit(cache=True, nogil=True)
def insert_kernel(rec, C, fac, keys, ys, a, b, max_probe):
    """Apply the sorted pairs ``keys[a:b]``/``ys`` to the segment ``rec``, a row's pairs in
    their order to its record. Returns ``(pairs done, new rows)``: fewer than ``b - a`` pairs
    when a probe ran off the segment's end or walked past ``max_probe`` records to a free one
    (rows crowded in a stretch of the segment: the caller grows it and resumes)."""
    n = rec.shape[0]
    new = 0
    j = a
    while j < b:
        r = keys[j]
        at = home(r, fac, C)
        i = at
        tag = np.uint64(r + 1)
        while i < n and rec[i, 0] != 0 and rec[i, 0] != tag:
            i += 1
        if i == n:
            return j - a, new
        if rec[i, 0] == 0:
            if i - at > max_probe:
                return j - a, new
            rec[i, 0] = tag
            new += 1
        while j < b and keys[j] == r:
            add_record(rec, i, ys[j])
            j += 1
    return j - a, new


@njit(cache=True, nogil=True)
def rehash_kernel(rec, C2, fac_new, new):
    """The records of ``rec`` into ``new`` (``C2`` homes; in slot order: near-sequential, as
    homes are monotone in the row at every size). Returns False if ``new`` ran out."""
    n = new.shape[0]
    W = rec.shape[1]
    for j in range(rec.shape[0]):
        tag = rec[j, 0]
        if tag == 0:
            continue
        i = home(np.int64(tag) - 1, fac_new, C2)
        while i < n and new[i, 0] != 0:
            i += 1
        if i == n:
            return False
        for w in range(W):
            new[i, w] = rec[j, w]
    return True


@njit(cache=True, nogil=True)
def sorted_kernel(rec, first, keys, tokens, counts, totals, at):
    """The segment's occupied records, sorted by row (each run of adjacent records sorted in
    place by row: runs are short, and sorted already where direct-mapped), written as
    ``keys`` (row ids), ``tokens``, ``counts``, ``totals`` from position ``at``. Returns the
    position after the last."""
    n = rec.shape[0]
    K = tokens.shape[1]
    j = 0
    while j < n:
        if rec[j, 0] == 0:
            j += 1
            continue
        run = at
        while j < n and rec[j, 0] != 0:
            keys[at] = np.int64(rec[j, 0]) - 1 + first
            totals[at] = rec[j, 1]
            for k in range(K):
                w = rec[j, 2 + k]
                tokens[at, k] = np.int32(w & LOW32)
                counts[at, k] = np.uint32(w >> np.uint64(32))
            m = at  # insertion sort of the run so far (each record moved whole)
            while m > run and keys[m - 1] > keys[m]:
                keys[m - 1], keys[m] = keys[m], keys[m - 1]
                totals[m - 1], totals[m] = totals[m], totals[m - 1]
                for k in range(K):
                    tokens[m - 1, k], tokens[m, k] = tokens[m, k], tokens[m - 1, k]
                    counts[m - 1, k], counts[m, k] = counts[m, k], counts[m - 1, k]
                m -= 1
            at += 1
            j += 1
    return at


@njit(cache=True, nogil=True)
def load_kernel(rec, C, fac, first, keys, tokens, counts, totals, a, b):
    """Summaries read back (sorted by row id, unique) into the empty segment ``rec``. Returns
    1, 0 when ``rec`` ran out, -1 at a row id not above the one before."""
    W = rec.shape[1]
    at = 0
    for j in range(a, b):
        if j > a and keys[j] <= keys[j - 1]:
            return -1
        r = keys[j] - first
        i = max(home(r, fac, C), at)  # sorted keys: the run from its home is occupied
        if i >= rec.shape[0]:
            return 0
        rec[i, 0] = np.uint64(r + 1)
        rec[i, 1] = np.uint64(totals[j])
        for k in range(W - 2):
            rec[i, 2 + k] = (np.uint64(counts[j, k]) << np.uint64(32)) | (
                np.uint64(tokens[j, k]) & LOW32
            )
        at = i + 1
    return 1


@njit(cache=True, nogil=True)
def find_kernel(rec, C, fac, first, rows, out):
    """``out[j]``: the slot of row ``rows[j]`` (in this segment), ``-1`` where it is absent."""
    n = rec.shape[0]
    for j in range(rows.shape[0]):
        r = rows[j] - first
        out[j] = -1
        i = home(r, fac, C)
        tag = np.uint64(r + 1)
        while i < n and rec[i, 0] != 0:
            if rec[i, 0] == tag:
                out[j] = i
                break
            i += 1
