"""The plan's policies fed batch by batch: memory O(distinct rows touched), never O(accesses).

The in-memory path (:func:`engramctl.cacheplan.trace.build_traces` with :mod:`.lru`) keeps a
layer's whole trace; a plan over millions of tokens would need gigabytes for it. Here every batch
updates running state and is dropped:

- :class:`RowIndex`: whole-layer row id -> dense id (first-seen order), an open-addressing hash
  map sized by the distinct rows (dense ids index every per-row array below);
- :class:`StackDistances`: the LRU (access by access) or pager (batch-start ranks) stack-distance
  histogram. Last-use positions live in a window of positions (the Fenwick tree of stale marks of
  :mod:`.lru`); when the window fills, the live positions (one per distinct row) are renumbered
  ``0..live-1`` in order and the marks cleared, so the window is O(distinct), whatever the length;
- :class:`StaticRanks`: warm-up lookup counts per dense id, then a histogram of the counted
  accesses' static ranks;
- :class:`Spill`: OPT needs each access's next use, so the dense ids are appended to a file on
  disk and :mod:`.opt` reads it back in bounded chunks (a backward pass for the next uses, then one
  forward pass per size).

Each is checked against the in-memory result (tests/cacheplan/test_stream.py).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from .._numba import njit
from ..errors import EngramError
from ..rowcache.policy import PAGER, PagerConfig
from ..rowcache.static import member_mask
from .lru import mark, marked_through, new_marks

_EMPTY = -1
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIN_WINDOW = 1 << 16
_COLD = 1 << 62  # the pager's rank of a row never seen: deeper than any cache
_NONE = np.zeros(0, dtype=np.bool_)  # no static host set


def grown(array: np.ndarray, n: int, fill) -> np.ndarray:
    """``array`` with room for at least ``n`` entries (doubling), new ones set to ``fill``."""
    if len(array) >= n:
        return array
    out = np.full(max(n, 2 * len(array), 16), fill, dtype=array.dtype)
    out[: len(array)] = array
    return out


# ------------------------------------------------------------------------------ row index
@njit(cache=True)
def intern_kernel(keys, values, shift, rows, count, out):
    """Dense id of each of ``rows`` (new rows get ``count``, ``count + 1``, ...); the new count.

    ``keys``/``values``: a linear-probing table of ``2**(64 - shift)`` slots, ``-1`` empty; the
    caller keeps it at most half full.
    """
    mask = keys.shape[0] - 1
    for j in range(rows.shape[0]):
        row = rows[j]
        slot = np.int64((np.uint64(row) * _GOLDEN) >> np.uint64(shift))
        while True:
            key = keys[slot]
            if key == row:
                out[j] = values[slot]
                break
            if key == _EMPTY:
                keys[slot] = row
                values[slot] = count
                out[j] = count
                count += 1
                break
            slot = (slot + 1) & mask
    return count


class RowIndex:
    """Row id (non-negative int64) -> dense id (int32), in first-seen order.

    An open-addressing table at most half full: 24 to 48 bytes per distinct row.
    """

    def __init__(self) -> None:
        self.count = 0
        self._alloc(1 << 12)

    def _alloc(self, slots: int) -> None:
        self._keys = np.full(slots, _EMPTY, dtype=np.int64)
        self._values = np.zeros(slots, dtype=np.int32)
        self._shift = 64 - (slots.bit_length() - 1)

    def dense(self, rows: np.ndarray) -> np.ndarray:
        """Dense ids of ``rows`` (non-negative int64), assigning new ones to unseen rows."""
        rows = np.ascontiguousarray(rows, dtype=np.int64)
        need = 2 * (self.count + len(rows))
        if need >= 2**31:
            raise EngramError("more than 2**30 distinct rows in one layer: too many to plan")
        if need > len(self._keys):
            slots = len(self._keys)
            while slots < need:
                slots *= 2
            old = self.row_ids()
            self._alloc(slots)
            intern_kernel(self._keys, self._values, self._shift, old, 0, np.empty_like(old))
        out = np.empty(len(rows), dtype=np.int64)
        self.count = int(
            intern_kernel(self._keys, self._values, self._shift, rows, self.count, out)
        )
        return out

    def row_ids(self) -> np.ndarray:
        """``out[dense id]``: the row id (a scan of the table)."""
        used = self._keys != _EMPTY
        out = np.empty(self.count, dtype=np.int64)
        out[self._values[used]] = self._keys[used]
        return out


# ------------------------------------------------------------------------ stack distances
@njit(cache=True)
def distances_batch_kernel(
    ids, last, bits, tree, state, starts, counting, lru, pager, member, pager_set
):
    """One batch of :func:`.lru.lru_histogram_kernel` (into ``lru``) and
    :func:`.lru.pager_histogram_kernel` (into ``pager``; an empty array skips either): both mark
    the same stale positions, so they share the tree and the last uses. ``member`` (per access;
    empty: none) marks the accesses whose pager ranks also go into ``pager_set`` (a static host
    set's rows).

    ``state``: [position, stale, cold misses counted, smallest pager cache]; ``starts``: the
    window positions of the in-flight batches' starts and this batch's, oldest first (shifted on
    by one batch here).
    """
    start, stale = state[0], state[1]
    n = ids.shape[0]
    deepest = -1
    if pager.shape[0] > 0:  # ranks as the batch starts, before it updates the tree
        for i in range(n):
            p = last[ids[i]]
            if p < 0:
                distance = _COLD
            else:
                distance = (start - p - 1) - (stale - marked_through(bits, tree, p))
                if counting:
                    pager[distance] += 1
                    if member.shape[0] > 0 and member[i]:
                        pager_set[distance] += 1
            deepest = max(deepest, distance)
    for i in range(n):
        r = ids[i]
        p = last[r]
        if p < 0:
            state[2] += counting
        else:
            if lru.shape[0] > 0:
                distance = (start + i - p - 1) - (stale - marked_through(bits, tree, p))
                if counting:
                    lru[distance] += 1
            mark(bits, tree, p)
            stale += 1
        last[r] = start + i
    stop = start + n
    if pager.shape[0] > 0:
        first = starts[0]
        before = marked_through(bits, tree, first - 1) if first > 0 else 0
        window = (stop - first) - (stale - before)
        state[3] = max(state[3], min(window - 1, deepest) + 1)
    for k in range(starts.shape[0] - 1):
        starts[k] = starts[k + 1]
    starts[starts.shape[0] - 1] = stop
    state[0], state[1] = stop, stale


@njit(cache=True)
def compact_kernel(last, bits, tree, starts):
    """Renumber the live positions ``0..live-1`` in order: a position less the stale ones
    before it (the last uses in ``last``, and the batch starts in ``starts``)."""
    for r in range(last.shape[0]):
        p = last[r]
        if p > 0:
            last[r] = p - marked_through(bits, tree, p - 1)
    for k in range(starts.shape[0]):
        s = starts[k]
        if s > 0:
            starts[k] = s - marked_through(bits, tree, s - 1)


class StackDistances:
    """Stack-distance histograms fed batch by batch: ``lru`` gives :func:`.lru.lru_histogram`,
    ``pager`` :func:`.lru.pager_histogram` (either or both, from one pass).

    Memory: a last-use position and a histogram bin per distinct row and curve, and a window of
    positions of at most ``2 x (distinct rows + largest batch)`` (1 bit each plus 4 bytes per 64).
    """

    def __init__(
        self,
        *,
        lru: bool = True,
        pager: bool = True,
        min_window: int = _MIN_WINDOW,
        config: PagerConfig = PAGER,
    ):
        self.min_window = max(64, int(min_window))
        self.compactions = 0
        self._last = np.zeros(0, dtype=np.int64)
        self._lru = np.zeros(16 if lru else 0, dtype=np.int64)
        self._pager = np.zeros(16 if pager else 0, dtype=np.int64)
        self._pager_set = np.zeros(16 if pager else 0, dtype=np.int64)  # a static set's rows
        self._state = np.zeros(4, dtype=np.int64)  # position, stale, cold, smallest pager cache
        self._state[3] = 1
        self._starts = np.zeros(
            config.in_flight + 1, dtype=np.int64
        )  # the pager's batches in flight
        self.window = self.min_window
        self._bits, self._tree = new_marks(self.window)

    def add(self, dense: np.ndarray, n_distinct: int, *, counting: bool, member=None) -> None:
        """One batch's dense ids (``n_distinct``: rows seen so far, this batch's included);
        ``member``: which of them are in a static host set (their pager ranks are counted apart,
        :meth:`set_histogram`)."""
        self._last = grown(self._last, n_distinct, -1)
        if len(self._lru):
            self._lru = grown(self._lru, n_distinct, 0)
        if len(self._pager):
            self._pager = grown(self._pager, n_distinct, 0)
            self._pager_set = grown(self._pager_set, n_distinct, 0)
        member = _NONE if member is None else np.ascontiguousarray(member, dtype=np.bool_)
        if self._state[0] + len(dense) > self.window:
            self._compact(len(dense))
        distances_batch_kernel(
            dense, self._last, self._bits, self._tree, self._state, self._starts,
            int(counting), self._lru, self._pager, member, self._pager_set,
        )  # fmt: skip

    def _compact(self, incoming: int) -> None:
        compact_kernel(self._last, self._bits, self._tree, self._starts)
        self._state[0] -= self._state[1]  # the live positions: one per row seen
        self._state[1] = 0
        self.window = max(self.min_window, 2 * int(self._state[0] + incoming))
        self._bits, self._tree = new_marks(self.window)
        self.compactions += 1

    def histogram(self, n_distinct: int, *, pager: bool = False) -> np.ndarray:
        """``[n_distinct + 1]`` int64, as the in-memory functions give (last bin: cold misses)."""
        out = np.zeros(n_distinct + 1, dtype=np.int64)
        out[:n_distinct] = (self._pager if pager else self._lru)[:n_distinct]
        out[n_distinct] = self._state[2]
        return out

    def set_histogram(self, n_distinct: int) -> np.ndarray:
        """``[n_distinct]``: the pager ranks of the counted accesses marked ``member`` (a row
        seen for the first time has no rank: a miss of any cache, not counted here)."""
        return self._pager_set[:n_distinct].copy()

    @property
    def pager_min_rows(self) -> int:
        return int(self._state[3])


# ------------------------------------------------------------------------------- static
@njit(cache=True)
def rank_count_kernel(dense, rank, hist):
    """Count each access whose row has a static rank into ``hist[rank]``."""
    for j in range(dense.shape[0]):
        d = dense[j]
        if d < rank.shape[0] and rank[d] >= 0:
            hist[rank[d]] += 1


class StaticRanks:
    """The static cache fed batch by batch: warm-up lookups per dense id, then the counted
    accesses' ranks as a histogram (:mod:`.static`, without keeping the accesses)."""

    def __init__(self) -> None:
        self._warm = np.zeros(0, dtype=np.int64)
        self._rank: np.ndarray | None = None
        self._hist = np.zeros(0, dtype=np.int64)

    def warm(self, dense: np.ndarray, lookups: np.ndarray, n_distinct: int) -> None:
        """A warm-up batch: its distinct rows (dense ids, no repeats) and their lookups."""
        self._warm = grown(self._warm, n_distinct, 0)
        self._warm[dense] += lookups

    def count(self, dense: np.ndarray, index: RowIndex) -> None:
        """A counted batch's accesses (ranks the warm-up rows on the first call)."""
        self.rank(index)
        rank_count_kernel(dense, self._rank, self._hist)

    def rank(self, index: RowIndex) -> None:
        """Rank the warm-up rows (once, when the warm-up is over)."""
        if self._rank is None:
            seen = np.flatnonzero(self._warm > 0)
            order = np.lexsort((index.row_ids()[seen], -self._warm[seen]))
            self._rank = np.full(index.count, -1, dtype=np.int64)
            self._rank[seen[order]] = np.arange(len(seen))
            self._hist = np.zeros(len(seen), dtype=np.int64)
            self._warm = np.zeros(0, dtype=np.int64)

    def top_rows(self, index: RowIndex, n: int) -> np.ndarray:
        """The row ids of the ``n`` best-ranked warm-up rows, ascending (after :meth:`rank`)."""
        dense = np.flatnonzero((self._rank >= 0) & (self._rank < n))
        return np.sort(index.row_ids()[dense])

    def cumulative(self) -> np.ndarray:
        """``out[C]``: hits of a static cache of ``C`` rows, ``C`` in ``0..ranked rows``."""
        out = np.zeros(len(self._hist) + 1, dtype=np.int64)
        np.cumsum(self._hist, out=out[1:])
        return out


