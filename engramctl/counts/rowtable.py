"""The SpaceSaving summaries of the rows that occur, in open-addressing segments in RAM.

:class:`RowTable` holds the same summaries as the dense kernel of :mod:`.spacesaving` (its
specification, held to it by tests) for the occupied rows only, so memory grows with occupied
rows, never with table rows.

Layout, for speed (a build makes one insert per pair and column, 33 per corpus token at the
demo layout):

- **A segment per column** (a stretch of row ids: level 1, each counted layer's heads; the
  whole id space when no columns are given), each its own array, sized to its own rows and
  grown on its own; segments are independent, so they are filled on threads (a segment a
  task) and the result does not depend on threads.
- **One record per slot**, ``2 + K`` 64-bit words: the row's offset in its segment + 1 (0: a
  free record, so a new segment is zero pages), the total, then K slots of
  ``token | count << 32``. An insert touches one record.
- **Home slot monotone in the row id**: ``(row - first) * C / span``, so slot order is row
  order up to the short runs of linear probing (no wrap: a segment has :data:`SLACK` records
  past its last home). Columns' rows are hashes, uniform over the column, so homes spread
  evenly; level 1's canonical ids are dense, and a segment grown to its span is direct-mapped.
- **Pairs inserted in row order**: each batch's pairs are first grouped by segment (a stable
  counting pass), then each segment's sorted by row (a stable counting sort on the top bits,
  then an insertion sort of each small bucket), so the kernel applies a row's pairs one after
  another, in corpus order, to one record, sweeping the segment in ascending addresses. Before
  it sweeps, a segment is grown to hold the batch's new rows (counted exactly when they might
  not fit), so a sweep never overfills its front.
- **Read out sorted in one sequential sweep**: the occupied records in slot order, each run
  of adjacent records sorted by row (runs are short at the load factor; a direct-mapped run is
  sorted already). No radix pass and no random gather.

Every row sees its continuations in the column-by-column order of the pairs given (corpus
order in a build): the summaries, and :meth:`RowTable.extract`'s sorted output, are the ones
the dense specification gives (tested).
"""

from __future__ import annotations

import math
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from .._numba import njit
from .._system import return_freed_memory
from ..errors import EngramError
from .rowkernels import (
    LOW32,
    find_kernel,
    group_kernel,
    insert_kernel,
    load_kernel,
    new_rows_kernel,
    rehash_kernel,
    scatter_kernel,
    sort_kernel,
    sorted_kernel,
)

LOAD = 0.8  # a segment grows before more of its records are taken
SLACK = 64  # records past a segment's last home: a probe runs on into them, never wraps
MAX_PROBE = 256  # a new row this many records past its home grows the segment (rows crowded;
# more in a large segment: :func:`max_probe`)
CROWD_CAP = 16  # ... up to this many times the homes its rows need (then probes walk on)
MIN_GROWTH = 1.25  # a segment that grows takes at least this many times its homes
# a segment's rows grow about as (its pairs) ** e; before a segment has history, e is taken as
# this (Heaps' law: n-gram rows of text 0.7-0.9, slower as a layout's rows fill)
GROWTH = 0.5
TOP = 2**63 - 1  # the id space when no columns are given: rows in [0, TOP)


@njit(cache=True)
def _histogram_kernel(keys, counts, starts, sign, hist, occupied):
    """For each row ``keys[j]``, its column (``starts``: each column's first row, ascending):
    ``occupied[col] += sign`` and ``hist[col, min(count, 3)] += sign`` for each of its slots."""
    col = 0
    for j in range(keys.shape[0]):
        if not (starts[col] <= keys[j] and (col + 1 == starts.shape[0] or
                                            keys[j] < starts[col + 1])):  # fmt: skip
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


