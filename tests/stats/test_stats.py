"""Collision statistics: hand-worked figures, numba against plain-Python oracles, invariances."""

from __future__ import annotations

from collections import Counter, defaultdict

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engramctl import EngramLayout
from engramctl.hashing import hash_layer_reference
from engramctl.stats.counter import NgramCounter, estimate_memory
from engramctl.stats.figures import head_counts_reference, head_figures, order_stats
from engramctl.stats.report import (
    HashStatsReport,
    expected_colliding_fraction,
    expected_occupied_rows,
)
from engramctl.stats.run import finalize


def test_order_stats_hand_worked():
    # mix = tok_0 * 1 ^ tok_1 * 2: A=(1,0)->1 x3, B=(2,0)->2 x1, C=(3,0)->3 x2, D=(4,0)->4 x1
    grams = np.array([[1, 0], [2, 0], [3, 0], [4, 0]])
    counts = np.array([3, 1, 2, 1])
    stats = order_stats(grams, counts, np.array([1, 2]), [2, 3], order=2)
    two, three = stats.heads
    # p=2: row 0 {B, D} (2 occ.), row 1 {A, C} (5 occ.)
    assert (two.occupied_rows, two.collided_rows, two.colliding_distinct) == (2, 2, 4)
    assert (two.colliding_occurrences, two.max_row_load) == (7, 2)
    assert two.row_load_histogram == (0, 0, 2)
    # p=3: row 0 {C} (2), row 1 {A, D} (4), row 2 {B} (1)
    assert (three.occupied_rows, three.collided_rows, three.colliding_distinct) == (3, 1, 2)
    assert (three.colliding_occurrences, three.max_row_load) == (4, 2)
    assert three.row_load_histogram == (0, 2, 1)
    assert three.colliding_distinct_fraction == 0.5
    assert three.colliding_occurrence_fraction == 4 / 7
    # A and D collide in both heads: 3 + 1 of 7 occurrences
    assert (stats.distinct, stats.occurrences, stats.all_heads_colliding_occurrences) == (4, 7, 4)
    assert stats.all_heads_colliding_occurrence_fraction == 4 / 7


def test_negative_mix_uses_floor_modulo():
    # mix = -1 -> row 2 of 3 (Python floor modulo), mix = 5 -> row 2: they share a row
    stats = order_stats(
        np.array([[-1, 0], [5, 0]]), np.array([1, 1]), np.array([1, 1]), [3], order=2
    )
    assert stats.heads[0].collided_rows == 1
    assert stats.heads[0].row_load_histogram == (2, 0, 1)


def test_ideal_expectations():
    assert expected_occupied_rows(2, 2) == pytest.approx(1.5)
    assert expected_occupied_rows(10, 0) == 0
    assert expected_colliding_fraction(2, 2) == pytest.approx(0.5)
    assert expected_colliding_fraction(1000, 1) == 0
    # a uniform random "hash" lands within a few standard deviations of the expectation
    rng = np.random.default_rng(3)
    p, d = 10007, 8000
    mix = rng.choice(2**40, size=d, replace=False)
    stats = order_stats(np.stack([mix, np.zeros(d, np.int64)], 1), np.ones(d), [1, 1], [p], order=2)
    head = stats.heads[0]
    assert abs(head.occupied_rows - head.expected_occupied_rows) < 5 * np.sqrt(d)
    assert abs(head.colliding_distinct_fraction - head.expected_colliding_distinct_fraction) < 0.05


