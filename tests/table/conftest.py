"""Fixtures of the table tests: a small two-layer layout and a table maker."""

from __future__ import annotations

import pytest

from engramctl.table.build.create import create_table
from tests.conftest import make_layout

FP = "sha256:0123456789abcdef"


@pytest.fixture(scope="module")
def small_layout():
    """Two layers of 4 heads of ~500 rows: 2,056 and 2,208 rows, 7 and 8 chunks of 300."""
    return make_layout((500, 500), layers=(1, 15), vocab_size=1000)


def make(path, layout, **kw):
    args = dict(
        layout=layout, vocab_fingerprint=FP, dim=64, dtype="float32", chunk_rows=300, workers=2
    )
    args.update(kw)
    return create_table(path, **args)
