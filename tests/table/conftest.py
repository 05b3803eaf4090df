"""Fixtures of the table tests: a small two-layer layout and a table maker."""

from __future__ import annotations

import pytest

from engramctl import EngramLayout
from engramctl.table.create import create_table

FP = "sha256:0123456789abcdef"


@pytest.fixture(scope="module")
def small_layout():
    """Two layers of 4 heads of ~500 rows: 2,056 and 2,208 rows, 7 and 8 chunks of 300."""
    return EngramLayout(
        ngram_vocab=(500, 500),
        max_ngram=3,
        heads=2,
        layers=(1, 15),
        seed=0,
        pad_id=2,
        vocab_size=1000,
    )


def make(path, layout, **kw):
    args = dict(
        layout=layout, vocab_fingerprint=FP, dim=64, dtype="float32", chunk_rows=300, workers=2
    )
    args.update(kw)
    return create_table(path, **args)
