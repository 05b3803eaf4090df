"""``build-counts --append``: one commit, equal to building from both corpora where no row is
truncated, the old memory left whole by a failed append, another layout or K refused."""

from __future__ import annotations

import numpy as np
import pytest

from engramctl.corpus.files import CorpusOptions
from engramctl.counts import BuildCountsJob, CountsModel, build_counts, open_counts, verify_counts
from engramctl.errors import EngramError
from tests.conftest import make_layout

from .conftest import random_docs, resolved, write_token_corpus


def _job(inputs, out, **fields):
    return BuildCountsJob(inputs=tuple(str(i) for i in inputs), out=out, top_k=64,
                          corpus=CorpusOptions(tokens_field="ids", batch_tokens=89),
                          **fields)  # fmt: skip


def _summaries(store):
    """Each row's {token: count} and total (the slots' order aside)."""
    rows = {}
    for i, row in enumerate(np.asarray(store.row_ids)[:-1]):
        kept = store.counts[i] > 0
        rows[int(row)] = (dict(zip(store.tokens[i][kept].tolist(), store.counts[i][kept].tolist(),
                                   strict=True)), int(store.totals[i]))  # fmt: skip
    return rows


@pytest.fixture(scope="module")
def corpora(tmp_path_factory, tiny_vocab):
    tmp = tmp_path_factory.mktemp("append")
    V = tiny_vocab.source_vocab_size
    a = write_token_corpus(tmp / "a.jsonl", random_docs(21, V, count=30, high=70))
    b = write_token_corpus(tmp / "b.jsonl", random_docs(22, V, count=25, high=70))
    layout = resolved(make_layout((20011, 20021), vocab_size=tiny_vocab.canonical_vocab_size,
                                  layers=(1, 4)))  # fmt: skip
    both = build_counts(job=_job([a, b], tmp / "both.zarr"), vocab=tiny_vocab, layout=layout)
    return tmp, a, b, layout, both


@pytest.mark.parametrize("spill", [False, True])
def test_append_equals_one_build_over_both(corpora, tiny_vocab, spill):
    tmp, a, b, layout, both_report = corpora
    out = tmp / f"grown-{spill}.zarr"
    build_counts(job=_job([a], out), vocab=tiny_vocab, layout=layout)
    old_files = {e["file"] for e in open_counts(out).meta["manifest"].values()}
    extra = {"partitions": 3} if spill else {}
    report = build_counts(job=_job([b], out, append=True, **extra), vocab=tiny_vocab,
                          layout=layout)  # fmt: skip
    grown, both = open_counts(out), open_counts(tmp / "both.zarr")
    assert both_report.full_rows == 0 and report.full_rows == 0  # nothing truncated
    assert verify_counts(out) == []
    assert grown.meta["generation"] == 1 and report.tokens < grown.meta["corpus"]["tokens"]
    for key in ("tokens", "documents", "pairs", "file_count"):
        assert grown.meta["corpus"][key] == both.meta["corpus"][key]
    assert len(grown.meta["corpus"]["appends"]) == 1
    names = {p.name for p in out.iterdir()}
    assert not names & old_files and not [n for n in names if n.startswith(".")]
    np.testing.assert_array_equal(grown.row_ids, both.row_ids)
    np.testing.assert_array_equal(grown.unigram, both.unigram)
    assert _summaries(grown) == _summaries(both)
    assert grown.meta["discounts"] == both.meta["discounts"]
    m1, m2 = CountsModel(grown, tiny_vocab), CountsModel(both, tiny_vocab)
    for d in random_docs(23, tiny_vocab.source_vocab_size, count=5):
        np.testing.assert_allclose(m1.score_stream(d), m2.score_stream(d), rtol=1e-12)


def test_failed_append_leaves_the_memory(corpora, tiny_vocab):
    tmp, a, b, layout, _ = corpora
    out = tmp / "kept.zarr"
    build_counts(job=_job([a], out), vocab=tiny_vocab, layout=layout)
    before = sorted(p.name for p in out.iterdir())
    meta = open_counts(out).meta

    def stop(*_):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        build_counts(job=_job([b], out, append=True), vocab=tiny_vocab, layout=layout,
                     progress=stop)  # fmt: skip
    assert sorted(p.name for p in out.iterdir()) == before
    assert open_counts(out).meta == meta and verify_counts(out) == []


def test_append_refuses_another_memory(corpora, tiny_vocab):
    tmp, a, b, layout, _ = corpora
    out = tmp / "both.zarr"
    other = resolved(make_layout((20011, 20021), vocab_size=tiny_vocab.canonical_vocab_size,
                                 layers=(1, 4), seed=5))  # fmt: skip
    with pytest.raises(EngramError, match="another layout .*seed"):
        build_counts(job=_job([b], out, append=True), vocab=tiny_vocab, layout=other)
    with pytest.raises(EngramError, match="K = 64 .* not --top-k 8"):
        build_counts(job=BuildCountsJob(inputs=(str(b),), out=out, top_k=8, append=True,
                                        corpus=CorpusOptions(tokens_field="ids")),
                     vocab=tiny_vocab, layout=layout)  # fmt: skip
    with pytest.raises(EngramError, match="needs a count memory"):
        build_counts(job=_job([b], tmp / "none.zarr", append=True), vocab=tiny_vocab,
                     layout=layout)  # fmt: skip