@pytest.mark.parametrize("p", [7, 11, 101, 65537, 1_000_003])
def test_head_kernel_matches_numpy_reference(p):
    rng = np.random.default_rng(p)
    mix = rng.integers(-(2**63), 2**63 - 1, size=3000, dtype=np.int64)
    mix[:500] = mix[500:1000]  # repeated mixes (the same row in every head)
    counts = rng.integers(1, 50, size=3000).astype(np.int64)
    flags = np.ones(3000, dtype=np.bool_)
    loads = np.zeros(p + 5, dtype=np.uint8)
    for _ in range(2):  # the scratch array comes back all zero, ready for the next head
        figures, histogram = head_figures(mix, counts, p, flags, loads)
        assert not loads.any()
    ref_figures, loads, shared = head_counts_reference(mix, counts, p)
    assert figures == ref_figures
    assert histogram == tuple(np.bincount(loads).tolist())
    np.testing.assert_array_equal(flags, shared)


# ---------------------------------------------------------------------- counter by hand
def entry_dict(counter, order):
    grams, counts = counter.entries(order)
    return dict(zip(map(tuple, grams.tolist()), counts.tolist(), strict=True))


def test_counter_hand_worked(tiny_vocab):
    ids = {tok: i for i, tok in enumerate(tiny_vocab.tokens)}
    x, y = ids["cat"], ids["the"]
    cx, cy = (int(tiny_vocab.canonical_ids[i]) for i in (x, y))
    pad = int(tiny_vocab.canonical_ids[0])
    counter = NgramCounter(tiny_vocab, max_ngram=3, pad=pad)
    # documents [x y x y] and [y]; never joined
    assert counter.add(np.array([x, y, x, y, y]), np.array([0, 4, 5]), np.array([1, 1])) == -1
    bigrams = entry_dict(counter, 2)
    assert bigrams == {(cx, pad): 1, (cy, cx): 2, (cx, cy): 1, (cy, pad): 1}
    trigrams = entry_dict(counter, 3)
    assert trigrams == {
        (cx, pad, pad): 1,
        (cy, cx, pad): 1,
        (cx, cy, cx): 1,
        (cy, cx, cy): 1,
        (cy, pad, pad): 1,
    }
    assert (counter.tokens, counter.documents) == (5, 2)
    assert counter.add(np.array([1, 99]), np.array([0, 2]), np.array([1])) == 1  # 99: no such id


# ------------------------------------------------------------------ plain-Python oracle
def oracle(docs, vocab, layout, layer_ids):
    """Every figure by dictionaries, rows from the numpy hashing specification."""
    pad = layout.pad_canonical_id(vocab)
    result = {}
    for layer in layer_ids:
        mult, rows = layout.multipliers(layer), layout.head_rows(layer)
        per_order = {}
        for n in range(2, layout.max_ngram + 1):
            occurrences = Counter()
            head_row = {}
            for doc in docs:
                canonical = vocab.apply(np.asarray(doc))[None]
                hashed = hash_layer_reference(canonical, mult, rows, layout.heads, pad)[0]
                padded = [pad] * (layout.max_ngram - 1) + canonical[0].tolist()
                for t in range(len(doc)):
                    k0 = t + layout.max_ngram - 1
                    gram = tuple(padded[k0 - k] for k in range(n))
                    occurrences[gram] += 1
                    cols = slice((n - 2) * layout.heads, (n - 1) * layout.heads)
                    head_row[gram] = hashed[t, cols].tolist()
            heads = []
            collided_all = dict.fromkeys(occurrences, True)
            for h in range(layout.heads):
                members = defaultdict(list)
                for gram in occurrences:
                    members[head_row[gram][h]].append(gram)
                shared = [g for m in members.values() if len(m) > 1 for g in m]
                for gram in occurrences:
                    if gram not in shared:
                        collided_all[gram] = False
                heads.append(
                    (
                        len(members),
                        sum(len(m) > 1 for m in members.values()),
                        len(shared),
                        sum(occurrences[g] for g in shared),
                        max(len(m) for m in members.values()),
                    )
                )
            all_heads = sum(occurrences[g] for g, flag in collided_all.items() if flag)
            per_order[n] = (len(occurrences), sum(occurrences.values()), all_heads, heads)
        result[layer] = per_order
    return result


