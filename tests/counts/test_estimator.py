"""The count memory's estimator: the reference by hand, the build's numba path held to it."""

from __future__ import annotations

import numpy as np
import pytest

from engramctl.corpus.files import CorpusOptions
from engramctl.counts import BuildCountsJob, CountsModel, build_counts, open_counts
from engramctl.counts.reference import ReferenceCounts
from engramctl.counts.smoothing import distribution, unigram_probabilities
from engramctl.counts.spacesaving import space_saving_kernel, space_saving_reference

from .conftest import random_docs, resolved, write_token_corpus


def test_reference_by_hand():
    """One document "1 2 1 2" over 4 ids, contexts of 1..2 tokens, pad 0."""
    ref = ReferenceCounts(vocab_size=4, max_order=2, pad=0)
    ref.add(np.array([1, 2, 1, 2]), np.array([1, 2, 1, 2]))
    ref.finish()
    # unigram counts [0, 2, 2, 0]: n1 = 0, n2 = 2 -> D0 = 0.05 (clipped)
    assert ref.discounts[0] == pytest.approx(0.05)
    p0 = np.array([0.0, 1.95, 1.95, 0.0]) / 4 + 0.05 * 2 / 4 / 4
    np.testing.assert_allclose(ref.p0, p0)
    # level 1: after 1 -> {2: 2}, after 2 -> {1: 1}: n1 = 1, n2 = 1 -> D1 = 1/3
    d1 = ref.discounts[1]
    assert d1 == pytest.approx(1 / 3)
    # level 2 after (2, 1) -> {2: 1}, (0, 1) -> {2: 1}, (1, 2) -> {1: 1}: n1 = 3 -> D2 = 0.95
    d2 = ref.discounts[2]
    level1 = (2 - d1) / 2 * np.eye(4)[2] + (d1 / 2) * p0
    level2 = (1 - d2) / 1 * np.eye(4)[2] + d2 * level1
    np.testing.assert_allclose(ref.distribution([2, 1]), level2)
    assert ref.evidence([2, 1]) == (1, 1, 2)
    assert ref.evidence([3, 3]) == (0, 0, 0)  # never seen: the unigram alone
    np.testing.assert_allclose(ref.distribution([3, 3]), p0)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_reference_distribution_is_positive_and_sums_to_one(seed):
    docs = random_docs(seed, 12, count=10)
    ref = ReferenceCounts(vocab_size=12, max_order=3, pad=11)
    for d in docs:
        ref.add(d, d)
    ref.finish()
    rng = np.random.default_rng(seed)
    for _ in range(20):
        history = rng.integers(0, 12, size=int(rng.integers(1, 5)))
        p = ref.distribution(history)
        assert (p > 0).all()
        assert p.sum() == pytest.approx(1.0, abs=1e-12)


def test_unigram_level_is_positive_and_sums_to_one():
    p = unigram_probabilities(np.array([5, 0, 1, 0, 9]), 0.6)
    assert (p > 0).all() and p.sum() == pytest.approx(1.0)


def test_space_saving_kernel_equals_its_reference_with_truncation():
    rng = np.random.default_rng(3)
    P, G, R, K = 4000, 3, 50, 3
    rows = rng.integers(0, R, size=(P, G)).astype(np.int64)
    rows[:, 1] += R
    rows[:, 2] += 2 * R  # columns own disjoint rows
    targets = rng.zipf(1.5, size=P).astype(np.int64) % 40
    keep = rng.random(P) < 0.9
    out = []
    for fn in (space_saving_kernel, space_saving_reference):
        arrays = (np.zeros((3 * R, K), np.int32), np.zeros((3 * R, K), np.uint32),
                  np.zeros(3 * R, np.uint64), np.zeros(G, np.int64))  # fmt: skip
        fn(rows, targets, keep, *arrays)
        out.append(arrays)
    for a, b in zip(*out, strict=True):
        np.testing.assert_array_equal(a, b)
    tokens, counts, totals, occupied = out[0]
    assert occupied.tolist() == [len(np.unique(rows[keep, g])) for g in range(G)]
    # SpaceSaving invariants: the slots' counts sum to the total; a true count is never
    # above its kept count plus total / K (the error bound)
    np.testing.assert_array_equal(counts.sum(1, dtype=np.uint64), totals)
    for r in range(3 * R):
        g, row = divmod(r, R)
        true = np.bincount(targets[keep & (rows[:, g] == r)], minlength=40)
        for y in range(40):
            kept = counts[r][tokens[r] == y].sum() if (counts[r] > 0).any() else 0
            assert true[y] <= kept + totals[r] / K + 1e-9
            if kept:
                assert kept >= true[y]


def test_space_saving_by_hand():
    tokens, counts, totals = (np.zeros((1, 2), np.int32), np.zeros((1, 2), np.uint32),
                              np.zeros(1, np.uint64))  # fmt: skip
    rows = np.zeros((5, 1), np.int64)
    space_saving_kernel(
        rows, np.array([7, 7, 8, 9, 7]), np.ones(5, bool), tokens, counts, totals, np.zeros(1, int)
    )
    # 7,7 -> {7:2}; 8 -> {7:2, 8:1}; 9 replaces 8 with count 2; 7 -> {7:3, 9:2}
    assert tokens.tolist() == [[7, 9]] and counts.tolist() == [[3, 2]] and totals.tolist() == [5]


