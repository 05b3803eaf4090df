"""Property tests of the build's row table (:mod:`engramctl.counts.rowtable`) against the plain
dense specification (:func:`~engramctl.counts.spacesaving.space_saving_reference`), and of
:meth:`~engramctl.counts.accumulate.PairAccumulator.finish`'s counts of counts against a plain
numpy recomputation.

hypothesis draws the shape of a case (batch sizes 0..N, the columns (segments), ``max_bytes``,
K, how rows repeat, dense or huge row ids, the ``keep`` mask, ``lo``/``hi``); a seeded
generator draws the arrays, so examples stay small and fast.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engramctl.counts.accumulate import MIN_SLICE, SENTINEL, PairAccumulator
from engramctl.counts.rowtable import MAX_PROBE, RowTable, add_histogram
from engramctl.counts.spacesaving import space_saving_kernel, space_saving_reference

TOP = 2**63 - 1  # RowTable.add's default hi


@dataclass(frozen=True)
class Case:
    """Batches of (rows (P, G), targets (P,), keep (P,)) and the table's settings."""

    batches: tuple
    top_k: int
    starts: np.ndarray  # the columns' first rows (the table's segments)
    end: int  # the row after the last column's
    max_bytes: int
    lo: int
    hi: int

    def table(self, **change) -> RowTable:
        kw = {"starts": self.starts, "end": self.end, "max_bytes": self.max_bytes, **change}
        return RowTable(self.top_k, **kw)


def _rows_pool(rng, pool: int, huge: bool) -> np.ndarray:
    if huge:  # spread up to ~2 ** 62, a few near the top
        ids = rng.integers(0, 2**62, size=pool, dtype=np.int64)
        ids[: min(2, pool)] = 2**62 - 1 - np.arange(min(2, pool))
        return np.unique(ids)
    return np.arange(pool, dtype=np.int64)  # dense ids from 0


@st.composite
def cases(draw, max_pairs: int = 160):
    seed = draw(st.integers(0, 2**32 - 1))
    sizes = draw(st.lists(st.integers(0, max_pairs), min_size=1, max_size=4))
    G = draw(st.integers(1, 3))
    pool = draw(st.sampled_from([1, 3, 40, 300, 2000]))
    if draw(st.integers(0, 2)) == 0:  # a batch of many new rows: the kernel stops to grow
        pool = 50_000
        sizes.insert(draw(st.integers(0, len(sizes))), draw(st.integers(3000, 12_000)))
    huge = draw(st.booleans())
    vocab = draw(st.sampled_from([1, 3, 12, 1000]))
    keep_mode = draw(st.sampled_from(["all", "none", "some"]))
    rng = np.random.default_rng(seed)
    ids = _rows_pool(rng, pool, huge)
    weights = 1.0 / np.arange(1, ids.shape[0] + 1) ** (pool < 50_000)  # a few rows repeated
    weights /= weights.sum()
    batches = []
    for P in sizes:
        rows = rng.choice(ids, size=(P, G), p=weights)
        targets = rng.zipf(1.3, size=P).astype(np.int64) % vocab
        keep = {"all": np.ones(P, bool), "none": np.zeros(P, bool),
                "some": rng.random(P) < 0.7}[keep_mode]  # fmt: skip
        batches.append((rows, targets, keep))
    if draw(st.booleans()):  # a row range, as a spilled bucket's
        a, b = sorted(rng.choice(ids, size=2))
        lo, hi = int(a), int(b) + int(draw(st.booleans()))
    else:
        lo, hi = 0, TOP
    end = 2**62 if huge else pool
    cuts = rng.choice(ids, size=draw(st.sampled_from([0, 1, 4])))
    starts = np.unique(np.concatenate([[0], cuts[cuts > 0]])).astype(np.int64)
    return Case(tuple(batches), draw(st.integers(1, 8)), starts, end,
                draw(st.sampled_from([0, 1, 5000])), lo, hi)  # fmt: skip


def reference(batches, K: int, lo: int = 0, hi: int = TOP):
    """The dense specification run on compacted row ids (a row's summary depends only on its
    own sequence): ``(row ids, tokens, counts, totals)`` of the occupied rows, sorted. The plain
    reference for small batches, the dense kernel (held to it) for large ones."""
    ids = np.unique(np.concatenate([r.reshape(-1) for r, _, _ in batches] + [np.zeros(0, int)]))
    ids = ids[(ids >= lo) & (ids < hi)]
    R = ids.shape[0]
    tokens, counts = np.zeros((R + 1, K), np.int32), np.zeros((R + 1, K), np.uint32)
    totals = np.zeros(R + 1, np.uint64)
    for rows, targets, keep in batches:
        where = np.minimum(np.searchsorted(ids, rows), max(R - 1, 0))
        inside = ids[where] == rows if R else np.zeros(rows.shape, bool)
        dense = np.where(inside, where, R)  # R: a row outside [lo, hi), dropped below
        if dense.size <= 1000:  # the plain specification
            space_saving_reference(dense, targets, keep, tokens, counts, totals,
                                   np.zeros(rows.shape[1], np.int64))  # fmt: skip
            continue
        for g in range(dense.shape[1]):  # the dense kernel, a column at a time (rows may repeat
            space_saving_kernel(
                np.ascontiguousarray(dense[:, g : g + 1]),
                targets,
                keep,
                tokens,
                counts,
                totals,
                np.zeros(1, np.int64),
            )  # across columns)
    occ = np.flatnonzero(totals[:R])
    return ids[occ], tokens[occ], counts[occ], totals[occ]


