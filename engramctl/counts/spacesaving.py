"""SpaceSaving summaries of rows: the dense specification and the table of occupied rows.

A row keeps its top-K continuations with counts and its total. Adding ``y`` to a row: if ``y``
holds a slot or a slot is free (slots fill in order), that slot counts one more; otherwise ``y``
replaces the smallest count (the first of ties) and inherits it, so a kept count over-counts by
at most the row's smallest count (SpaceSaving's error bound, <= total/K). A row's summary
depends only on the sequence of continuations it saw, in order.

- :func:`space_saving_reference` / :func:`space_saving_kernel`: the dense form (an array of
  every table row), the plain specification the table below is held to (tests);
- :class:`RowTable`: the same summaries for the rows that occur only, in an open-addressing
  hash table keyed by row id (memory grows with occupied rows, never with table rows), read
  out sorted by row id (:meth:`RowTable.extract`).
"""

from __future__ import annotations

import numpy as np

from .._numba import njit, prange

COUNT_MAX = 2**32 - 1  # a slot's count saturates here (totals are 64-bit)
EMPTY = -1  # a free key of the hash table
LOAD = 0.7  # the table grows (doubles) before more of its keys are taken
HASH_MULT = np.uint64(0x9E3779B97F4A7C15)
# Occupied rows grow about as (pairs seen) ** HEAPS (Heaps' law; n-gram rows of text measure
# 0.7-0.9): growth estimates size the table from below, so it ends no larger than doubling
# alone would make it, in fewer rehashes
HEAPS = 0.7


def space_saving_reference(rows, targets, keep, tokens, counts, totals, occupied) -> None:
    """Plain-Python specification of :func:`space_saving_kernel` (one pair at a time)."""
    K = tokens.shape[1]
    for g in range(rows.shape[1]):
        for p in range(rows.shape[0]):
            if not keep[p]:
                continue
            r, y = rows[p, g], targets[p]
            occupied[g] += totals[r] == 0
            totals[r] += 1
            slot = None
            for s in range(K):
                if counts[r, s] == 0 or tokens[r, s] == y:
                    slot = s
                    break
            if slot is None:  # full and y absent: y replaces the smallest count (first of ties)
                slot = int(np.argmin(counts[r]))
                tokens[r, slot] = y  # and inherits its count, the SpaceSaving error bound
            elif counts[r, slot] == 0:
                tokens[r, slot] = y
            if counts[r, slot] < COUNT_MAX:
                counts[r, slot] += 1


@njit(cache=True, inline="always")
def _add(tokens, counts, totals, i, y):
    """Add continuation ``y`` to summary ``i`` (the SpaceSaving step)."""
    K = tokens.shape[1]
    totals[i] += 1
    slot = -1
    low = 0
    for s in range(K):
        c = counts[i, s]
        if c == 0 or tokens[i, s] == y:
            slot = s
            break
        if c < counts[i, low]:
            low = s
    if slot < 0:
        slot = low
        tokens[i, slot] = y
    elif counts[i, slot] == 0:
        tokens[i, slot] = y
    if counts[i, slot] < COUNT_MAX:
        counts[i, slot] += 1


@njit(cache=True, parallel=True)
def space_saving_kernel(rows, targets, keep, tokens, counts, totals, occupied):
    """Add ``targets[p]`` to row ``rows[p, g]`` for each kept pair p and column g (dense).

    rows (P, G) int64; targets (P,) int64; keep (P,) bool; tokens (R, K) int32, counts (R, K)
    uint32, totals (R,) uint64; occupied (G,) int64 += rows each column starts using. Columns
    own disjoint rows, so each thread takes whole columns and visits pairs in order: the
    result is the sequential one.
    """
    P, G = rows.shape
    for g in prange(G):
        for p in range(P):
            if not keep[p]:
                continue
            r = rows[p, g]
            if totals[r] == 0:
                occupied[g] += 1
            _add(tokens, counts, totals, r, targets[p])


@njit(cache=True, inline="always")
def _home(key, mask):
    return np.int64((np.uint64(key) * HASH_MULT) >> np.uint64(32)) & mask


