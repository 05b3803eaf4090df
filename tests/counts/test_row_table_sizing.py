"""The row table's fast paths held to their plain forms: sized at once from an estimate (or cut
to ``max_bytes``) it holds the same summaries as grown step by step, and its write-out (a
sequential sweep of each segment, runs sorted in place) is ``argsort`` of the keys."""

from __future__ import annotations

import numpy as np
import pytest

from engramctl.counts.rowtable import RowTable

STARTS = np.array([0, 300, 10**6], np.int64)  # a dense column (unigram-like), two hashed ones
END = 10**6 + 10**9


def _pairs(seed, P=4000, G=3):
    rng = np.random.default_rng(seed)
    dense = rng.integers(0, 300, size=(P, 1))  # a dense column (unigram-like)
    sparse = 10**6 + rng.choice(10**9, size=(P, G - 1))  # hashed, spread over a huge range
    return np.concatenate([dense, sparse], 1).astype(np.int64), rng.integers(0, 50, P)


@pytest.mark.parametrize("ahead", [1.0, 3.0, 100.0])
@pytest.mark.parametrize("max_bytes", [0, 4096])
def test_sizing_does_not_change_the_summaries(ahead, max_bytes):
    """Segments grown ahead for rows to come (or cut to ``max_bytes``) hold the same summaries
    as segments grown only for the rows at hand."""
    rows, targets = _pairs(int(min(ahead, 7)))
    plain = RowTable(4, STARTS, END)
    sized = RowTable(4, STARTS, END, max_bytes=max_bytes)
    for part in np.array_split(np.arange(rows.shape[0]), 4):
        plain.add(rows[part], targets[part])
        sized.add(rows[part], targets[part], ahead=ahead)
    sized.check()
    for a, b in zip(plain.extract(), sized.extract(), strict=True):
        np.testing.assert_array_equal(a, b)
    if max_bytes:  # the projection was cut: no more than growth for the rows at hand
        assert sized.nbytes == plain.nbytes
    elif ahead > 1:
        assert sized.nbytes > plain.nbytes


@pytest.mark.parametrize("seed", [0, 1])
def test_the_sorted_write_out_equals_argsort(seed):
    rows, targets = _pairs(seed)
    table = RowTable(2, STARTS, END)
    for part in np.array_split(np.arange(rows.shape[0]), 3):  # runs of rows from 3 batches
        table.add(rows[part], targets[part])
    blocks = list(table.sorted_blocks())
    keys = np.concatenate([b[0] for b in blocks])
    want = np.unique(rows)
    np.testing.assert_array_equal(keys, want)
    assert len(blocks) == 2  # a block per segment that holds rows (300..10**6 holds none)
    assert list(RowTable(2, STARTS, END).sorted_blocks()) == []


def test_the_appender_crc_equals_the_files(tmp_path):
    """The row arrays' CRC-32s are taken as they are written (header rewritten at the end,
    combined in): the manifest's, as reading the file back gives."""
    from engramctl.counts.accumulate import NpyAppender
    from engramctl.counts.store import crc32_of_file

    writer = NpyAppender(tmp_path / "a.npy", np.uint32, (3,))
    for n in (0, 5, 1000):
        writer.append(np.arange(3 * n, dtype=np.uint32).reshape(n, 3))
    writer.close()
    assert writer.crc == crc32_of_file(tmp_path / "a.npy")
    assert np.load(tmp_path / "a.npy").shape == (1005, 3)
