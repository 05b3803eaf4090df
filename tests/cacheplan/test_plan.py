"""Traces cut as eval cuts them, and plans on a real corpus against plain simulations."""

from __future__ import annotations

import math

import numpy as np
import pytest

from engramctl.cacheplan.lru import lru_hits_reference, pager_hits_reference
from engramctl.cacheplan.opt import opt_hits_reference
from engramctl.cacheplan.plan import plan_cache
from engramctl.cacheplan.static import static_hits_reference
from engramctl.cacheplan.trace import Workload, build_traces, read_workload
from engramctl.corpus.stream import eos_id, lm_windows, read_corpus_stream
from engramctl.errors import EngramError, UsageError
from engramctl.hashing import NgramHasher
from engramctl.layout import EngramLayout
from engramctl.tokenizer import load_tokenizer
from tests.conftest import REPO

BENCH = REPO / "sample_data" / "bench" / "lm_heldout.jsonl"


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer("deepseek-v4")[0]


@pytest.fixture(scope="module")
def small_hasher(ds_vocab):
    layout = EngramLayout(
        ngram_vocab=(1009, 1013), max_ngram=3, heads=2, layers=(1, 4), seed=0, pad_id=2,
        vocab_size=ds_vocab.canonical_vocab_size,
    )  # fmt: skip
    return NgramHasher(layout, ds_vocab)


@pytest.fixture(scope="module")
def workload(tokenizer):
    return read_workload([BENCH], tokenizer=tokenizer, seq_len=32)


def test_workload_is_cut_as_eval_cuts_it(workload, tokenizer):
    stream = read_corpus_stream(BENCH, tokenizer)
    windows, _ = lm_windows(stream.ids, 32, pad=eos_id(tokenizer))
    np.testing.assert_array_equal(workload.sequences, windows[:, :-1])
    assert workload.tokens == len(stream.ids) - 1 and workload.documents == stream.documents


def test_npy_rows_are_sequences_and_batches_keep_their_order(tmp_path, tokenizer, small_hasher):
    rows = np.random.default_rng(1).integers(3, 500, size=(7, 10))
    np.save(tmp_path / "w.npy", rows)
    workload = read_workload([tmp_path / "w.npy"], tokenizer=tokenizer, seq_len=999)
    np.testing.assert_array_equal(workload.sequences, rows)
    traces = build_traces(workload, small_hasher, batch=3, layers=(1, 4), warmup_batches=1)
    for layer, trace in traces.items():
        assert trace.batches == 3 and trace.lookups.tolist() == [
            120,
            120,
            40,
        ]  # rows x 10 x 4 heads
        for k in range(3):
            expected = small_hasher.hash_reference(rows[3 * k : 3 * k + 3], table_rows=True)
            got = trace.rows[trace.ids[trace.bounds[k] : trace.bounds[k + 1]]]
            np.testing.assert_array_equal(got, np.unique(expected[layer]))
        warm = small_hasher.hash_reference(rows[:3], table_rows=True)[layer].ravel()
        rows_, counts = np.unique(warm, return_counts=True)
        np.testing.assert_array_equal(trace.warm_rows, rows_)
        np.testing.assert_array_equal(trace.warm_lookups, counts)


@pytest.mark.slow
def test_plan_on_a_real_corpus_equals_plain_simulations(workload, small_hasher):
    plan = plan_cache(
        workload=workload, workload_paths=[BENCH], hasher=small_hasher, layer_ids=(1, 4),
        dim=64, dtype="float32", batch=8, seq_len=32, sizes=[50, 300, 1000, 3000],
        warmup_fraction=0.25, tokens_per_s=100.0,
    )  # fmt: skip
    traces = build_traces(
        workload, small_hasher, batch=8, layers=(1, 4), warmup_batches=plan.warmup_batches
    )
    assert plan.warmup_batches == math.ceil(0.25 * plan.batches)
    for layer, lp in plan.layers.items():
        trace = traces[layer]
        start = int(trace.bounds[plan.warmup_batches])
        rows = trace.rows[trace.ids]
        assert lp.accesses == len(rows) - start
        counts: dict = {}
        for row, n in zip(trace.warm_rows.tolist(), trace.warm_lookups.tolist(), strict=True):
            counts[row] = counts.get(row, 0) + n
        for i, size in enumerate(plan.sizes):
            lru = lp.curves["lru"][i]
            assert lru.hits == lru_hits_reference(rows, size, count_from=start)
            assert lru.bytes_per_token == pytest.approx(
                (lp.accesses - lru.hits) * 256 / plan.counted_positions
            )
            assert lru.bandwidth == pytest.approx(lru.bytes_per_token * 100)
            pager = pager_hits_reference(
                rows, trace.bounds, size, count_from_batch=plan.warmup_batches
            )
            assert lp.curves["pager"][i].hits == pager
            assert (pager is None) == (size < lp.pager_min_rows)
            assert lp.curves["static"][i].hits == static_hits_reference(counts, rows[start:], size)
            assert lp.curves["opt"][i].hits >= max(lru.hits, lp.curves["static"][i].hits)
        # reach: the smallest LRU size with 50% hits, checked on either side
        at = lp.reach["lru"]["50%"]
        if at is not None:
            assert lru_hits_reference(rows, at, count_from=start) >= 0.5 * lp.accesses
            assert lru_hits_reference(rows, at - 1, count_from=start) < 0.5 * lp.accesses
    doc = plan.to_dict()
    assert set(doc["layers"]) == {"1", "4"} and len(doc["all_layers"]["lru"]) == 4


def test_opt_on_a_real_prefix_equals_brute_force(workload, small_hasher):
    short = Workload(workload.sequences[:2, :3], 6, 1, "tiny")
    traces = build_traces(short, small_hasher, batch=1, layers=(1,))
    trace = traces[1]
    from engramctl.cacheplan.opt import opt_hits

    for size in (1, 2, 3, 5):
        got = opt_hits(trace.ids, trace.distinct, [size], count_from=int(trace.bounds[1]))[0]
        rows = trace.rows[trace.ids]
        assert got == opt_hits_reference(rows, size, count_from=int(trace.bounds[1]))


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"sizes": [0, 5]}, UsageError, "at least 1 row"),
        ({"sizes": [-3]}, UsageError, "at least 1 row"),
        ({"warmup_fraction": 1.0}, UsageError, r"\[0, 1\)"),
        ({"warmup_fraction": -0.1}, UsageError, r"\[0, 1\)"),
        ({"tokens_per_s": 0.0}, UsageError, "positive"),
        ({"batch": 10_000}, UsageError, "larger than the workload"),
        ({"batch": 200, "warmup_fraction": 0.5}, EngramError, "leaving 1"),
        ({"policies": ("lru", "fifo")}, UsageError, "--policy"),
    ],
)
def test_bad_arguments(workload, small_hasher, kwargs, error, message):
    args = dict(
        workload=workload, workload_paths=[BENCH], hasher=small_hasher, layer_ids=(1,), dim=64,
        dtype="float32", batch=8, seq_len=32,
    )  # fmt: skip
    with pytest.raises(error, match=message):
        plan_cache(**{**args, **kwargs})