def feed(table: RowTable, batches, lo: int = 0, hi: int = TOP) -> RowTable:
    for rows, targets, keep in batches:
        table.add(rows, targets, keep, lo, hi)
    return table


def assert_same(got, want) -> None:
    for a, b, name in zip(got, want, ("row ids", "tokens", "counts", "totals"), strict=True):
        np.testing.assert_array_equal(a, b, err_msg=name)


def count_of_counts(keys, counts, starts):
    """Plain numpy: per column, rows held and slots with count 0, 1, 2, 3+."""
    G = starts.shape[0]
    col = np.searchsorted(starts, keys, side="right") - 1
    occupied = np.bincount(col, minlength=G).astype(np.int64)
    hist = np.zeros((G, 4), np.int64)
    for c in range(4):
        hits = (np.minimum(counts, 3) == c).sum(axis=1)
        hist[:, c] = np.bincount(col, weights=hits, minlength=G).astype(np.int64)
    return hist, occupied


SETTINGS = settings(max_examples=40, deadline=None)


@SETTINGS
@given(cases())
def test_extract_equals_the_dense_reference(case):
    table = feed(case.table(), case.batches, case.lo, case.hi)
    table.check()
    got = table.extract()
    assert_same(got, reference(case.batches, case.top_k, case.lo, case.hi))
    assert table.occupied == got[0].shape[0]
    blocks = list(table.sorted_blocks())  # the write-out: a segment at a time, the same rows
    assert_same([np.concatenate([b[i] for b in blocks] + [got[i][:0]]) for i in range(4)], got)


@SETTINGS
@given(cases(), st.integers(0, 4), st.booleans())
def test_load_then_more_equals_one_table_fed_everything(case, cut, one_column):
    cut = min(cut, len(case.batches))
    first = feed(case.table(max_bytes=0), case.batches[:cut], case.lo, case.hi)
    again = case.table(starts=case.starts[:1]) if one_column else case.table()
    again.load(*first.extract())
    again.check()
    assert_same(again.extract(), first.extract())
    feed(again, case.batches[cut:], case.lo, case.hi)
    again.check()
    whole = feed(case.table(max_bytes=0), case.batches, case.lo, case.hi)
    assert_same(again.extract(), whole.extract())


@SETTINGS
@given(cases(), st.integers(0, 2**32 - 1))
def test_summaries_of_agree_with_extract(case, seed):
    table = feed(case.table(), case.batches, case.lo, case.hi)
    keys, tokens, counts, totals = table.extract()
    rng = np.random.default_rng(seed)
    absent = np.setdiff1d(rng.integers(0, 2**62, 50), keys)
    absent = np.concatenate([absent, np.setdiff1d(keys + 1, keys), np.setdiff1d(keys - 1, keys)])
    absent = absent[absent >= 0]
    assert table.summaries_of(absent)[0].shape == (0,)
    # any shape, repeats and absent rows welcome: the present rows' summaries, in row order
    probe = np.concatenate([rng.permutation(np.repeat(keys, rng.integers(0, 3, keys.shape[0]))),
                            absent[:20]])  # fmt: skip
    rng.shuffle(probe)
    pick = np.isin(keys, probe)
    want = tuple(a[pick] for a in (keys, tokens, counts, totals))
    assert_same(table.summaries_of(probe), want)
    assert_same(table.summaries_of(probe.reshape(-1, 1)), want)
    assert table.summaries_of(np.zeros((0, 3), np.int64))[0].shape == (0,)


@SETTINGS
@given(cases(), st.integers(1, 5), st.integers(0, 2**32 - 1))
def test_add_histogram_equals_a_numpy_count_of_counts(case, G, seed):
    keys, _, counts, _ = feed(case.table(), case.batches).extract()
    rng = np.random.default_rng(seed)
    top = int(keys.max()) + 1 if keys.shape[0] else 1
    starts = np.concatenate([[0], np.sort(rng.integers(0, top + 1, G - 1))]).astype(np.int64)
    hist, occupied = np.zeros((G, 4), np.int64), np.zeros(G, np.int64)
    add_histogram(keys, counts, starts, hist, occupied)
    want_hist, want_occupied = count_of_counts(keys, counts, starts)
    np.testing.assert_array_equal(hist, want_hist)
    np.testing.assert_array_equal(occupied, want_occupied)
    add_histogram(keys, counts, starts, hist, occupied, sign=-1)
    assert not hist.any() and not occupied.any()


