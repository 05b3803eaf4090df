"""Adversarial cases of the build's row table (:mod:`engramctl.counts.rowtable`) found in a
review: each failed before the fix it came with."""

from __future__ import annotations

import time

import numpy as np
import pytest

from engramctl.counts import rowtable
from engramctl.counts.rowtable import MAX_PROBE, RowTable, max_probe

G = 8  # hashed columns, each its own segment (filled on threads)
STARTS = np.arange(G, dtype=np.int64) * 10**9


def _batches(P: int = 3000):
    rng = np.random.default_rng(11)
    first = (STARTS + rng.integers(0, 10**9, (P, G))).astype(np.int64)
    second = (STARTS + rng.integers(0, 10**9, (P, G))).astype(np.int64)
    return first, second, rng.integers(0, 50, P)


def _sized(threads: int, max_bytes: int) -> RowTable:
    first, second, targets = _batches()
    table = RowTable(1, STARTS, G * 10**9, max_bytes=max_bytes)
    table.threads = threads
    table.add(first, targets)  # each segment sized for its rows
    table.add(second, targets, ahead=8.0)  # each must grow: for 8x its rows if max_bytes allows
    return table


def test_projected_growth_on_threads_stays_within_max_bytes(monkeypatch):
    """Segments grown on threads at once each saw the table's bytes before the others grew, so
    together their growth for rows to come went past ``max_bytes`` (2.1x at 8 threads, 8
    columns); each now counts the growth under way on the other threads."""
    need = _sized(1, 1).nbytes  # every projection cut: growth for the rows at hand only
    ample = _sized(1, 0).nbytes  # no projection cut
    max_bytes = need + (ample - need) * 7 // 16  # room for about three of eight projections
    one = _sized(1, max_bytes)
    assert need < one.nbytes <= max_bytes
    rehash = rowtable.rehash_kernel

    def slow_rehash(*args):  # a segment's growth takes long enough for the others to start
        time.sleep(0.02)
        return rehash(*args)

    monkeypatch.setattr(rowtable, "rehash_kernel", slow_rehash)
    many = _sized(G, max_bytes)
    assert many.nbytes <= max_bytes
    assert sorted(many.caps) == sorted(one.caps)  # as many projections as one thread makes
    for a, b in zip(many.extract(), one.extract(), strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize(
    ("homes", "longest"),
    # the longest probe of uniform rows (hashes) added in batches of 1/16 of a segment at load
    # 0.8 (measured: 5M, 20M, 50M homes); about 43 ln(homes) - 477 past that (V4.1: ~500M)
    [(5_000_000, 201), (20_000_000, 252), (50_000_000, 302), (500_000_000, 385)],
)
def test_hashed_rows_at_the_load_factor_do_not_count_as_crowded(homes, longest):
    """A fixed limit of 256 records took the ordinary longest probe of a segment of ~20M
    hashed rows for a crowd and grew it to twice its homes (measured: 25M rows in 50M homes,
    load 0.50, instead of 0.64-0.8). The limit grows with the segment, with room to spare."""
    assert max_probe(homes) >= 2 * longest


def test_rows_crowded_in_a_small_segment_still_grow_it():
    """The limit stays near :data:`MAX_PROBE` in a small segment: rows all homed in its
    first stretch grow it (the crowd growth), up to its bounded multiple."""
    assert MAX_PROBE <= max_probe(64) < 1.1 * MAX_PROBE
    rows = np.arange(3000, dtype=np.int64)  # the first 3000 of 10**9 rows: one home at first
    table = RowTable(1, np.zeros(1, np.int64), 10**9)
    for part in np.array_split(rows, 6):
        table.add(part, part % 3)
    table.check()
    assert 2 * 3000 / 0.8 < table.capacity(0) <= 2 * 16 * 3000 / 0.8 + 64


def test_negative_tokens_are_counted_as_the_dense_kernel_counts_them():
    """A negative token (int32) was widened with its sign into the record's count half: its
    slot read back count 2 ** 32 - 1, and it never matched itself again."""
    rows = np.array([5, 5, 5, 7, 5], np.int64)
    targets = np.array([-1, -1, 3, -(2**31), -1], np.int64)
    table = RowTable(2, end=10)
    table.add(rows, targets)
    keys, tokens, counts, totals = table.extract()
    np.testing.assert_array_equal(keys, [5, 7])
    np.testing.assert_array_equal(tokens, [[-1, 3], [-(2**31), 0]])
    np.testing.assert_array_equal(counts, [[3, 1], [1, 0]])
    np.testing.assert_array_equal(totals, [4, 1])
    found = table.summaries_of([7, 5])
    np.testing.assert_array_equal(found[1], tokens)
    np.testing.assert_array_equal(found[2], counts)


def _bucket_pairs(lo: int, hi: int, batches: int = 4, P: int = 6000):
    """Pairs of a Dask row bucket ``[lo, hi)``: two columns, rows spread over the bucket's
    part of each (a 64th of the first, which the range cuts, and the start of the second)."""
    rng = np.random.default_rng(7)
    out = []
    for _ in range(batches):
        rows = rng.integers(lo, hi, (P, 2)).astype(np.int64)
        out.append((rows, rng.integers(0, 9, P), rng.random(P) < 0.9))
    return out


@pytest.mark.parametrize("buckets", [0, 3])
def test_an_accumulator_of_a_row_range_cuts_its_table_and_buckets_to_it(tmp_path, buckets):
    """A Dask row bucket's accumulator gets rows of ``[lo, hi)`` only. Its table's segments
    were the whole columns, so the rows crowded the homes of a stretch of each (~10x slower
    and 3.4x the memory at a quarter of a column, past 300 s instead of 1.4 s at a 32nd), and
    its spill's buckets cut the whole row space (all rows in one of them)."""
    from engramctl.counts.accumulate import PairAccumulator

    starts = np.array([0, 64 * 10**6], np.int64)
    total, lo, hi = 65 * 10**6, 63 * 10**6, 65 * 10**6  # a 64th of column 0, half of column 1
    batches = _bucket_pairs(lo, hi)
    acc = PairAccumulator(total_rows=total, starts=starts, top_k=3, budget=1 << 30,
                          workdir=tmp_path / "work", buckets=buckets, lo=lo, hi=hi)  # fmt: skip
    plain = RowTable(3, starts, total)  # (held to the dense specification elsewhere)
    for rows, targets, keep in batches:
        acc.add(rows, targets, keep)
        plain.add(rows, targets, keep)
    if buckets:  # each bucket of the spill holds a third of the range
        assert [f[0].stat().st_size > 0 for f in acc.files] == [True] * buckets
    else:  # sized for its rows: a segment per column, each at the load factor or so
        assert acc.table.nbytes <= 2 * plain.occupied / 0.8 * acc.table.record_bytes
        assert [acc.table.firsts[0], acc.table.firsts[-1]] == [lo, hi]
    (tmp_path / "out").mkdir()
    held = batches[0][0][:50]
    acc.finish(held, np.arange(50), tmp_path / "out")
    plain.add(held, np.arange(50))
    stored = [np.load(tmp_path / "out" / f"{name}.npy")[:-1]
              for name in ("row_ids", "tokens", "counts", "totals")]  # fmt: skip
    for a, b in zip(stored, plain.extract(), strict=True):
        np.testing.assert_array_equal(a, b)


def test_load_refuses_rows_out_of_order_or_twice():
    """Summaries not sorted by row id, each once (a damaged memory's) were loaded as they
    came: a row twice was held twice (and written twice), a row out of order could be lost
    to lookups. Now one clear error; arrays of unequal length are refused too."""
    from engramctl.errors import EngramError

    table = feed_one(RowTable(2, end=10**6), np.arange(0, 10**6, 997))
    keys, tokens, counts, totals = table.extract()
    n = keys.shape[0]
    for pick in (np.r_[0:5, 4:n], np.arange(n)[::-1]):  # a row twice; rows out of order
        with pytest.raises(EngramError, match="not sorted by row id"):
            RowTable(2, end=10**6).load(keys[pick], tokens[pick], counts[pick], totals[pick])
    with pytest.raises(ValueError, match="as many rows"):
        RowTable(2, end=10**6).load(keys, tokens[:-1], counts, totals)
    again = RowTable(2, end=10**6)
    again.load(keys, tokens, counts, totals)
    for a, b in zip(again.extract(), table.extract(), strict=True):
        np.testing.assert_array_equal(a, b)


def feed_one(table: RowTable, rows) -> RowTable:
    table.add(rows, rows % 5)
    return table


def test_add_refuses_targets_or_keep_of_another_length():
    """The kernels read ``targets[p]`` and ``keep[p]`` for each of the P pairs unchecked: a
    shorter array was read past its end (tokens from whatever memory followed)."""
    table = RowTable(2, end=100)
    with pytest.raises(ValueError, match=r"\(10, 1\), \(5,\), \(10,\)"):
        table.add(np.arange(10), np.arange(5))
    with pytest.raises(ValueError, match="keep"):
        table.add(np.arange(10), np.arange(10), np.ones(3, bool))
    with pytest.raises(ValueError, match="rows"):
        table.add(np.zeros((2, 2, 2), np.int64), np.arange(2))
    assert table.occupied == 0


def test_an_infinite_ahead_is_cut_to_max_bytes():
    """``ahead`` inf (input to come unknown, taken as unbounded) raised OverflowError turning
    the projected rows into an int; now the projection stops at the span, then at
    ``max_bytes``."""
    rows = np.arange(0, 10**9, 10**5, dtype=np.int64)
    table = RowTable(2, end=10**9, max_bytes=1 << 20)
    table.add(rows, rows % 7, ahead=float("inf"))
    table.add(rows + 1, rows % 7, ahead=float("inf"))
    table.check()
    assert table.nbytes <= 1 << 20
    assert table.occupied == 2 * rows.shape[0]
