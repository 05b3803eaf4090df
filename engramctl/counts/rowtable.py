"""The SpaceSaving summaries of the rows that occur, in an open-addressing table in RAM.

:class:`RowTable` holds the same summaries as the dense kernel of :mod:`.spacesaving` (its
specification, held to it by tests) for the occupied rows only, so memory grows with occupied
rows, never with table rows.

Layout, for speed (a build makes one insert per pair and column, ~17 per corpus token at the
demo layout, each at a random row):

- **One record per slot**, ``2 + K`` 64-bit words: the row id + 1 (0: a free record, so a new
  table is zero pages the kernel touches as it fills them), the total, then K slots of
  ``token | count << 32``. An insert touches one record (one or two cache lines) instead of four
  arrays.
- **Shards** (a power of two): a row belongs to shard ``row & (S - 1)``; each thread owns its
  shards, so the result does not depend on threads.
- **Home slot = the hash's top 32 bits scaled to the shard's size** (any size, so the table is
  sized to its rows, not to the next power of two): slot order is hash order at every size, so
  a growth rehashes in one near-sequential sweep, and
- **pairs inserted in hash order**: each batch's (row, target) pairs are first copied out in
  the order of the top bits of their row's hash (a stable counting sort, per shard), so the
  kernel streams them and sweeps the table in ascending address order (prefetch-friendly, a TLB
  miss per page instead of per insert). A sweep in hash order fills the table's front first, so
  the table must be big enough for the whole batch *before* the sweep passes a stretch: the
  kernel projects the batch's new rows from the stretch it has swept (the hash is uniform) and
  stops to grow once the projection passes the load factor. The sort is stable on
  the column-by-column pair order, so every row still sees its continuations in corpus order:
  only rows' inserts are interleaved differently, and a row's summary depends on its own
  sequence only. The summaries, and :meth:`RowTable.extract`'s sorted output, are the ones
  inserting in corpus order gives (tested).
"""

from __future__ import annotations

import numpy as np

from .._numba import njit, prange
from .spacesaving import COUNT_MAX

EMPTY = -1  # the row id of a free record
LOAD = 0.7  # the table grows (doubles) before more of its records are taken
HASH_MULT = np.uint64(0x9E3779B97F4A7C15)
SORT_BITS = 16  # pairs are ordered by this many top bits of their hash (at most) before insert
LOW32 = np.uint64(0xFFFFFFFF)


@njit(cache=True, inline="always")
def _hash(key):
    return np.uint64(key) * HASH_MULT


@njit(cache=True, inline="always")
def _home(key, C):
    """The home slot of ``key`` in a shard of ``C`` records (< 2 ** 32): the top 32 bits of
    its hash scaled to ``[0, C)``, so slot order is hash order at every size."""
    return np.int64(((_hash(key) >> np.uint64(32)) * np.uint64(C)) >> np.uint64(32))


@njit(cache=True, inline="always")
def _next(i, C):
    i += 1
    return 0 if i == C else i


@njit(cache=True, inline="always")
def _add_record(rec, s, i, y):
    """Add continuation ``y`` to record ``i`` of shard ``s`` (the SpaceSaving step of
    :func:`~.spacesaving.space_saving_reference`)."""
    W = rec.shape[2]
    rec[s, i, 1] += np.uint64(1)
    uy = np.uint64(y)
    slot = -1
    low = 2
    lowc = np.uint64(COUNT_MAX) + np.uint64(1)
    for j in range(2, W):
        w = rec[s, i, j]
        c = w >> np.uint64(32)
        if c == 0 or (w & LOW32) == uy:
            slot = j
            break
        if c < lowc:  # the first of the smallest counts
            low = j
            lowc = c
    if slot < 0:  # full and y absent: y replaces the smallest count and inherits it
        slot = low
    c = rec[s, i, slot] >> np.uint64(32)
    if c < np.uint64(COUNT_MAX):
        c += np.uint64(1)
    rec[s, i, slot] = (c << np.uint64(32)) | uy