@st.composite
def builds(draw):
    """A layout's columns (rows of column g in ``[starts[g], starts[g + 1])``), batches of pairs
    with a ``keep`` mask, the held-out pairs, and the accumulator's budget and buckets."""
    seed = draw(st.integers(0, 2**32 - 1))
    G = draw(st.integers(1, 3))
    width = draw(st.sampled_from([5, 60, 3000]))  # rows a column
    sizes = draw(st.lists(st.integers(0, 150), min_size=1, max_size=3))
    held = draw(st.integers(0, 40))
    rng = np.random.default_rng(seed)
    starts = np.arange(G, dtype=np.int64) * width
    vocab = draw(st.sampled_from([2, 20]))

    def pairs(P):
        rows = starts + rng.integers(0, width, size=(P, G))
        return rows.astype(np.int64), rng.integers(0, vocab, P).astype(np.int64)

    batches = []
    for P in sizes:
        rows, targets = pairs(P)
        batches.append((rows, targets, rng.random(P) < 0.8))
    held_rows, held_targets = pairs(held)
    if draw(st.booleans()) and held and batches[0][0].shape[0]:  # held rows that were counted
        held_rows[: held // 2] = batches[0][0][rng.integers(0, batches[0][0].shape[0], held // 2)]
    small, buckets, K = draw(st.booleans()), draw(st.sampled_from([0, 3])), draw(st.integers(1, 6))
    return starts, G * width, tuple(batches), held_rows, held_targets, small, buckets, K


@settings(max_examples=30, deadline=None)
@given(builds())
def test_finish_histograms_equal_a_plain_recount(build):
    check_finish(*build)


def test_finish_after_a_spill_in_the_middle_of_a_batch():
    """A batch longer than a slice (``MIN_SLICE`` pairs) over a small budget: the table spills
    after its first slice and the rest of the batch goes to the bucket files."""
    rng = np.random.default_rng(5)
    starts = np.array([0, 5000], np.int64)
    rows = (starts + rng.integers(0, 5000, (MIN_SLICE + 1500, 2))).astype(np.int64)
    targets = rng.integers(0, 7, rows.shape[0])
    batches = ((rows, targets, rng.random(rows.shape[0]) < 0.9),)
    check_finish(starts, 10_000, batches, rows[:30], targets[:30], True, 0, 2)


def check_finish(starts, total_rows, batches, held_rows, held_targets, small, buckets, K):
    # a small budget: under the new table's size, so the first batch spills (into a few buckets)
    budget = RowTable(K, starts, total_rows).nbytes - 1 if small else 1 << 30
    G = starts.shape[0]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "out").mkdir()
        acc = PairAccumulator(total_rows=total_rows, starts=starts, top_k=K, budget=budget,
                              workdir=tmp / "work", buckets=buckets)  # fmt: skip
        for rows, targets, keep in batches:
            acc.add(rows, targets, keep, expected_growth=2.0)
        if buckets or (small and any(rows.shape[0] for rows, _, _ in batches)):
            assert acc.spilled
        else:
            assert not acc.spilled
        snap, hist_after, occ_after, written = acc.finish(held_rows, held_targets, tmp / "out")
        stored = [np.load(tmp / "out" / f"{name}.npy")
                  for name in ("row_ids", "tokens", "counts", "totals")]  # fmt: skip
        assert not (tmp / "work").exists()
    everything = batches + ((held_rows, held_targets, np.ones(held_rows.shape[0], bool)),)
    before, after = reference(batches, K), reference(everything, K)
    # the store: every row after the held-out pairs, sorted, then the all-zero sentinel row
    assert written == after[0].shape[0] + 1 == stored[0].shape[0]
    assert stored[0][-1] == SENTINEL and not stored[1][-1].any() and not stored[2][-1].any()
    assert_same([a[:-1] for a in stored], after)
    want_hist, want_occ = count_of_counts(after[0], after[2], starts)
    np.testing.assert_array_equal(hist_after, want_hist)
    np.testing.assert_array_equal(occ_after, want_occ)
    want_hist, want_occ = count_of_counts(before[0], before[2], starts)
    np.testing.assert_array_equal(snap.hist, want_hist)
    np.testing.assert_array_equal(snap.occupied, want_occ)
    # the snapshot: the held-out pairs' rows that were counted before them, as they were
    touched = np.isin(before[0], held_rows)
    assert_same((snap.row_ids[:-1], snap.tokens[:-1], snap.counts[:-1], snap.totals[:-1]),
                tuple(a[touched] for a in before))  # fmt: skip
    assert snap.row_ids[-1] == SENTINEL and not snap.counts[-1].any() and snap.totals[-1] == 0
    assert G == hist_after.shape[0]