@njit(cache=True, inline="always")
def _add_sharded(tokens, counts, totals, s, i, y):
    """:func:`_add` on summary ``i`` of shard ``s`` (no view per pair)."""
    K = tokens.shape[2]
    totals[s, i] += 1
    slot = -1
    low = 0
    for j in range(K):
        c = counts[s, i, j]
        if c == 0 or tokens[s, i, j] == y:
            slot = j
            break
        if c < counts[s, i, low]:
            low = j
    if slot < 0:
        slot = low
        tokens[s, i, slot] = y
    elif counts[s, i, slot] == 0:
        tokens[s, i, slot] = y
    if counts[s, i, slot] < COUNT_MAX:
        counts[s, i, slot] += 1


@njit(cache=True, parallel=True)
def _table_kernel(rows, targets, keep, lo, hi, shards, keys, tokens, counts, totals, used, limit,
                  resume):  # fmt: skip
    """Add the kept pairs whose row is in ``[lo, hi)`` to the table, shard by shard in parallel.

    The table is ``S`` equal shards (``keys`` (S, C): a power of two C each, ``EMPTY`` free;
    S a power of two); a row belongs to shard ``row & (S - 1)``, so each thread owns its
    shards' rows and visits pairs column by column, each in order: every row sees its
    continuations in corpus order, the result does not depend on threads. A shard stops before
    its ``used`` passes ``limit``; ``resume[s]`` (in: where it starts, out: where it stopped,
    ``G * P`` when done) lets the caller grow the table and go on.
    """
    P, G = rows.shape
    S, C = keys.shape
    mask = C - 1
    smask = S - 1
    for s in prange(S):
        n = used[s]
        start = resume[s]
        resume[s] = G * P
        g0 = start // P
        stopped = False
        for g in range(g0, G):
            for p in range(start - g0 * P if g == g0 else 0, P):
                if not keep[p]:
                    continue
                r = rows[p, g]
                if r < lo or r >= hi or (r & smask) != s:
                    continue
                i = _home(r, mask)
                while True:
                    k = keys[s, i]
                    if k == r:
                        break
                    if k == EMPTY:
                        if n >= limit:
                            stopped = True
                        else:
                            keys[s, i] = r
                            n += 1
                        break
                    i = (i + 1) & mask
                if stopped:
                    resume[s] = g * P + p
                    break
                _add_sharded(tokens, counts, totals, s, i, targets[p])
            if stopped:
                break
        used[s] = n


@njit(cache=True)
def _rehash(keys, tokens, counts, totals, new_keys, new_tokens, new_counts, new_totals):
    mask = new_keys.shape[0] - 1
    for j in range(keys.shape[0]):
        r = keys[j]
        if r == EMPTY:
            continue
        i = _home(r, mask)
        while new_keys[i] != EMPTY:
            i = (i + 1) & mask
        new_keys[i] = r
        for s in range(tokens.shape[1]):
            new_tokens[i, s] = tokens[j, s]
            new_counts[i, s] = counts[j, s]
        new_totals[i] = totals[j]


@njit(cache=True, parallel=True)
def _rehash_shards(keys, tokens, counts, totals, new_keys, new_tokens, new_counts, new_totals):
    """:func:`_rehash` of every shard of an (S, C) table into an (S, C') one, in parallel."""
    for s in prange(keys.shape[0]):
        _rehash(keys[s], tokens[s], counts[s], totals[s], new_keys[s], new_tokens[s],
                new_counts[s], new_totals[s])  # fmt: skip