def summarize(layers):
    return {
        layer: {
            n: (
                s.distinct,
                s.occurrences,
                s.all_heads_colliding_occurrences,
                [
                    (
                        h.occupied_rows,
                        h.collided_rows,
                        h.colliding_distinct,
                        h.colliding_occurrences,
                        h.max_row_load,
                    )
                    for h in s.heads
                ],
            )  # fmt: skip
            for n, s in orders.items()
        }
        for layer, orders in layers.items()
    }


def count_docs(docs, vocab, layout, *, threads=1, cuts=()):
    counter = NgramCounter(
        vocab, max_ngram=layout.max_ngram, pad=layout.pad_canonical_id(vocab), threads=threads
    )
    flat = np.concatenate(docs)
    lengths = [len(d) for d in docs]
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    starts = np.ones(len(docs), dtype=np.uint8)
    # optional cuts inside documents: continuation pieces (doc_start 0) carry context
    bounds = sorted(set(offsets.tolist()) | set(cuts))
    piece_starts = np.array([1 if b in set(offsets[:-1].tolist()) else 0 for b in bounds[:-1]])
    assert counter.add(flat, np.array(bounds), piece_starts if cuts else starts) == -1
    return counter


@pytest.mark.parametrize("max_ngram", [3, 4])
def test_counter_matches_oracle(max_ngram, ds_vocab):
    layout = EngramLayout(
        ngram_vocab=(60, 97, 130)[: max_ngram - 1], max_ngram=max_ngram, heads=3, layers=(1, 4),
        seed=7, pad_id=2, vocab_size=ds_vocab.canonical_vocab_size,
    )  # fmt: skip
    rng = np.random.default_rng(max_ngram)
    docs = [rng.integers(0, 40, size=rng.integers(1, 120)) for _ in range(25)]
    docs.append(rng.integers(0, ds_vocab.source_vocab_size, size=3000))  # many distinct: grows
    counter = count_docs(docs, ds_vocab, layout)
    layers, _ = finalize(counter, layout, layout.layers)
    assert summarize(layers) == oracle(docs, ds_vocab, layout, layout.layers)
    assert counter.tokens == sum(len(d) for d in docs)
    assert counter.nbytes <= estimate_memory(
        tokens=counter.tokens, max_ngram=max_ngram, canonical_vocab_size=layout.vocab_size,
        largest_head_rows=0,
    )  # fmt: skip


@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_invariant_under_chunking_threads_and_merge_order(data, ds_vocab):
    layout = EngramLayout(
        ngram_vocab=(31, 37, 41), max_ngram=4, heads=2, layers=(0,), seed=1, pad_id=2,
        vocab_size=ds_vocab.canonical_vocab_size,
    )  # fmt: skip
    seed = data.draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    docs = [
        rng.integers(0, 30, size=rng.integers(1, 40)) for _ in range(data.draw(st.integers(1, 8)))
    ]
    whole = finalize(count_docs(docs, ds_vocab, layout), layout, (0,))
    total = sum(len(d) for d in docs)
    cuts = data.draw(st.lists(st.integers(1, max(1, total - 1)), max_size=6))
    counter = count_docs(docs, ds_vocab, layout, cuts=cuts, threads=3)
    pieces = finalize(counter, layout, (0,), threads=data.draw(st.integers(1, 3)))
    assert pieces == whole
    # split the documents between two counters, merge in either order
    split = data.draw(st.integers(0, len(docs)))
    parts = [docs[:split], docs[split:]]
    counters = [count_docs(p, ds_vocab, layout) for p in parts if p]
    if data.draw(st.booleans()):
        counters.reverse()
    merged = counters[0]
    for other in counters[1:]:
        merged.merge(other)
    assert finalize(merged, layout, (0,)) == whole


