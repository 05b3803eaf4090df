"""--estimate: the numba HyperLogLog held to Apache DataSketches, exact merges, accuracy on the
sample corpus (distinct within 2% per order, colliding distinct fractions within 1 pp)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from engramctl.errors import UsageError
from engramctl.stats.counter import NgramCounter
from engramctl.stats.partition import fmix64_reference as fmix64
from engramctl.stats.run import load_matching_tokenizer, plan_hash_stats, run_hash_stats
from engramctl.stats.sketch import (
    NgramSketch,
    expected_max_load,
    hll_estimate,
    hll_update,
    ideal_order_stats,
    relative_standard_error,
)
from tests.conftest import SAMPLE


@pytest.mark.parametrize("precision", [12, 16])
@pytest.mark.parametrize("n", [50, 20_000, 400_000])
def test_hll_agrees_with_datasketches(precision, n):
    datasketches = pytest.importorskip("datasketches")
    keys = np.random.default_rng(n).integers(0, 2**63, n, dtype=np.int64)
    keys = np.concatenate([keys, keys[: n // 2]])  # repeats do not count
    registers = np.zeros(1 << precision, np.uint8)
    hll_update(registers, fmix64(keys.astype(np.uint64)))
    theirs = datasketches.hll_sketch(precision, datasketches.tgt_hll_type.HLL_8)
    for key in keys.tolist():
        theirs.update(key)
    ours, reference = hll_estimate(registers), theirs.get_estimate()
    rse = relative_standard_error(precision)
    assert abs(ours / n - 1) < 5 * rse
    assert abs(reference / n - 1) < 5 * rse
    assert abs(ours / reference - 1) < 7 * rse
    assert hll_estimate(np.zeros(1 << precision, np.uint8)) == 0


def _stream(seed, length=30_000):
    rng = np.random.default_rng(seed)
    ids = (rng.zipf(1.3, length) % 20_000).astype(np.int64)
    cuts = np.flatnonzero(rng.random(length) < 0.002)
    offsets = np.concatenate([[0], cuts, [length]])
    offsets = np.unique(offsets)
    return ids, offsets


def _feed(obj, ids, offsets, pieces):
    starts = np.linspace(0, len(offsets) - 1, pieces + 1).astype(int)
    for a, b in zip(starts[:-1], starts[1:], strict=True):
        if b > a:
            part = offsets[a : b + 1]
            obj.add(ids[part[0] : part[-1]], part - part[0], np.ones(b - a, np.uint8))
    return obj


def test_sketch_estimates_the_counter_and_merges_exactly(ds_vocab, demo_layout):
    ids, offsets = _stream(1)
    kw = dict(max_ngram=4, pad=demo_layout.pad_canonical_id(ds_vocab))
    exact = _feed(NgramCounter(ds_vocab, **kw), ids, offsets, 3)
    whole = _feed(NgramSketch(ds_vocab, **kw), ids, offsets, 1)
    halves = [NgramSketch(ds_vocab, **kw) for _ in range(2)]
    mid = len(offsets) // 2
    _feed(halves[0], ids, offsets[: mid + 1], 2)
    _feed(halves[1], ids[offsets[mid] :], offsets[mid:] - offsets[mid], 2)
    merged = halves[0].merge(halves[1])
    for n in range(2, 5):
        assert abs(whole.distinct(n) / exact.distinct(n) - 1) < 5 * whole.relative_standard_error
        assert np.array_equal(merged.registers[n], whole.registers[n])
    assert (
        (merged.tokens, merged.documents)
        == (whole.tokens, whole.documents)
        == (
            exact.tokens,
            exact.documents,
        )
    )


def test_sketch_registers_equal_the_reference(ds_vocab, demo_layout):
    """The registers are those of hll_update on the key hashes of the exact distinct n-grams."""
    from engramctl.stats.partition import key_hash_reference

    ids, offsets = _stream(2, 8000)
    kw = dict(max_ngram=4, pad=demo_layout.pad_canonical_id(ds_vocab))
    exact = _feed(NgramCounter(ds_vocab, **kw), ids, offsets, 2)
    sketch = _feed(NgramSketch(ds_vocab, precision=10, **kw), ids, offsets, 3)
    for n in range(2, 5):
        registers = np.zeros(1 << 10, np.uint8)
        hll_update(registers, key_hash_reference(exact.entries(n)[0], exact.bits))
        assert np.array_equal(registers, sketch.registers[n])


def test_ideal_figures():
    stats = ideal_order_stats(2, occurrences=1000, distinct=500, head_rows=[1009, 2003])
    head = stats.heads[0]
    assert head.occupied_rows == round(head.expected_occupied_rows)
    assert abs(head.colliding_distinct_fraction - head.expected_colliding_distinct_fraction) < 2e-3
    assert abs(stats.all_heads_colliding_occurrence_fraction
               - stats.expected_all_heads_colliding_occurrence_fraction) < 1e-3  # fmt: skip
    assert expected_max_load(10, 0) == 0
    assert expected_max_load(1_000_000, 10) == 1
    assert 2 <= expected_max_load(1_000_000, 1_000_000) <= 12
    assert expected_max_load(1000, 100_000) > 100


@pytest.fixture(scope="module")
def sample_reports(ds_vocab, ds_layout):
    tokenizer = load_matching_tokenizer("deepseek-v4", ds_vocab)
    inputs = [SAMPLE / "train.jsonl"]
    args = dict(layout=ds_layout, layer_ids=(1,), sweep=(100_000, 1_000_000))
    exact = run_hash_stats(plan_hash_stats(inputs, **args), vocab=ds_vocab, tokenizer=tokenizer)
    estimate = run_hash_stats(plan_hash_stats(inputs, estimate=True, **args), vocab=ds_vocab,
                              tokenizer=tokenizer)  # fmt: skip
    return exact, estimate


@pytest.mark.slow
def test_estimate_accuracy_on_the_sample_corpus(sample_reports):
    exact, estimate = sample_reports
    data = json.loads(estimate.to_json())
    assert data["estimated"] is True and 0 < data["relative_standard_error"] < 0.01
    assert data["tokens"] == exact.tokens and len(data["sweep"]) == 2
    points = [(exact.layers, estimate.layers)]
    points += [(a.layers, b.layers) for a, b in zip(exact.sweep, estimate.sweep, strict=True)]
    for ex, es in points:
        for n, order in ex[1].items():
            got = es[1][n]
            assert abs(got.distinct / order.distinct - 1) < 0.02
            assert got.occurrences == order.occurrences
            for a, b in zip(order.heads, got.heads, strict=True):
                assert abs(a.colliding_distinct_fraction - b.colliding_distinct_fraction) < 0.01
                assert abs(a.occupancy - b.occupancy) < 0.01
                assert b.row_load_histogram == ()
                # occurrence-weighted: whether the few most frequent n-grams happen to share a
                # row swings it; no sketch of distinct counts can know (docs/hash-stats.md)
                off = abs(a.colliding_occurrence_fraction - b.colliding_occurrence_fraction)
                assert off < 0.04
            assert abs(order.all_heads_colliding_occurrence_fraction
                       - got.all_heads_colliding_occurrence_fraction) < 0.02  # fmt: skip


def test_estimate_refuses_exact_only_options(ds_layout):
    with pytest.raises(UsageError, match="drop --partitions"):
        plan_hash_stats([SAMPLE / "heldout.jsonl"], layout=ds_layout, estimate=True, partitions=2)