class RowTable:
    """The SpaceSaving summaries of the rows that occur, in RAM (about 1.6-2.3 x ``16 + 8 K``
    bytes per occupied row), sharded over threads (``shards``, rounded down to a power of two);
    the same summaries as the dense kernel."""

    def __init__(self, top_k: int, shards: int = 0, capacity: int = 1 << 12, max_bytes: int = 0):
        import numba

        self.top_k = int(top_k)
        self.max_bytes = int(max_bytes)  # an estimated size past this is not reserved
        self.shards = 1 << (int(shards or numba.get_num_threads()).bit_length() - 1)  # 2^k
        self._allocate(max(64, 1 << int(np.ceil(np.log2(max(capacity, 64))))))

    def _allocate(self, capacity: int) -> None:
        S, K = self.shards, self.top_k
        self.keys = np.full((S, capacity), EMPTY, np.int64)
        self.tokens = np.zeros((S, capacity, K), np.int32)
        self.counts = np.zeros((S, capacity, K), np.uint32)
        self.totals = np.zeros((S, capacity), np.uint64)
        self.used = np.zeros(S, np.int64)

    @property
    def capacity(self) -> int:
        return int(self.keys.shape[1])

    @property
    def occupied(self) -> int:
        return int(self.used.sum())

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in (self.keys, self.tokens, self.counts, self.totals))

    def _grow(self, capacity: int = 0) -> None:
        """Rehash into ``capacity`` slots a shard (a power of two; default twice as many)."""
        old = (self.keys, self.tokens, self.counts, self.totals)
        used = self.used.copy()
        self._allocate(capacity or self.capacity * 2)
        self.used[:] = used
        _rehash_shards(*old, self.keys, self.tokens, self.counts, self.totals)

    def capacity_for(self, rows: int) -> int:
        """Slots a shard needs to hold about ``rows`` occupied rows in all below the load
        factor (a power of two; an estimate past ``max_bytes`` is cut to it)."""
        if self.max_bytes:
            rows = min(rows, self.max_bytes * LOAD / (16 + 8 * self.top_k) / self.shards)
        per_shard = max(1.0, rows / self.shards / LOAD)
        return 1 << max(0, int(np.ceil(np.log2(per_shard))))

    def reserve(self, rows: int) -> None:
        """Grow at once to hold about ``rows`` occupied rows: one rehash instead of one per
        doubling. Given an estimate from below, the table ends no larger than doubling alone
        would make it."""
        capacity = self.capacity_for(rows)
        if capacity > self.capacity:
            self._grow(capacity)

    def add(self, rows, targets, keep=None, lo: int = 0, hi: int = 2**63 - 1) -> None:
        """Add ``targets[p]`` to each row ``rows[p, g]`` in ``[lo, hi)`` of each kept pair."""
        rows = np.ascontiguousarray(rows, dtype=np.int64)
        if rows.ndim == 1:
            rows = rows[:, None]
        targets = np.ascontiguousarray(targets, dtype=np.int64)
        keep = np.ones(rows.shape[0], bool) if keep is None else np.ascontiguousarray(keep)
        resume = np.zeros(self.shards, np.int64)
        done = rows.shape[0] * rows.shape[1]
        while True:
            limit = int(self.capacity * LOAD)
            _table_kernel(rows, targets, keep, lo, hi, self.shards, self.keys, self.tokens,
                          self.counts, self.totals, self.used, limit, resume)  # fmt: skip
            if (resume == done).all():
                return
            seen = max(1, int(resume.min())) / done  # of the pairs, where the first shard stopped
            estimate = self.occupied * seen**-HEAPS  # (a guess from below, never a result)
            self._grow(max(2 * self.capacity, self.capacity_for(estimate)))

    def load(self, keys, tokens, counts, totals) -> None:
        """Put summaries read back (:meth:`extract`'s arrays) into an empty table."""
        keys = np.asarray(keys, dtype=np.int64)
        shard = keys % self.shards
        need = int(np.bincount(shard, minlength=self.shards).max() / LOAD) + 1
        while self.capacity < need:
            self._allocate(self.capacity * 2)
        for s in range(self.shards):
            own = np.flatnonzero(shard == s)
            src = (np.asarray(keys)[own], np.asarray(tokens)[own], np.asarray(counts)[own],
                   np.asarray(totals)[own])  # fmt: skip
            _rehash(*src, self.keys[s], self.tokens[s], self.counts[s], self.totals[s])
            self.used[s] = len(own)

    def extract(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """``(row ids, tokens, counts, totals)`` of the occupied rows, sorted by row id."""
        flat = self.keys.reshape(-1)
        order = sorted_slots(self)
        K = self.top_k
        return (flat[order], self.tokens.reshape(-1, K)[order],
                self.counts.reshape(-1, K)[order], self.totals.reshape(-1)[order])  # fmt: skip


@njit(cache=True)
def _find(keys, rows, out):
    """``out[j]``: the slot of ``rows[j]`` in the (S, C) table, ``-1`` where it is absent."""
    S, C = keys.shape
    mask = C - 1
    for j in range(rows.shape[0]):
        r = rows[j]
        s = r % S
        i = _home(r, mask)
        out[j] = -1
        while keys[s, i] != EMPTY:
            if keys[s, i] == r:
                out[j] = s * C + i
                break
            i = (i + 1) & mask


@njit(cache=True)
def _column_histogram(keys, counts, starts, hist, occupied):
    """For each occupied row, its column (``starts``: each column's first row, ascending):
    ``occupied[col] += 1`` and ``hist[col, min(count, 3)] += 1`` for each slot."""
    K = counts.shape[1]
    for j in range(keys.shape[0]):
        r = keys[j]
        if r == EMPTY:
            continue
        col = np.searchsorted(starts, r, side="right") - 1
        occupied[col] += 1
        for s in range(K):
            hist[col, min(np.int64(counts[j, s]), 3)] += 1


def table_find(table: RowTable, rows) -> np.ndarray:
    """Flat slots (``-1``: absent) of ``rows`` in ``table``."""
    rows = np.ascontiguousarray(rows, dtype=np.int64)
    out = np.empty(rows.shape[0], np.int64)
    _find(table.keys, rows, out)
    return out


def table_slots(table: RowTable, rows) -> np.ndarray:
    """The table's slots holding any of ``rows`` (any shape, repeats welcome), in row-id order:
    a mark per slot instead of a sort of ``rows``."""
    found = table_find(table, np.asarray(rows).reshape(-1))
    mark = np.zeros(table.keys.size, dtype=bool)
    mark[found[found >= 0]] = True
    slots = np.flatnonzero(mark)
    return slots[np.argsort(table.keys.reshape(-1)[slots])]


def table_histogram(table: RowTable, starts, hist, occupied) -> None:
    """Add the table's counts of counts per column (see :func:`_column_histogram`)."""
    _column_histogram(table.keys.reshape(-1), table.counts.reshape(-1, table.top_k),
                      np.ascontiguousarray(starts, np.int64), hist, occupied)  # fmt: skip


@njit(cache=True)
def _sorted_slots_kernel(keys, shift, buckets):
    """The occupied slots of ``keys`` (flat, ``EMPTY`` free, unique) in row-id order: a count
    per radix bucket ``key >> shift``, a scatter, then each small bucket sorted in place."""
    start = np.zeros(buckets + 1, np.int64)
    for j in range(keys.shape[0]):
        if keys[j] != EMPTY:
            start[(keys[j] >> shift) + 1] += 1
    for b in range(buckets):
        start[b + 1] += start[b]
    order = np.empty(start[buckets], np.int64)
    fill = start[:-1].copy()
    for j in range(keys.shape[0]):
        if keys[j] != EMPTY:
            b = keys[j] >> shift
            order[fill[b]] = j
            fill[b] += 1
    for b in range(buckets):
        lo, hi = start[b], start[b + 1]
        if hi - lo > 32:  # a dense stretch of ids
            part = order[lo:hi].copy()
            order[lo:hi] = part[np.argsort(keys[part])]
            continue
        for i in range(lo + 1, hi):  # insertion sort of a few
            slot = order[i]
            key = keys[slot]
            k = i - 1
            while k >= lo and keys[order[k]] > key:
                order[k + 1] = order[k]
                k -= 1
            order[k + 1] = slot
    return order


def sorted_slots(table: RowTable) -> np.ndarray:
    """Flat slots of the table's occupied rows, sorted by row id (a radix pass, about two
    rows a bucket; the same order as ``argsort`` of the keys, which are unique)."""
    keys = table.keys.reshape(-1)
    occupied = max(1, table.occupied)
    top = int(keys.max()) + 1 if table.occupied else 1
    shift = max(0, (top // max(1, occupied // 2)).bit_length() - 1)
    return _sorted_slots_kernel(keys, np.int64(shift), (top >> shift) + 1)


@njit(cache=True, parallel=True)
def gather_rows(slots, keys, tokens, counts, totals, out_keys, out_tokens, out_counts,
                out_totals):  # fmt: skip
    """``out_*[i] = *[slots[i]]`` of the flat (slots, ...) summaries, in parallel."""
    for i in prange(slots.shape[0]):
        j = slots[i]
        out_keys[i] = keys[j]
        out_totals[i] = totals[j]
        for s in range(tokens.shape[1]):
            out_tokens[i, s] = tokens[j, s]
            out_counts[i, s] = counts[j, s]