# -------------------------------------------------------------------------------- spill
class Spill:
    """A layer's dense ids appended to ``path`` (OPT reads them back in chunks)."""

    def __init__(self, path: Path, dtype) -> None:
        self.path = Path(path)
        self.dtype = np.dtype(dtype)
        self.length = 0
        self._file = open(self.path, "wb")  # noqa: SIM115 - closed by close()

    def add(self, dense: np.ndarray) -> None:
        dense.astype(self.dtype, copy=False).tofile(self._file)
        self.length += len(dense)

    def close(self) -> None:
        self._file.close()


# ---------------------------------------------------------------------------- one layer
class LayerStream:
    """Everything a layer's plan needs, fed batch by batch (:func:`stream_layers`)."""

    def __init__(
        self, layer: int, *, warmup: int, policies, spill: Path | None, id_dtype,
        static_rows=None, static_top: int = 0,
    ) -> None:  # fmt: skip
        self.layer = layer
        self.warmup = warmup
        self.index = RowIndex()
        self.batches = 0
        self.unique: list = []  # distinct rows per batch (O(batches))
        self.lookups: list = []  # positions x heads per batch
        self.counted_from = 0  # accesses before the first counted batch
        self.accesses = 0
        lru, pager = "lru" in policies, "pager" in policies
        self.stacks = StackDistances(lru=lru, pager=pager) if lru or pager else None
        ranked = "static" in policies or static_top > 0
        self.static = StaticRanks() if ranked and warmup > 0 else None
        # a static host set: given (--host-static), or the warm-up's top rows (--host-static-out)
        self.static_rows = static_rows
        self.static_top = int(static_top) if self.static is not None else 0
        self.static_accesses = 0  # counted accesses whose row is in the static host set
        self.spill = Spill(spill, id_dtype) if "opt" in policies and spill is not None else None
        self.seconds = {"stacks": 0.0, "static": 0.0, "spill": 0.0}  # time in each part

    @property
    def distinct(self) -> int:
        return self.index.count

    def add(self, rows: np.ndarray, counts: np.ndarray, lookups: int) -> None:
        """One batch: its distinct rows (ascending), their lookups, and its positions x heads."""
        counting = self.batches >= self.warmup
        if self.batches == self.warmup:
            self.counted_from = self.accesses
        dense = self.index.dense(rows)
        n = self.index.count
        t0 = time.perf_counter()
        member = None
        if counting and self.static_top and self.static_rows is None:  # the warm-up is over
            self.static.rank(self.index)
            self.static_rows = self.static.top_rows(self.index, self.static_top)
        if counting and self.static_rows is not None:
            member = member_mask(self.static_rows, rows)
            self.static_accesses += int(member.sum())
        if self.stacks is not None:
            self.stacks.add(dense, n, counting=counting, member=member)
        t1 = time.perf_counter()
        if self.static is not None:
            if counting:
                self.static.count(dense, self.index)
            else:
                self.static.warm(dense, counts, n)
        t2 = time.perf_counter()
        if self.spill is not None:
            self.spill.add(dense)
        t3 = time.perf_counter()
        for part, seconds in zip(self.seconds, (t1 - t0, t2 - t1, t3 - t2), strict=True):
            self.seconds[part] += seconds
        self.unique.append(len(rows))
        self.lookups.append(int(lookups))
        self.accesses += len(rows)
        self.batches += 1

    def close(self) -> None:
        if self.spill is not None:
            self.spill.close()


