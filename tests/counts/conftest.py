"""Fixtures of the count-memory tests: a token-id corpus over the tiny vocab and its layout."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import make_layout


def write_token_corpus(path: Path, docs: list[np.ndarray]) -> Path:
    """JSON Lines with an ``ids`` field per document."""
    path.write_text("".join(json.dumps({"ids": [int(x) for x in d]}) + "\n" for d in docs))
    return path


def random_docs(seed: int, vocab_size: int, count: int = 30, low: int = 1, high: int = 60):
    rng = np.random.default_rng(seed)
    # a skewed distribution, so counts repeat and discounts have counts of counts
    weights = 1.0 / np.arange(1, vocab_size + 1)
    weights /= weights.sum()
    return [rng.choice(vocab_size, size=int(rng.integers(low, high)), p=weights)
            for _ in range(count)]  # fmt: skip


@pytest.fixture
def wide_layout(tiny_vocab):
    """Two layers, orders 2..3, 2 heads of ~20k rows: no collisions for a few thousand n-grams."""
    return make_layout((20011, 20021), vocab_size=tiny_vocab.canonical_vocab_size,
                       layers=(1, 4))  # fmt: skip


def resolved(layout):
    from engramctl.layout import ResolvedLayout

    return ResolvedLayout(layout, layout.layers, None, None, "test")