@njit(cache=True, parallel=True)
def _bucket_kernel(rows, keep, lo, hi, smask, bits, out):
    """``out[g * P + p]``: the sort bucket of pair p's row in column g (its shard, then the top
    ``bits`` of its hash), ``-1`` for a pair not kept or a row outside ``[lo, hi)``."""
    P, G = rows.shape
    shift = np.uint64(64 - bits)
    for g in prange(G):
        for p in range(P):
            r = rows[p, g]
            if keep[p] and r >= lo and r < hi:
                out[g * P + p] = ((r & smask) << bits) | np.int64(_hash(r) >> shift)
            else:
                out[g * P + p] = -1


@njit(cache=True, parallel=True)
def _scatter_kernel(rows, targets, bucket, buckets, keys, ys, starts, S, bits):
    """Copy the pairs out into ``keys``/``ys`` by bucket, stable (a counting sort, a thread a
    shard); shard ``s``'s run is ``[starts[s], starts[s + 1])``."""
    P, G = rows.shape
    fill = np.zeros(buckets + 1, np.int64)
    for f in range(P * G):
        if bucket[f] >= 0:
            fill[bucket[f] + 1] += 1
    for b in range(buckets):
        fill[b + 1] += fill[b]
    for s in range(S + 1):
        starts[s] = fill[s << bits] if s < S else fill[buckets]
    for s in prange(S):
        for g in range(G):
            for p in range(P):
                b = bucket[g * P + p]
                if b >= 0 and (b >> bits) == s:
                    keys[fill[b]] = rows[p, g]
                    ys[fill[b]] = targets[p]
                    fill[b] += 1


LOCAL_SAMPLE = 1024  # new rows a sweep sees before it projects the batch's new rows
MAX_PROBE = 4096  # records a probe walks at most before the table grows
HASH_SPACE = float(2**32)  # the stretch of hash space a run spans (its top 32 bits)


@njit(cache=True, parallel=True)
def _insert_kernel(keys, ys, starts, rec, used, limit, resume, swept, max_probe):
    """Insert the ordered pairs ``keys``/``ys``, shard by shard in parallel (linear probing
    from the home slot). A shard stops (``resume[s]``: in, where its run starts; out, where it
    stopped, its run's end when done) before its ``used`` passes ``limit``, when the new rows
    of the stretch it swept project past ``limit`` for the whole run (and the pairs left could
    take it past: a projection is no reason to stop where every pair's row fits), or when a
    probe walks ``max_probe`` records; ``swept[s]`` (out): the stretch of hash space it swept
    (in units of ``2 ** -32``), so the caller projects the run's new rows and grows the table
    to hold them before it goes on."""
    S, C, _ = rec.shape
    for s in prange(S):
        n = used[s]
        n0 = n
        j = resume[s]
        end = starts[s + 1]
        h0 = -1
        span = 1
        while j < end:
            r = keys[j]
            i = _home(r, C)
            h = np.int64(_hash(r) >> np.uint64(32))
            if h0 < 0:
                h0 = h
            span = max(span, h - h0 + 1)
            stop = False
            probes = 0
            while True:
                k = np.int64(rec[s, i, 0]) - 1
                if k == r:
                    break
                if k == EMPTY:
                    new = n - n0
                    if n >= limit or (
                        new >= LOCAL_SAMPLE
                        and n0 + new * HASH_SPACE / span > limit
                        and n + end - j > limit
                    ):
                        stop = True
                    else:
                        rec[s, i, 0] = np.uint64(r + 1)
                        n += 1
                    break
                i = _next(i, C)
                probes += 1
                if probes >= max_probe:
                    stop = True
                    break
            if stop:
                break
            _add_record(rec, s, i, ys[j])
            j += 1
        resume[s] = j
        used[s] = n
        swept[s] = span


@njit(cache=True, parallel=True)
def _rehash_kernel(rec, new):
    """Every shard's records of ``rec`` into the larger ``new`` (in slot order: near-sequential,
    as homes are the hash's top bits at every size)."""
    S, C, W = rec.shape
    C2 = new.shape[1]
    for s in prange(S):
        for j in range(C):
            r = np.int64(rec[s, j, 0]) - 1
            if r == EMPTY:
                continue
            i = _home(r, C2)
            while new[s, i, 0] != 0:
                i = _next(i, C2)
            for w in range(W):
                new[s, i, w] = rec[s, j, w]