def stream_layers(
    workload, hasher, *, batch: int, layers, warmup: int, policies, spill_dir, table_rows,
    progress, static_rows=None, static_top=None,
) -> dict:  # fmt: skip
    """Hash the workload batch by batch into one :class:`LayerStream` per layer.

    ``spill_dir``: where OPT's traces go (None: no OPT); ``table_rows(layer)``: the layer's rows
    (the spill stores dense ids as int32 when they fit); ``static_rows`` (``{layer: sorted row
    ids}``) or ``static_top`` (``{layer: rows}``: the warm-up's top rows): a static host set
    whose rows' pager ranks are counted apart.
    """
    from .trace import batch_count, sorted_unique

    total = batch_count(workload, batch)
    layers = tuple(layers)
    streams = {}
    for layer in layers:
        spill = None if spill_dir is None else Path(spill_dir) / f"layer{layer}.ids"
        dtype = np.int32 if table_rows(layer) < 2**31 else np.int64
        streams[layer] = LayerStream(
            layer, warmup=warmup, policies=policies, spill=spill, id_dtype=dtype,
            static_rows=None if static_rows is None else static_rows[layer],
            static_top=0 if static_top is None else static_top[layer],
        )  # fmt: skip
    try:
        for k in range(total):
            sequences = workload.sequences[k * batch : (k + 1) * batch]
            hashed = hasher.hash(sequences, layers=layers, table_rows=True)  # {layer: (B, T, H)}
            for layer in layers:
                ids = hashed[layer].ravel()
                rows, counts = sorted_unique(ids)
                streams[layer].add(rows, counts, ids.size)
            if progress is not None:
                progress(k + 1, total)
    finally:
        for stream in streams.values():
            stream.close()
    return streams