@pytest.mark.parametrize("columns", [1, 2, 5])
def test_an_estimate_is_cut_to_max_bytes_in_all_segments(columns):
    """Growth for rows to come (``ahead``) stays within ``max_bytes`` over all segments
    together; growth for the rows at hand is not cut."""
    starts = np.arange(columns, dtype=np.int64) * 10**9
    rng = np.random.default_rng(columns)
    rows = starts + rng.integers(0, 10**9, (2000, columns))
    targets = rng.integers(0, 9, 2000)
    table = RowTable(4, starts=starts, end=columns * 10**9, max_bytes=1 << 20)
    table.add(rows, targets, ahead=400)
    assert table.nbytes <= 1 << 20
    assert table.occupied == 2000 * columns  # the rows at hand fit
    wide = RowTable(4, starts=starts, end=columns * 10**9)
    wide.add(rows, targets, ahead=400)
    assert wide.nbytes > 1 << 20  # uncut, the projection would have passed it
    for got, want in zip(table.extract(), wide.extract(), strict=True):
        np.testing.assert_array_equal(got, want)


def test_rows_crowded_in_a_stretch_are_held_in_bounded_memory():
    """Rows all in the first 0.01% of a column's span (not the uniform hashes homes assume):
    long probes grow the segment, up to a bounded multiple of the homes its rows need, then
    probes walk on; rows crowded at the span's end run into the slack, which grows."""
    rng = np.random.default_rng(3)
    front = np.unique(rng.integers(0, 10**5, 6000))
    back = 10**9 - 1 - np.arange(3 * MAX_PROBE)
    for rows in (front, back):
        targets = rows % 5
        table = RowTable(2, starts=np.zeros(1, np.int64), end=10**9)
        for part in np.array_split(np.arange(rows.shape[0]), 3):
            table.add(rows[part], targets[part])
        table.check()
        batches = ((rows[:, None], targets, np.ones(rows.shape[0], bool)),)
        assert_same(table.extract(), reference(batches, 2))
        assert table.capacity(0) <= 2 * 16 * rows.shape[0] / 0.7 + 64


def test_a_dense_column_becomes_direct_mapped():
    """A column whose rows fill most of its span (level 1: canonical ids) grows to its span:
    each row at its own slot, no probing, read out already sorted."""
    rows = np.arange(0, 38_000, dtype=np.int64)
    rows = np.concatenate([rows, rows[::-1]])
    targets = np.arange(rows.shape[0]) % 7
    table = RowTable(2, starts=np.array([0, 40_000]), end=10**6)
    table.add(rows, targets)
    table.check()
    assert table.capacity(0) == 40_000
    batches = ((rows[:, None], targets, np.ones(rows.shape[0], bool)),)
    assert_same(table.extract(), reference(batches, 2))


@pytest.mark.parametrize("columns", [2, 3])
@pytest.mark.parametrize("scale", [1.0, 8.0])
def test_batches_of_many_new_rows_equal_the_reference(columns, scale):
    """Batches of many new rows into segments with room for 64: each grows before its sweep
    (counting the batch's new rows when they might not fit), ``scale`` ahead or not."""
    rng = np.random.default_rng(columns)
    batches = []
    for P in (20_000, 7_000, 30_000):
        rows = np.concatenate(
            [rng.integers(0, 40_000, (P, 1)), 40_000 + rng.integers(0, 10**9, (P, 1))], 1
        )
        batches.append((rows.astype(np.int64), rng.integers(0, 9, P), rng.random(P) < 0.9))
    starts = np.array([0, 40_000, 40_000 + 10**8][:columns], np.int64)
    table = RowTable(3, starts=starts, end=40_000 + 10**9)
    for rows, targets, keep in batches:
        table.add(rows, targets, keep, ahead=scale)
    table.check()
    assert_same(table.extract(), reference(batches, 3))


def test_load_refuses_another_k_or_a_table_in_use():
    """(The load kernel reads K words a row unchecked: another K read past the arrays.)"""
    keys, tokens, counts, totals = feed(
        RowTable(3, end=9), [(np.arange(9), np.arange(9), None)]
    ).extract()
    with pytest.raises(ValueError, match=r"\(N, 4\)"):
        RowTable(4, end=9).load(keys, tokens, counts, totals)
    with pytest.raises(ValueError, match="segments"):
        RowTable(3, end=5).load(keys, tokens, counts, totals)
    used = RowTable(3, end=9)
    used.add(np.arange(2), np.arange(2))
    with pytest.raises(ValueError, match="empty"):
        used.load(keys, tokens, counts, totals)
