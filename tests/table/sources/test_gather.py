"""The gather kernel against the numpy specification."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engramctl.errors import EngramError
from engramctl.table.sources._gather import (
    check_row_ids,
    chunk_address,
    gather_rows,
    gather_rows_reference,
    word_dtype,
)


def _chunks(rng, n_chunks, chunk_rows, width, dtype=np.uint32):
    return [rng.integers(0, 2**31, (chunk_rows, width)).astype(dtype) for _ in range(n_chunks)]


def addresses(chunks, loaded=None):
    loaded = [True] * len(chunks) if loaded is None else loaded
    rows, width = chunks[0].shape
    return np.array(
        [
            chunk_address(c, rows, width, c.dtype) if ok else 0
            for c, ok in zip(chunks, loaded, strict=True)
        ],
        dtype=np.int64,
    )


def test_hand_worked():
    chunks = [np.array([[1, 2], [3, 4]], np.uint16), np.array([[5, 6], [7, 8]], np.uint16)]
    out = np.empty((3, 2), np.uint16)
    missing = gather_rows(addresses(chunks), 2, np.array([3, 0, 2]), out)
    assert out.tolist() == [[7, 8], [1, 2], [5, 6]] and missing.size == 0


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 9), st.integers(1, 17), st.integers(0, 200), st.integers(0, 2**31))
def test_matches_reference(n_chunks, chunk_rows, n, seed):
    rng = np.random.default_rng(seed)
    chunks = _chunks(rng, n_chunks, chunk_rows, 5)
    ids = rng.integers(0, n_chunks * chunk_rows, n)
    out = np.empty((n, 5), np.uint32)
    gather_rows(addresses(chunks), chunk_rows, ids, out)
    np.testing.assert_array_equal(out, gather_rows_reference(chunks, chunk_rows, ids))


def test_unloaded_chunks_are_reported_and_untouched():
    rng = np.random.default_rng(1)
    chunks = _chunks(rng, 4, 8, 3)
    state = np.array([1, 0, 1, 0], np.uint8)
    ids = rng.integers(0, 32, 100)
    out = np.full((100, 3), 99, np.uint32)
    missing = gather_rows(addresses(chunks, state.astype(bool)), 8, ids, out)
    expected_missing = np.flatnonzero(state[ids // 8] == 0)
    np.testing.assert_array_equal(missing, expected_missing)
    assert (out[missing] == 99).all()
    present = np.setdiff1d(np.arange(100), missing)
    np.testing.assert_array_equal(out[present], gather_rows_reference(chunks, 8, ids[present]))


def test_check_row_ids_names_first_bad_id():
    assert check_row_ids(np.array([[1, 2]]), 5).tolist() == [1, 2]
    with pytest.raises(EngramError, match=r"row id 7 \(position 2\) is out of range.*5 rows"):
        check_row_ids([0, 4, 7, -1], 5)
    with pytest.raises(EngramError, match="row id -1"):
        check_row_ids([-1], 5)
    with pytest.raises(EngramError, match="integers"):
        check_row_ids(np.array([0.5]), 5)


def test_unsafe_inputs_are_refused():
    chunks = [np.zeros((4, 2), np.uint32)]
    with pytest.raises(EngramError, match="inside the chunks"):
        gather_rows(addresses(chunks), 4, np.array([4]), np.empty((1, 2), np.uint32))
    with pytest.raises(EngramError, match="inside the chunks"):
        gather_rows(addresses(chunks), 4, np.array([-1]), np.empty((1, 2), np.uint32))
    with pytest.raises(EngramError, match="C-contiguous"):
        chunk_address(np.zeros((4, 4), np.uint32)[:, :2], 4, 2, np.uint32)


def test_word_dtype():
    assert word_dtype(512) == np.uint64 and word_dtype(264) == np.uint64
    assert word_dtype(132) == np.uint32 and word_dtype(66) == np.uint16
    assert word_dtype(33) == np.uint8
