"""Helpers shared by the benchmark scripts (not a benchmark itself: run_all skips it)."""

from __future__ import annotations


def layout_with_rows(target_rows: int):
    """A demo-shaped layout (one layer, 2 orders x 8 heads) of about ``target_rows`` rows."""
    from engramctl import EngramLayout

    per_head = max(2, target_rows // 16)
    return EngramLayout(
        ngram_vocab=(per_head, per_head),
        max_ngram=3,
        heads=8,
        layers=(1,),
        seed=0,
        pad_id=2,
        vocab_size=100_000,
    )
