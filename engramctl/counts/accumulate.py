"""A build's (context row, next token) pairs into row summaries, in memory bounded by a budget.

The summaries live in a :class:`~.rowtable.RowTable` (RAM grows with occupied rows, never
with table rows). When the table outgrows the budget the build *spills*: the table's summaries
are split into ``B`` buckets of contiguous row ranges and saved, and every later pair is
appended to its bucket's file, in the order it came. At the end each bucket on its own loads its
summaries, replays its pairs, and is written out; the buckets' rows are disjoint and ascending,
so the outputs concatenate into the sorted store. Every row sees its continuations in corpus
order whether or not the build spilled and however many buckets it used: the summaries are the
ones one pass in RAM gives, bit for bit (tested).

The held-out pairs (the gate's, :mod:`.build`) are counted last, after a snapshot of the rows
they touch (what the gate is fitted on) and of the counts of counts (the discounts).
"""

from __future__ import annotations

import logging
import math
import shutil
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .._system import format_bytes
from .rowtable import LOAD, RowTable, add_histogram, sorted_unique
from .store import crc32_combine

log = logging.getLogger(__name__)

MAX_BUCKETS = 256  # row buckets at most (a bucket past the budget then grows past it)
MIN_SLICE = 1 << 12  # pairs given to the row table at once in RAM, at least
REPLAY_PAIRS = 1 << 22  # pairs read back per step when a bucket is replayed
WRITE_ROWS = 1 << 20  # rows gathered per write
SENTINEL = 2**63 - 1  # the row id of the all-zero row every store ends with


class NpyAppender:
    """A ``.npy`` file written by appending rows: a fixed 128-byte header, rewritten with the
    final shape on :meth:`close` (``np.load`` reads it as any ``.npy``). The file's CRC-32
    is taken as it is written (:attr:`crc`, 8 hex digits, after :meth:`close`)."""

    HEADER = 128

    def __init__(self, path: Path, dtype, inner: tuple[int, ...] = ()):
        self.path, self.dtype, self.inner = Path(path), np.dtype(dtype), tuple(inner)
        self.handle = open(self.path, "wb")
        self.handle.write(b"\0" * self.HEADER)
        self.rows = 0
        self.data_crc, self.data_bytes = 0, 0
        self.crc: str | None = None

    def append(self, array) -> None:
        array = np.ascontiguousarray(array, dtype=self.dtype)
        data = memoryview(array.reshape(-1).view(np.uint8))
        self.handle.write(data)
        self.data_crc = zlib.crc32(data, self.data_crc)
        self.data_bytes += data.nbytes
        self.rows += array.shape[0]

    def close(self) -> None:
        shape = (self.rows, *self.inner)
        text = f"{{'descr': {self.dtype.str!r}, 'fortran_order': False, 'shape': {shape!r}, }}"
        text = text.ljust(self.HEADER - 10 - 1) + "\n"
        header = b"\x93NUMPY\x01\x00" + struct.pack("<H", len(text)) + text.encode("latin1")
        assert len(header) == self.HEADER
        self.handle.seek(0)
        self.handle.write(header)
        self.handle.close()
        whole = crc32_combine(zlib.crc32(header), self.data_crc, self.data_bytes)
        self.crc = None if whole is None else f"{whole:08x}"


@dataclass
class Snapshot:
    """What the gate is fitted on: the held-out pairs' rows as counted before them (sorted
    unique row ids, their summaries, one all-zero row last) and each column's counts of counts
    (``hist`` (G, 4): slots with count 0, 1, 2, 3+) and occupied rows then."""

    row_ids: np.ndarray
    tokens: np.ndarray
    counts: np.ndarray
    totals: np.ndarray
    hist: np.ndarray
    occupied: np.ndarray