def _build(tmp_path, tiny_vocab, layout, docs, top_k):
    corpus = write_token_corpus(tmp_path / "c.jsonl", docs)
    job = BuildCountsJob(
        inputs=(str(corpus),), out=tmp_path / "c.zarr", top_k=top_k,
        corpus=CorpusOptions(tokens_field="ids", batch_tokens=97),
    )  # fmt: skip
    report = build_counts(job=job, vocab=tiny_vocab, layout=resolved(layout))
    return report, CountsModel(open_counts(tmp_path / "c.zarr"), tiny_vocab)


def _reference(docs, vocab, layout):
    ref = ReferenceCounts(vocab_size=vocab.source_vocab_size, max_order=layout.max_ngram,
                          pad=layout.pad_canonical_id(vocab))  # fmt: skip
    for d in docs:
        ref.add(vocab.apply(d), d)
    ref.finish()
    return ref


def _every_context_has_a_clean_head(model, docs):
    """Count-min is exact for a context when one of its rows (any head, any layer) holds it
    alone: checked here, not assumed (some heads do collide at ~20k rows)."""
    owners, heads_of = {}, {}
    H, heads = model.layout.heads_per_layer, model.layout.heads
    for d in docs:
        rows = model.context_rows(np.asarray(d))
        canon = model.vocab.apply(np.asarray(d))
        for t in range(len(d)):
            ctx = tuple([model.hasher.pad] * 4 + list(canon[: t + 1]))
            for g in range(1, rows.shape[1]):
                key = ctx[-(2 + ((g - 1) % H) // heads) :]
                owners.setdefault(int(rows[t, g]), set()).add(key)
                heads_of.setdefault(key, set()).add(int(rows[t, g]))
    return all(any(len(owners[r]) == 1 for r in rows) for rows in heads_of.values())


@pytest.mark.parametrize("seed", [0, 1])
def test_build_equals_reference_when_count_min_is_exact_and_nothing_truncated(
    tmp_path, tiny_vocab, wide_layout, seed
):
    docs = random_docs(seed, tiny_vocab.source_vocab_size, count=40)
    report, model = _build(
        tmp_path, tiny_vocab, wide_layout, docs, tiny_vocab.source_vocab_size + 1
    )
    ref = _reference(docs, tiny_vocab, wide_layout)
    assert _every_context_has_a_clean_head(model, docs)
    assert report.tokens == sum(len(d) for d in docs)
    assert report.pairs == sum(len(d) - 1 for d in docs)
    np.testing.assert_allclose(model.discounts, ref.discounts)
    np.testing.assert_allclose(model.p0, ref.p0)
    for d in docs[:15]:
        scores = model.score_stream(d)
        canon = tiny_vocab.apply(d)
        for t in range(1, len(d)):
            assert scores[t - 1, 0] == pytest.approx(ref.prob(canon[:t], d[t]), rel=1e-9)
            assert tuple(scores[t - 1, 1:4].astype(int)) == ref.evidence(canon[:t])
        if len(d) > 1:
            full = model.next_distribution(list(d))[0]
            np.testing.assert_allclose(full, ref.distribution(canon), rtol=1e-9)
            assert full.sum() == pytest.approx(1.0)


def test_truncated_rows_still_give_a_distribution(tmp_path, tiny_vocab, wide_layout):
    """K = 2: rows are truncated; every probability stays > 0 and the distribution sums to 1."""
    docs = random_docs(5, tiny_vocab.source_vocab_size, count=40)
    report, model = _build(tmp_path, tiny_vocab, wide_layout, docs, 2)
    assert report.full_rows > 0
    for d in docs[:10]:
        if len(d) < 2:
            continue
        p, lam = model.next_distribution(list(d))
        assert (p > 0).all() and p.sum() == pytest.approx(1.0)
        assert 0 < lam < 1
        scores = model.score_stream(d)
        assert (scores[:, 0] > 0).all() and (scores[:, 0] <= 1).all()


def test_store_distribution_matches_kernel(tmp_path, tiny_vocab, wide_layout):
    docs = random_docs(7, tiny_vocab.source_vocab_size, count=20)
    _, model = _build(tmp_path, tiny_vocab, wide_layout, docs, 3)
    d = np.concatenate(docs)[:50]
    rows = model.context_rows(d)
    for t in range(0, 49, 7):
        full = distribution(model.local_rows(rows[t]), model.level_cols, model.level_ncols,
                            *model.arrays, model.p0, model.discounts)  # fmt: skip
        ys = np.arange(tiny_vocab.source_vocab_size)
        scored = model.score_rows(np.repeat(rows[t : t + 1], len(ys), 0), ys)[:, 0]
        np.testing.assert_allclose(full, scored, rtol=1e-12)