def sorted_unique(rows) -> np.ndarray:
    """The distinct values of ``rows`` (any shape), sorted (a sort and a mask: numpy's
    ``unique`` hashes first, ~5x slower on a few 100k ids)."""
    out = np.sort(np.asarray(rows, dtype=np.int64).reshape(-1))
    if out.shape[0] > 1:
        out = out[np.concatenate([[True], out[1:] != out[:-1]])]
    return out


def max_probe(homes: int) -> int:
    """Records a new row may probe past its home before its segment of ``homes`` homes grows
    (rows crowded in a stretch). Uniform rows (hashes) probe further in a larger segment: at
    load 0.8 the longest probe is about ``ln(homes) / (0.8 - 1 - ln 0.8)`` = ``43 ln(homes)``
    less a constant (measured 201, 252, 302 records at 5M, 20M, 50M homes, rows added in
    batches), so a fixed limit grew a large segment of hashed rows to twice its homes for
    nothing. ``64 ln(homes)``, at least :data:`MAX_PROBE`, leaves that 3-5x room."""
    return max(MAX_PROBE, int(64 * math.log(max(homes, 1))))


def _threads() -> int:
    import numba

    return max(1, min(int(numba.get_num_threads()), os.cpu_count() or 1))


class RowTable:
    """The SpaceSaving summaries of the rows that occur, in RAM (about 1.25-2 x ``16 + 8 K``
    bytes per occupied row), a segment per column; the same summaries as the dense kernel (see
    the module docstring).

    Parameters
    ----------
    top_k : continuations kept per row.
    starts : each column's first row (ascending); default one column from row 0.
    end : the row after the last column's last (default ``2 ** 63 - 1``).
    lo, hi : only rows in ``[lo, hi)`` will be given (a spilled bucket's range): segments are
        the columns cut to it, so homes spread over the rows that can come.
    max_bytes : a growth sized for rows to come (``ahead`` in :meth:`add`) stops short of
        this; growth for the rows at hand does not.
    """

    def __init__(self, top_k: int, starts=None, end: int = TOP, lo: int = 0, hi: int = TOP,
                 max_bytes: int = 0):  # fmt: skip
        return_freed_memory()  # segments are freed as they grow: give the pages back
        self.top_k = int(top_k)
        self.max_bytes = int(max_bytes)
        starts = np.zeros(1, np.int64) if starts is None else np.asarray(starts, np.int64)
        edges = np.unique(np.clip(np.append(starts, end), lo, max(lo, min(hi, end))))
        self.firsts = edges.astype(np.int64)  # segment s: rows [firsts[s], firsts[s + 1])
        S = max(0, self.firsts.shape[0] - 1)
        self.used = np.zeros(S, np.int64)
        self.pairs = np.zeros(S, np.int64)  # pairs given to each segment so far
        self.caps = np.array([self._capacity(s, 0) for s in range(S)], np.int64)  # homes
        self.segments = [self._empty(int(c)) for c in self.caps]
        self.threads = _threads()
        self._sizing = threading.Lock()  # segments growing on threads: one sizes at a time
        self._growing = 0  # bytes the growths under way on other threads add
        self._scratch = None  # (keys, ys, sorted keys, sorted ys) of the last batch's size

    # -- sizes ---------------------------------------------------------------------------
    @property
    def record_bytes(self) -> int:
        return 8 * (2 + self.top_k)

    def span(self, s: int) -> int:
        return int(self.firsts[s + 1] - self.firsts[s])

    def _capacity(self, s: int, rows: int) -> int:
        """Homes for ``rows`` occupied rows at the load factor, at most the segment's span
        (there it is direct-mapped)."""
        return int(min(self.span(s), max(64, math.ceil(rows / LOAD))))

    def _empty(self, homes: int, slack: int = SLACK) -> np.ndarray:
        return np.zeros((homes + slack, 2 + self.top_k), np.uint64)

    def _fac(self, s: int, homes: int | None = None) -> float:
        return float(self.caps[s] if homes is None else homes) / self.span(s)

    @property
    def occupied(self) -> int:
        return int(self.used.sum())

    @property
    def nbytes(self) -> int:
        return int(sum(seg.nbytes for seg in self.segments))

    def capacity(self, s: int) -> int:
        """Homes of segment ``s``."""
        return int(self.caps[s])

    def _homes(self, s: int, rows: int) -> int:
        """Homes of segment ``s`` grown for ``rows`` occupied rows (:meth:`_grow`)."""
        return self._capacity(s, max(int(rows), int(MIN_GROWTH * LOAD * self.caps[s])))

    def _grow(self, s: int, rows: int, slack: int = SLACK, pending: int = 0) -> None:
        """Rehash segment ``s`` into one with homes for ``rows`` occupied rows (at least
        :data:`MIN_GROWTH` times its homes, unless at its span) and ``slack`` records past
        them. ``pending``: bytes counted in ``_growing`` for this growth, taken off as the new
        segment takes the old one's place."""
        old = self.segments[s]
        homes = self._homes(s, rows)
        try:
            while True:
                new = self._empty(homes, slack)
                if rehash_kernel(old, homes, self._fac(s, homes), new):
                    break
                slack *= 2  # a run longer than the slack at the end: more slack
        except BaseException:
            with self._sizing:
                self._growing -= pending
            raise
        with self._sizing:  # in one step: a thread sizing meanwhile counts this growth once
            self.segments[s], self.caps[s] = new, homes
            self._growing -= pending

    # -- adding pairs --------------------------------------------------------------------
    def add(self, rows, targets, keep=None, lo: int = 0, hi: int = TOP,
            ahead: float = 1.0) -> None:  # fmt: skip
        """Add ``targets[p]`` to each row ``rows[p, g]`` in ``[lo, hi)`` of each kept pair.

        ``ahead``: the input still to come, as a multiple of the input so far (1: none). A
        segment that must grow for this batch grows for the rows it is projected to end with
        (one rehash while it is small instead of one per batch while it is large), within
        ``max_bytes``: its rows times ``ahead ** e``, ``e`` its own growth exponent over this
        batch (rows against pairs, Heaps' law: near 1 for new contexts, near 0 for a column
        that has seen most of its rows), :data:`GROWTH` on its first batch.
        """
        rows = np.asarray(rows, dtype=np.int64)
        if rows.ndim == 1:
            rows = rows[:, None]
        targets = np.ascontiguousarray(targets, dtype=np.int64)
        P = rows.shape[0]
        keep = np.ones(P, bool) if keep is None else np.ascontiguousarray(keep, dtype=bool)
        if rows.ndim != 2 or targets.shape != (P,) or keep.shape != (P,):  # (kernels: unchecked)
            raise ValueError(f"add() takes rows (P, G) or (P,), targets and keep (P,); got "
                             f"rows {rows.shape}, {targets.shape}, {keep.shape}")  # fmt: skip
        G = rows.shape[1]
        S = len(self.segments)
        if P == 0 or S == 0:
            return
        counts = np.zeros((G, S), np.int64)
        group_kernel(rows, keep, lo, hi, self.firsts, counts)
        per = counts.sum(axis=0)
        seg_start = np.concatenate([[0], np.cumsum(per)])
        offsets = (seg_start[:-1][None, :] + np.cumsum(counts, axis=0) - counts).astype(np.int64)
        n = int(seg_start[-1])
        keys, ys, tmp_keys, tmp_ys = self._buffers(n)
        scatter_kernel(rows, targets, keep, lo, hi, self.firsts, offsets, keys, ys)
        todo = [s for s in np.argsort(-per, kind="stable") if per[s]]  # largest first
        pairs_before = self.pairs.copy()
        self.pairs += per

        def one(s: int) -> None:
            a, b = int(seg_start[s]), int(seg_start[s + 1])
            distinct = sort_kernel(keys, ys, a, b, self.span(s), tmp_keys, tmp_ys)
            limit = LOAD * self.capacity(s)
            if self.used[s] + distinct > limit and self.capacity(s) < self.span(s):
                new = new_rows_kernel(self.segments[s], self.capacity(s), self._fac(s),
                                       tmp_keys, a, b)  # fmt: skip
                if self.used[s] + new > limit:
                    need = int(self.used[s] + new)
                    exponent = GROWTH
                    if self.used[s] and pairs_before[s]:
                        exponent = math.log(need / self.used[s]) / math.log(
                            self.pairs[s] / pairs_before[s])  # fmt: skip
                    projected = int(
                        min(self.span(s), need * max(1.0, ahead) ** min(1.0, max(0.2, exponent)))
                    )  # (ahead inf: no more than the span)
                    extra = (projected - need) / LOAD * self.record_bytes
                    with self._sizing:  # the table as it is once the growths under way end
                        if self.max_bytes and self.nbytes + self._growing + extra > \
                                self.max_bytes:  # fmt: skip
                            projected = need
                        adds = (self._homes(s, projected) + SLACK) * self.record_bytes - \
                            self.segments[s].nbytes  # fmt: skip
                        self._growing += adds
                    self._grow(s, projected, pending=adds)
            while a < b:
                may_grow = self.capacity(s) < min(self.span(s), CROWD_CAP * self._capacity(
                    s, int(self.used[s]) + 1))  # fmt: skip
                seg = self.segments[s]
                done, new = insert_kernel(seg, self.capacity(s), self._fac(s), tmp_keys, tmp_ys,
                                           a, b, max_probe(self.capacity(s)) if may_grow
                                           else 2**62)  # fmt: skip
                self.used[s] += new
                a += done
                if a == b:
                    break
                if may_grow:  # a long probe: more homes
                    self._grow(s, 2 * LOAD * self.capacity(s), seg.shape[0] - self.capacity(s))
                else:  # a run off the end: more slack
                    self._grow(s, 0, 2 * (seg.shape[0] - self.capacity(s)))

        if self.threads > 1 and len(todo) > 1:
            with ThreadPoolExecutor(self.threads) as pool:
                list(pool.map(one, todo))
        else:
            for s in todo:
                one(s)

    def _buffers(self, n: int):
        """Scratch for ``n`` pairs (keys, targets, and their sorted copies), kept from batch
        to batch: fresh pages are slow to touch the first time."""
        if self._scratch is None or self._scratch[0].shape[0] < n:
            self._scratch = (np.empty(n, np.int64), np.empty(n, np.int32),
                             np.empty(n, np.int64), np.empty(n, np.int32))  # fmt: skip
        return self._scratch

    def release(self) -> None:
        """Free the batch scratch (:meth:`add` makes it again when needed)."""
        self._scratch = None

    # -- reading back --------------------------------------------------------------------
    def load(self, keys, tokens, counts, totals) -> None:
        """Put summaries read back (:meth:`extract`'s arrays) into an empty table."""
        keys = np.ascontiguousarray(keys, dtype=np.int64)
        if self.occupied or any(np.shape(a)[1:] != (self.top_k,) for a in (tokens, counts)):
            raise ValueError(f"load() takes (N, {self.top_k}) summaries into an empty table")
        tokens, counts = np.ascontiguousarray(tokens), np.ascontiguousarray(counts)
        totals = np.ascontiguousarray(totals)
        if not keys.ndim == 1 or any(a.shape[0] != keys.shape[0] for a in (tokens, counts, totals)):
            raise ValueError("load() takes row ids, tokens, counts and totals of as many rows")
        bounds = np.searchsorted(keys, self.firsts)
        if bounds[0] != 0 or bounds[-1] != keys.shape[0]:
            raise ValueError("load() takes rows inside the table's segments only")
        for s in range(len(self.segments)):
            a, b = int(bounds[s]), int(bounds[s + 1])
            rows = b - a
            homes, slack = self._capacity(s, rows), SLACK
            while True:
                rec = self._empty(homes, slack)
                done = load_kernel(rec, homes, self._fac(s, homes), self.firsts[s], keys, tokens,
                                   counts, totals, a, b)  # fmt: skip
                if done < 0:  # (read as they are, such rows would be held twice or lost)
                    raise EngramError("the summaries loaded are not sorted by row id, each row "
                                      "once: the count memory is damaged; rebuild it")  # fmt: skip
                if done:
                    break
                slack *= 2
            self.segments[s], self.caps[s], self.used[s] = rec, homes, b - a

    def _sorted_buffers(self, n: int):
        return (np.empty(n, np.int64), np.empty((n, self.top_k), np.int32),
                np.empty((n, self.top_k), np.uint32), np.empty(n, np.uint64))  # fmt: skip

    def sorted_blocks(self, reuse: bool = False):
        """``(row ids, tokens, counts, totals)`` of the occupied rows sorted by row id, a
        segment at a time (each a sequential sweep), ascending. ``reuse``: every block is
        written into the same arrays (views of them: use each before asking for the next;
        fresh pages are slow to touch)."""
        held = [s for s in range(len(self.segments)) if self.used[s]]
        buffers = self._sorted_buffers(max(int(self.used[s]) for s in held)) if held else None
        for s in held:
            n = int(self.used[s])
            out = tuple(b[:n] for b in buffers) if reuse else self._sorted_buffers(n)
            sorted_kernel(self.segments[s], self.firsts[s], *out, 0)
            yield out

    def extract(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """``(row ids, tokens, counts, totals)`` of the occupied rows, sorted by row id."""
        n, K = self.occupied, self.top_k
        out = (np.empty(n, np.int64), np.empty((n, K), np.int32), np.empty((n, K), np.uint32),
               np.empty(n, np.uint64))  # fmt: skip
        at = 0
        for s in range(len(self.segments)):
            at = sorted_kernel(self.segments[s], self.firsts[s], *out, at)
        return out

    def summaries_of(self, rows) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """``(row ids, tokens, counts, totals)`` of the occupied rows among ``rows`` (any
        shape, repeats and absent rows welcome), sorted by row id."""
        want = sorted_unique(rows)
        bounds = np.searchsorted(want, self.firsts)
        K = self.top_k
        parts = [[np.zeros(0, np.int64), np.zeros((0, K), np.int32),
                  np.zeros((0, K), np.uint32), np.zeros(0, np.uint64)]]  # fmt: skip
        for s in range(len(self.segments)):
            part = want[bounds[s] : bounds[s + 1]]
            if not part.shape[0] or not self.used[s]:
                continue
            slots = np.empty(part.shape[0], np.int64)
            find_kernel(self.segments[s], self.capacity(s), self._fac(s), self.firsts[s], part,
                         slots)  # fmt: skip
            found = slots >= 0
            rec = self.segments[s][slots[found]]
            parts.append([
                part[found],
                (rec[:, 2:] & LOW32).astype(np.int32),
                (rec[:, 2:] >> np.uint64(32)).astype(np.uint32),
                rec[:, 1].copy(),
            ])  # fmt: skip
        return tuple(np.concatenate([p[i] for p in parts]) for i in range(4))

    def check(self) -> None:
        """Raise AssertionError unless every segment holds only its own rows, each once, at
        or after its home, ``used`` counts them and a free record is all zeros (tests)."""
        for s, rec in enumerate(self.segments):
            tags = rec[:, 0]
            held = np.flatnonzero(tags)
            local = tags[held].astype(np.int64) - 1
            assert held.shape[0] == self.used[s]
            assert ((local >= 0) & (local < self.span(s))).all()
            assert np.unique(local).shape[0] == local.shape[0]
            homes = np.minimum((local * self._fac(s)).astype(np.int64), self.capacity(s) - 1)
            assert (held >= homes).all()
            assert not rec[tags == 0].any()