@njit(cache=True, parallel=True)
def _load_kernel(keys, tokens, counts, totals, rec):
    """Summaries read back (sorted by row id, unique) into an empty table."""
    S, C, W = rec.shape
    smask = S - 1
    for s in prange(S):
        for j in range(keys.shape[0]):
            r = keys[j]
            if (r & smask) != s:
                continue
            i = _home(r, C)
            while rec[s, i, 0] != 0:
                i = _next(i, C)
            rec[s, i, 0] = np.uint64(r + 1)
            rec[s, i, 1] = np.uint64(totals[j])
            for k in range(W - 2):
                rec[s, i, 2 + k] = (np.uint64(counts[j, k]) << np.uint64(32)) | (
                    np.uint64(tokens[j, k]) & LOW32
                )


@njit(cache=True)
def _find_kernel(rec, rows, out):
    """``out[j]``: the flat slot of ``rows[j]`` (``s * C + i``), ``-1`` where it is absent."""
    S, C, _ = rec.shape
    for j in range(rows.shape[0]):
        r = rows[j]
        s = r & (S - 1)
        i = _home(r, C)
        out[j] = -1
        while rec[s, i, 0] != 0:
            if np.int64(rec[s, i, 0]) - 1 == r:
                out[j] = s * C + i
                break
            i = _next(i, C)


@njit(cache=True, parallel=True)
def _gather_kernel(flat, slots, keys, tokens, counts, totals):
    """``keys[i], tokens[i], counts[i], totals[i]`` of flat record ``slots[i]``."""
    for i in prange(slots.shape[0]):
        j = slots[i]
        keys[i] = np.int64(flat[j, 0]) - 1
        totals[i] = flat[j, 1]
        for k in range(tokens.shape[1]):
            w = flat[j, 2 + k]
            tokens[i, k] = np.int32(w & LOW32)
            counts[i, k] = np.uint32(w >> np.uint64(32))


@njit(cache=True)
def _histogram_kernel(keys, counts, starts, sign, hist, occupied):
    """For each row ``keys[j]``, its column (``starts``: each column's first row, ascending):
    ``occupied[col] += sign`` and ``hist[col, min(count, 3)] += sign`` for each of its slots."""
    for j in range(keys.shape[0]):
        col = np.searchsorted(starts, keys[j], side="right") - 1
        occupied[col] += sign
        for k in range(counts.shape[1]):
            hist[col, min(np.int64(counts[j, k]), 3)] += sign


def add_histogram(keys, counts, starts, hist, occupied, sign: int = 1) -> None:
    """Add (``sign`` 1) or take away (-1) rows' counts of counts per column: ``hist`` (G, 4),
    slots with count 0, 1, 2, 3+; ``occupied`` (G,), rows (``starts``: each column's first
    row, ascending; the discounts read these)."""
    _histogram_kernel(np.ascontiguousarray(keys, np.int64), np.ascontiguousarray(counts),
                      np.ascontiguousarray(starts, np.int64), sign, hist, occupied)  # fmt: skip


