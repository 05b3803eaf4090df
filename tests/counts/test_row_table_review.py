"""Adversarial cases of the build's row table (:mod:`engramctl.counts.rowtable`) found in a
review: each failed before the fix it came with."""

from __future__ import annotations

import time

import numpy as np

from engramctl.counts import rowtable
from engramctl.counts.rowtable import RowTable

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
