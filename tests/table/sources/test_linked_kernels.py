"""The linked gather and the NaN-row finder agree with their numpy specifications."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from engramctl.table.core.fp8_check import first_invalid_row, first_invalid_row_reference
from engramctl.table.sources.linked import gather_linked, gather_linked_reference


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 40), st.integers(0, 60), st.integers(0, 2**31))
def test_linked_gather_matches_reference(rows, n, seed):
    rng = np.random.default_rng(seed)
    weight = rng.integers(0, 256, size=(rows, 64), dtype=np.uint8)
    scale = rng.integers(0, 256, size=(rows, 2), dtype=np.uint8)
    ids = rng.integers(0, rows, size=n).astype(np.int64)
    out = np.empty((n, 66), np.uint8)
    np.testing.assert_array_equal(
        gather_linked(weight, scale, ids, out), gather_linked_reference(weight, scale, ids)
    )


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 30), st.integers(0, 2**31), st.floats(0, 0.01))
def test_first_invalid_row_matches_reference(rows, seed, rate):
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 256, size=(rows, 66), dtype=np.uint8)
    data[:, :64][(data[:, :64] & 0x7F) == 0x7F] = 0
    data[:, 64:][data[:, 64:] == 255] = 0
    poison = rng.random(data.shape) < rate
    data[:, :64][poison[:, :64]] = rng.choice([0x7F, 0xFF])
    data[:, 64:][poison[:, 64:]] = 255
    assert first_invalid_row(data, 64) == first_invalid_row_reference(data, 64)


def test_first_invalid_row_hand_worked():
    rows = np.zeros((4, 33), np.uint8)
    assert first_invalid_row(rows, 32) == (-1, -1)
    rows[3, 5] = 0xFF  # negative NaN code
    rows[2, 32] = 255  # NaN scale, an earlier row
    assert first_invalid_row(rows, 32) == (2, 32)