class PairAccumulator:
    """Row summaries of a stream of pairs; spills to ``workdir`` beyond ``budget`` bytes.

    ``starts``: the first row of each column (ascending; the columns tile ``[0, total_rows)``).
    ``buckets``: spill from the start into this many buckets (0: only when over budget).
    ``initial``: summaries to start from (``(row ids, tokens, counts, totals)`` sorted by row
    id, memory-mapped: an existing memory's, for ``--append``); loaded whole when they fit half
    the budget, else spilled into buckets a slice at a time.
    ``lo``, ``hi``: every row given lies in ``[lo, hi)`` (a Dask row bucket's range): the
    table's segments and the spill's buckets are cut to it (the table's homes assume rows
    spread over each segment: rows in a fraction of a column crowd it, ~10x slower at a
    quarter of it, past 300 s instead of 1.4 s at a 32nd).
    """

    def __init__(self, *, total_rows: int, starts, top_k: int, budget: int, workdir: Path,
                 buckets: int = 0, initial=None, lo: int = 0, hi: int | None = None):  # fmt: skip
        self.total_rows, self.top_k, self.budget = int(total_rows), int(top_k), int(budget)
        self.lo = int(lo)
        self.hi = self.total_rows if hi is None else min(int(hi), self.total_rows)
        self.starts = np.asarray(starts, np.int64)
        self.workdir = Path(workdir)
        self.table: RowTable | None = RowTable(top_k, self.starts, self.total_rows, lo=self.lo,
                                               hi=self.hi, max_bytes=self.budget // 2)  # fmt: skip
        self.width = 0  # rows per bucket once spilled
        self.buckets = 0
        self.files: list = []
        self.scratch_bytes = 0  # bytes of row-bucket files written (pairs and saved summaries)
        self.seen = 0  # pairs given to :meth:`add` (kept or not)
        self.crcs: dict = {}  # the row arrays' CRC-32s, taken as :meth:`finish` wrote them
        self.full_rows = 0  # rows written with all K slots taken (:meth:`finish` counts them)
        if initial is not None:
            need = int(len(initial[0]) / 0.7 * 2 * (16 + 8 * self.top_k))  # as the table grows
            if not buckets and need <= self.budget // 2:
                self.table.load(*(np.asarray(a) for a in initial))
            else:
                self.spill(buckets or math.ceil(2 * need / self.budget), source=initial)
        elif buckets:
            self.spill(buckets)

    @property
    def spilled(self) -> bool:
        return self.buckets > 0

    def add(self, rows, targets, keep, expected_growth: float = 1.0) -> None:
        """Count the kept pairs; ``expected_growth``: how much more input is to come than has
        come (sizes the buckets if this call spills).

        In RAM, unless the whole batch fits the budget left at its worst, the pairs go to the
        table a slice at a time (:meth:`slice_pairs`), the budget checked after each, so one
        batch cannot carry the table far past it; once spilled the rest of the batch goes to
        the bucket files."""
        n, before = rows.shape[0], self.seen
        self.seen += n
        if self.spilled:
            self._append(rows, targets, keep)
            return
        step = self.slice_pairs(rows.shape[1])
        if n * self.pair_bytes(rows.shape[1]) <= self.budget - self.table.nbytes:
            step = max(1, n)  # even with every pair's rows new the table stays in the budget
        for lo in range(0, n, step):
            hi = min(n, lo + step)
            self.table.add(rows[lo:hi], targets[lo:hi], keep[lo:hi], ahead=expected_growth)
            if self.table.nbytes > self.budget:
                growth = expected_growth * (before + n) / (before + hi)  # seen: up to ``hi``
                self.spill(math.ceil(2 * growth * self.table.nbytes / self.budget))
                if hi < n:
                    self._append(rows[hi:], targets[hi:], keep[hi:])
                return

    def pair_bytes(self, columns: int) -> float:
        """The most a pair can grow the table: ``columns`` new rows at twice ``(16 + 8 K) /
        LOAD`` bytes each (a segment that grows takes 1.25-2x its homes at once; growth for
        rows to come stays within half the budget)."""
        return 2 * columns * (16 + 8 * self.top_k) / LOAD

    def slice_pairs(self, columns: int) -> int:
        """Pairs given to the table at once in RAM when a batch may not fit: at their worst
        (:meth:`pair_bytes`) an eighth of the budget; at least :data:`MIN_SLICE`."""
        return max(MIN_SLICE, int(self.budget / 8 / self.pair_bytes(columns)))

    def _append(self, rows, targets, keep) -> None:
        """Append the kept pairs to their buckets' files, column by column, each in order (a
        column's rows are contiguous, so it reaches one bucket or a few: no batch-wide sort)."""
        kept = np.flatnonzero(keep)
        if not kept.shape[0]:
            return
        y = np.asarray(targets)[kept].astype(np.int32)
        cut = self.lo > 0 or self.hi < self.total_rows  # (rows outside are dropped, as in RAM)
        for g in range(rows.shape[1]):
            r, yg = rows[kept, g], y
            if cut:
                inside = (r >= self.lo) & (r < self.hi)
                r, yg = r[inside], y[inside]
                if not r.shape[0]:
                    continue
            bucket = (r - self.lo) // self.width
            first, last = int(bucket.min()), int(bucket.max())
            if first == last:
                self._write(first, r, yg)
                continue
            order = np.argsort(bucket, kind="stable")
            bounds = np.searchsorted(bucket[order], np.arange(first, last + 2))
            for b in range(first, last + 1):
                if bounds[b - first + 1] > bounds[b - first]:
                    pick = order[bounds[b - first] : bounds[b - first + 1]]
                    self._write(b, r[pick], yg[pick])

    def _write(self, b: int, r, y) -> None:
        for path, array in zip(self.files[b], (r, y), strict=True):
            with open(path, "ab") as handle:
                array.tofile(handle)
            self.scratch_bytes += array.nbytes

    def spill(self, buckets: int, source=None) -> None:
        """Save the table's summaries (or ``source``'s) in ``buckets`` row ranges; later pairs
        go to files."""
        self.buckets = min(MAX_BUCKETS, max(2, int(buckets)))
        self.width = max(1, -(-(self.hi - self.lo) // self.buckets))
        log.info("spilling row summaries into %d buckets under %s", self.buckets, self.workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        keys, tokens, counts, totals = source if source is not None else self.table.extract()
        bounds = np.searchsorted(keys, self.lo + np.arange(self.buckets + 1) * self.width)
        for b in range(self.buckets):
            part = slice(bounds[b], bounds[b + 1])
            np.savez(self.workdir / f"state{b}.npz", keys=np.asarray(keys[part]),
                     tokens=np.asarray(tokens[part]), counts=np.asarray(counts[part]),
                     totals=np.asarray(totals[part]))  # fmt: skip
            self.scratch_bytes += (self.workdir / f"state{b}.npz").stat().st_size
            self.files.append((self.workdir / f"rows{b}.bin", self.workdir / f"targets{b}.bin"))
            for path in self.files[-1]:
                path.write_bytes(b"")
        self.table = None

    def _bucket_table(self, b: int) -> RowTable:
        """Bucket ``b``'s summaries: saved at the spill, then its pairs replayed in order."""
        rows_file, targets_file = self.files[b]
        table = RowTable(self.top_k, self.starts, self.total_rows, lo=self.lo + b * self.width,
                         hi=self.lo + (b + 1) * self.width, max_bytes=self.budget // 2)  # fmt: skip
        with np.load(self.workdir / f"state{b}.npz") as state:
            table.load(state["keys"], state["tokens"], state["counts"], state["totals"])
        empty = rows_file.stat().st_size == 0  # (np.memmap refuses an empty file)
        rows = np.zeros(0, np.int64) if empty else np.memmap(rows_file, np.int64, "r")
        targets = np.zeros(0, np.int32) if empty else np.memmap(targets_file, np.int32, "r")
        for lo in range(0, rows.shape[0], REPLAY_PAIRS):
            table.add(np.asarray(rows[lo : lo + REPLAY_PAIRS]),
                      np.asarray(targets[lo : lo + REPLAY_PAIRS]))  # fmt: skip
        table.release()
        if table.nbytes > self.budget:
            log.warning("row bucket %d of %d holds %s of summaries, over the budget of %s",
                        b, self.buckets, format_bytes(table.nbytes),
                        format_bytes(self.budget))  # fmt: skip
        del rows, targets
        for name in (f"state{b}.npz", f"rows{b}.bin", f"targets{b}.bin"):
            (self.workdir / name).unlink(missing_ok=True)
        return table

    def finish(self, held_rows: np.ndarray, held_targets: np.ndarray, out: Path, suffix=""):
        """Count the held-out pairs last and write the summaries into ``out`` (``row_ids``,
        ``tokens``, ``counts``, ``totals`` + ``suffix`` ``.npy``, sorted, the all-zero row
        last).

        Returns ``(snapshot before the held-out pairs, (G, 4) hist after, (G,) occupied after,
        rows written)``.
        """
        G = self.starts.shape[0]
        snap = [np.zeros((0,), np.int64), np.zeros((0, self.top_k), np.int32),
                np.zeros((0, self.top_k), np.uint32), np.zeros((0,), np.uint64)]  # fmt: skip
        hist_before, occ_before = np.zeros((G, 4), np.int64), np.zeros(G, np.int64)
        hist_after, occ_after = np.zeros((G, 4), np.int64), np.zeros(G, np.int64)
        K = self.top_k
        writers = [NpyAppender(out / f"row_ids{suffix}.npy", np.int64),
                   NpyAppender(out / f"tokens{suffix}.npy", np.int32, (K,)),
                   NpyAppender(out / f"counts{suffix}.npy", np.uint32, (K,)),
                   NpyAppender(out / f"totals{suffix}.npy", np.uint64)]  # fmt: skip
        ranges = [(0, 2**63 - 1)] if not self.spilled else \
            [(self.lo + b * self.width, self.lo + (b + 1) * self.width)
             for b in range(self.buckets)]  # fmt: skip
        if self.table is not None:
            self.table.release()  # the batches' scratch
        held_rows = np.asarray(held_rows)
        touched = sorted_unique(held_rows)  # the rows the snapshots read (sorted once)
        for b, (lo, hi) in enumerate(ranges):
            table = self.table if not self.spilled else self._bucket_table(b)
            # the rows the gate's fit reads, sorted, as counted before the held-out pairs
            held = table.summaries_of(touched)
            for i, part in enumerate(held):
                snap[i] = np.concatenate([snap[i], part])
            table.add(held_rows, held_targets, None, lo, hi)
            table.release()
            hist, occ = np.zeros((G, 4), np.int64), np.zeros(G, np.int64)
            self.full_rows += _write_sorted(table, writers, self.starts, hist, occ)
            hist_after += hist
            occ_after += occ
            # before the held-out pairs: the rows they touched as they were, not as they are
            add_histogram(held[0], held[2], self.starts, hist, occ)
            now = table.summaries_of(touched)
            add_histogram(now[0], now[2], self.starts, hist, occ, sign=-1)
            hist_before += hist
            occ_before += occ
            self.table = None
            del table
        for writer, value in zip(writers, (SENTINEL, 0, 0, 0), strict=True):
            writer.append(np.full((1, *writer.inner), value, writer.dtype))
            writer.close()
        names = ("row_ids", "tokens", "counts", "totals")
        self.crcs = {name: w.crc for name, w in zip(names, writers, strict=True) if w.crc}
        shutil.rmtree(self.workdir, ignore_errors=True)
        snap = [np.concatenate([a, np.zeros((1, *a.shape[1:]), a.dtype)]) for a in snap]
        snap[0][-1] = SENTINEL
        return (Snapshot(*snap, hist_before, occ_before), hist_after, occ_after,
                writers[0].rows)  # fmt: skip


def _write_sorted(table: RowTable, writers, starts, hist, occupied) -> int:
    """Append the table's occupied rows, sorted by row id, to the four writers a segment at a
    time, and add their counts of counts per column to ``hist``/``occupied``
    (:func:`add_histogram`). Returns the rows whose K slots are all taken."""
    full = 0
    for block in table.sorted_blocks(reuse=True):
        add_histogram(block[0], block[2], starts, hist, occupied)
        full += int(np.count_nonzero(block[2][:, -1]))
        for writer, array in zip(writers, block, strict=True):
            writer.append(array)
    return full