class RowTable:
    """The SpaceSaving summaries of the rows that occur, in RAM (about 1.6-2.3 x ``16 + 8 K``
    bytes per occupied row), sharded over threads (``shards``, rounded down to a power of two);
    the same summaries as the dense kernel (see the module docstring)."""

    def __init__(self, top_k: int, shards: int = 0, capacity: int = 1 << 12, max_bytes: int = 0):
        import numba

        self.top_k = int(top_k)
        self.max_bytes = int(max_bytes)  # an estimated size past this is not reserved
        self.shards = 1 << (int(shards or numba.get_num_threads()).bit_length() - 1)  # 2^k
        self.used = np.zeros(self.shards, np.int64)
        self.rec = self._empty(-(-max(int(capacity), 64) // 64) * 64)

    def _empty(self, capacity: int) -> np.ndarray:
        return np.zeros((self.shards, capacity, 2 + self.top_k), np.uint64)  # all free

    @property
    def keys(self) -> np.ndarray:
        """The row ids (S, C), ``EMPTY`` where free (a copy)."""
        return self.rec[:, :, 0].view(np.int64) - 1

    @property
    def capacity(self) -> int:
        return int(self.rec.shape[1])

    @property
    def occupied(self) -> int:
        return int(self.used.sum())

    @property
    def nbytes(self) -> int:
        return int(self.rec.nbytes)

    def _grow(self, capacity: int = 0) -> None:
        """Rehash into ``capacity`` records a shard (default twice as many)."""
        new = self._empty(capacity or self.capacity * 2)
        _rehash_kernel(self.rec, new)
        self.rec = new

    def capacity_for(self, rows: int) -> int:
        """Records a shard needs to hold about ``rows`` occupied rows in all below the load
        factor (a multiple of 64; an estimate past ``max_bytes`` is cut to it)."""
        if self.max_bytes:
            rows = min(rows, self.max_bytes * LOAD / (16 + 8 * self.top_k))  # in all shards
        return -(-int(max(1.0, rows / self.shards / LOAD)) // 64) * 64

    def reserve(self, rows: int) -> None:
        """Grow at once to hold about ``rows`` occupied rows: one rehash instead of one per
        doubling. Given an estimate from below, the table ends no larger than doubling alone
        would make it."""
        capacity = self.capacity_for(rows)
        if capacity > self.capacity:
            self._grow(capacity)

    def add(self, rows, targets, keep=None, lo: int = 0, hi: int = 2**63 - 1,
            scale: float = 1.0) -> None:  # fmt: skip
        """Add ``targets[p]`` to each row ``rows[p, g]`` in ``[lo, hi)`` of each kept pair.

        ``scale``: when the table must grow during this batch, grow it for ``scale`` times the
        rows the batch is projected to end with (the rows later batches will bring: one rehash
        while the table is small instead of one per batch while it is large).
        """
        rows = np.ascontiguousarray(rows, dtype=np.int64)
        if rows.ndim == 1:
            rows = rows[:, None]
        targets = np.ascontiguousarray(targets, dtype=np.int64)
        keep = np.ones(rows.shape[0], bool) if keep is None else np.ascontiguousarray(keep)
        S, P, G = self.shards, rows.shape[0], rows.shape[1]
        bits = SORT_BITS
        bucket = np.empty(P * G, np.int64)
        _bucket_kernel(rows, keep, lo, hi, S - 1, bits, bucket)
        keys, ys = np.empty(P * G, np.int64), np.empty(P * G, np.int32)
        starts = np.zeros(S + 1, np.int64)
        _scatter_kernel(rows, targets, bucket, S << bits, keys, ys, starts, S, bits)
        del bucket
        resume, swept = starts[:-1].copy(), np.ones(S, np.int64)
        max_probe, grown = MAX_PROBE, False
        while True:
            before, at = self.used.copy(), resume.copy()
            _insert_kernel(keys, ys, starts, self.rec, self.used,
                           int(self.capacity * LOAD), resume, swept, max_probe)  # fmt: skip
            if (resume == starts[1:]).all():
                return
            if grown and (resume == at).all():
                # stuck after a growth: a probe walk no growth shortens (rows whose hashes share
                # their top 32 bits share a home at every size), so walk on without a limit
                max_probe = 2**62
                continue
            grown = True
            # each shard's new rows to come, projected from the stretch of homes it swept
            # (the hash is uniform), and at most one a pair left
            left = starts[1:] - resume
            projected = (self.used - before) * (HASH_SPACE / swept - 1)
            need = (self.used + np.minimum(left, projected * 1.15 + 64)) * max(1.0, scale)
            self._grow(
                max(3 * self.capacity // 2, self.capacity_for(int(need.max()) * self.shards))
            )

    def load(self, keys, tokens, counts, totals) -> None:
        """Put summaries read back (:meth:`extract`'s arrays) into an empty table."""
        keys = np.ascontiguousarray(keys, dtype=np.int64)
        if self.occupied or any(np.shape(a)[1:] != (self.top_k,) for a in (tokens, counts)):
            raise ValueError(f"load() takes (N, {self.top_k}) summaries into an empty table")
        shard = keys & (self.shards - 1)
        per = np.bincount(shard, minlength=self.shards)
        need = int(per.max() / LOAD) + 1
        capacity = self.capacity
        while capacity < need:
            capacity *= 2
        if capacity != self.capacity:
            self.rec = self._empty(capacity)
        _load_kernel(keys, np.ascontiguousarray(tokens), np.ascontiguousarray(counts),
                     np.ascontiguousarray(totals), self.rec)  # fmt: skip
        self.used[:] = per

    def flat(self) -> np.ndarray:
        """The records as one (S * C, 2 + K) array (a view)."""
        return self.rec.reshape(-1, self.rec.shape[2])

    def gather(self, slots) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """``(row ids, tokens, counts, totals)`` of flat records ``slots``."""
        slots = np.ascontiguousarray(slots, dtype=np.int64)
        n, K = slots.shape[0], self.top_k
        out = (np.empty(n, np.int64), np.empty((n, K), np.int32), np.empty((n, K), np.uint32),
               np.empty(n, np.uint64))  # fmt: skip
        _gather_kernel(self.flat(), slots, *out)
        return out

    def extract(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """``(row ids, tokens, counts, totals)`` of the occupied rows, sorted by row id."""
        return self.gather(sorted_slots(self))

    def find(self, rows) -> np.ndarray:
        """Flat slots (``-1``: absent) of ``rows``."""
        rows = np.ascontiguousarray(rows, dtype=np.int64)
        out = np.empty(rows.shape[0], np.int64)
        _find_kernel(self.rec, rows, out)
        return out

    def slots_of(self, rows) -> np.ndarray:
        """The slots holding any of ``rows`` (any shape, repeats welcome), in row-id order: a
        mark per slot instead of a sort of ``rows``."""
        found = self.find(np.asarray(rows).reshape(-1))
        mark = np.zeros(self.flat().shape[0], dtype=bool)
        mark[found[found >= 0]] = True
        slots = np.flatnonzero(mark)
        return slots[np.argsort(self.flat()[slots, 0])]


@njit(cache=True)
def _sorted_slots_kernel(flat, shift, buckets):
    """The occupied records of ``flat`` (row ids unique) in row-id order: a count per radix
    bucket ``row >> shift``, a scatter, then each small bucket sorted in place."""
    start = np.zeros(buckets + 1, np.int64)
    n = flat.shape[0]
    for j in range(n):
        if flat[j, 0] != 0:
            start[((np.int64(flat[j, 0]) - 1) >> shift) + 1] += 1
    for b in range(buckets):
        start[b + 1] += start[b]
    order = np.empty(start[buckets], np.int64)
    key = np.empty(start[buckets], np.int64)
    fill = start[:-1].copy()
    for j in range(n):
        if flat[j, 0] != 0:
            r = np.int64(flat[j, 0]) - 1
            b = r >> shift
            order[fill[b]] = j
            key[fill[b]] = r
            fill[b] += 1
    for b in range(buckets):
        lo, hi = start[b], start[b + 1]
        if hi - lo > 32:  # a dense stretch of ids
            pick = np.argsort(key[lo:hi])
            order[lo:hi] = order[lo:hi][pick]
            continue
        for i in range(lo + 1, hi):  # insertion sort of a few
            slot = order[i]
            k = key[i]
            m = i - 1
            while m >= lo and key[m] > k:
                order[m + 1] = order[m]
                key[m + 1] = key[m]
                m -= 1
            order[m + 1] = slot
            key[m + 1] = k
    return order


def sorted_slots(table: RowTable) -> np.ndarray:
    """Flat slots of the table's occupied rows, sorted by row id (a radix pass, about two
    rows a bucket; the same order as ``argsort`` of the keys, which are unique)."""
    flat = table.flat()
    occupied = max(1, table.occupied)
    top = int(flat[:, 0].max()) if table.occupied else 1  # the largest row id + 1
    shift = max(0, (top // max(1, occupied // 2)).bit_length() - 1)
    return _sorted_slots_kernel(flat, np.int64(shift), (top >> shift) + 1)