def test_report_json_round_trip(ds_vocab):
    layout = EngramLayout(
        ngram_vocab=(50, 50), max_ngram=3, heads=2, layers=(1,), seed=0, pad_id=2,
        vocab_size=ds_vocab.canonical_vocab_size,
    )  # fmt: skip
    docs = [np.arange(30) % 7, np.arange(10)]
    layers, sweep = finalize(count_docs(docs, ds_vocab, layout), layout, (1,), sweep=(20, 200))
    report = HashStatsReport(
        tokens=40, documents=2, partial=False, layout=layout.to_dict(), layers=layers, sweep=sweep
    )
    import json

    data = json.loads(report.to_json())
    assert HashStatsReport.from_dict(data) == report
    head = data["layers"]["1"]["orders"]["2"]["heads"][0]
    for key in ("rows", "occupied_rows", "collided_rows", "colliding_distinct_fraction",
                "colliding_occurrence_fraction", "max_row_load", "expected_occupied_rows",
                "expected_colliding_distinct_fraction"):  # fmt: skip
        assert key in head
    assert [p["ngram_vocab"] for p in data["sweep"]] == [[20, 20], [200, 200]]
    # primes above 20, order 2's heads first: 23, 29, then order 3: 31, 37
    sweep_rows = [
        h["rows"] for n in "23" for h in data["sweep"][0]["layers"]["1"]["orders"][n]["heads"]
    ]
    assert sweep_rows == [23, 29, 31, 37]


def test_pass_stops_before_outgrowing_max_memory(tmp_path, ds_vocab):
    import dataclasses

    from engramctl.corpus.files import CorpusOptions
    from engramctl.stats.run import plan_hash_stats, run_hash_stats

    layout = EngramLayout(
        ngram_vocab=(1000, 1000), max_ngram=3, heads=2, layers=(1,), seed=0, pad_id=2,
        vocab_size=ds_vocab.canonical_vocab_size,
    )  # fmt: skip
    ids = np.random.default_rng(0).integers(3, ds_vocab.source_vocab_size, size=200_000)
    np.save(tmp_path / "ids.npy", ids)
    plan = plan_hash_stats(
        [tmp_path / "ids.npy"], layout=layout, options=CorpusOptions(batch_tokens=10_000)
    )
    full = run_hash_stats(plan, vocab=ds_vocab)
    assert not full.partial and full.tokens == 200_000
    assert plan.memory_estimate >= 2 * (1 << 19) * 16  # the maps' bound for 200k distinct
    tight = dataclasses.replace(plan, max_memory=plan.memory_estimate // 8)
    report = run_hash_stats(tight, vocab=ds_vocab)
    assert report.partial and report.stopped_reason == "max-memory"
    assert 0 < report.tokens < 200_000 and "max_memory" in report.warnings


def test_progress_and_should_stop(tmp_path, ds_vocab):
    from engramctl.corpus.files import CorpusOptions
    from engramctl.stats.run import plan_hash_stats, run_hash_stats

    layout = EngramLayout(
        ngram_vocab=(101, 103), max_ngram=3, heads=2, layers=(1,), seed=0, pad_id=2,
        vocab_size=ds_vocab.canonical_vocab_size,
    )  # fmt: skip
    rng = np.random.default_rng(1)
    for name in ("a", "b"):
        np.save(tmp_path / f"{name}.npy", rng.integers(3, 500, size=(20, 100)))
    plan = plan_hash_stats([tmp_path], layout=layout, options=CorpusOptions(batch_tokens=500))
    seen = []
    report = run_hash_stats(plan, vocab=ds_vocab, progress=lambda *args: seen.append(args))
    assert not report.partial and report.tokens == 4000 and report.documents == 40
    assert [s[3] for s in seen] == list(range(500, 4001, 500))  # tokens after each batch
    assert [s[0] for s in seen] == sorted(s[0] for s in seen) and seen[-1][0] == seen[-1][1]
    stopped = run_hash_stats(plan, vocab=ds_vocab, should_stop=lambda: True)
    assert stopped.partial and stopped.stopped_reason == "interrupted" and stopped.tokens == 500
    assert 0 < stopped.bytes_read < report.bytes_read
