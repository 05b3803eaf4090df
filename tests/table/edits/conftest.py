"""Fixtures of the commit tests: small tables of every base kind."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.table.conftest import make


@pytest.fixture
def fp8_table(tmp_path, small_layout):
    """A lazy fp8 table (rows are init values until written)."""
    return Path(make(tmp_path / "t.zarr", small_layout, dtype="float8_e4m3fn", lazy=True).path)


@pytest.fixture
def f32_table(tmp_path, small_layout):
    """A fully written float32 table (every chunk a file)."""
    return Path(make(tmp_path / "t.zarr", small_layout).path)
