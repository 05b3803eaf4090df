"""The store of occupied rows (format 2): held to the dense SpaceSaving path bit for bit, the
same whether the build spilled to row buckets or not, and format-1 (dense) stores still read."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from engramctl.corpus.files import CorpusOptions
from engramctl.counts import BuildCountsJob, CountsModel, build_counts, open_counts
from engramctl.counts.rowtable import RowTable
from engramctl.counts.spacesaving import space_saving_kernel
from engramctl.counts.store import ARRAYS, META_KEY, read_metadata, verify_counts, write_metadata

from .conftest import random_docs, resolved, write_token_corpus

ROW_ARRAYS = ("row_ids", "tokens", "counts", "totals")


def _pairs(seed, P=3000, G=4, R=400, V=30):
    rng = np.random.default_rng(seed)
    rows = rng.integers(0, R, size=(P, G)).astype(np.int64) + np.arange(G) * R  # disjoint
    targets = rng.zipf(1.4, size=P).astype(np.int64) % V
    return rows, targets, rng.random(P) < 0.9, G * R


@pytest.mark.parametrize("columns", [1, 4])
def test_row_table_equals_the_dense_kernel(columns):
    """Truncating K, growing from a tiny capacity, one segment or one a column, in three
    pieces."""
    rows, targets, keep, R = _pairs(columns)
    starts = np.arange(columns, dtype=np.int64) * (R // columns)
    K = 3
    dense = (np.zeros((R, K), np.int32), np.zeros((R, K), np.uint32), np.zeros(R, np.uint64))
    space_saving_kernel(rows, targets, keep, *dense, np.zeros(rows.shape[1], np.int64))
    table = RowTable(K, starts, R)
    for part in np.array_split(np.arange(rows.shape[0]), 3):
        table.add(rows[part], targets[part], keep[part])
    keys, tokens, counts, totals = table.extract()
    occupied = np.flatnonzero(dense[2])
    assert (dense[1][:, -1] > 0).any()  # some rows were truncated
    np.testing.assert_array_equal(keys, occupied)
    for got, want in zip((tokens, counts, totals), dense, strict=True):
        np.testing.assert_array_equal(got, want[occupied])
    # a table read back and fed the rest equals one fed everything (what a spill relies on)
    half = rows.shape[0] // 2
    first = RowTable(K, starts, R)
    first.add(rows[:half], targets[:half], keep[:half])
    again = RowTable(K, starts[:1], R)
    again.load(*first.extract())
    again.add(rows[half:], targets[half:], keep[half:])
    for a, b in zip(again.extract(), (keys, tokens, counts, totals), strict=True):
        np.testing.assert_array_equal(a, b)


def _build(tmp_path, name, vocab, layout, docs, **job):
    corpus = tmp_path / "c.jsonl"
    if not corpus.exists():
        write_token_corpus(corpus, docs)
    out = tmp_path / f"{name}.zarr"
    report = build_counts(
        job=BuildCountsJob(inputs=(str(corpus),), out=out, top_k=2,
                           corpus=CorpusOptions(tokens_field="ids", batch_tokens=101), **job),
        vocab=vocab, layout=resolved(layout),
    )  # fmt: skip
    return report, open_counts(out)


@pytest.fixture(scope="module")
def builds(tmp_path_factory, tiny_vocab):
    from tests.conftest import make_layout

    tmp_path = tmp_path_factory.mktemp("builds")
    wide_layout = make_layout((20011, 20021), vocab_size=tiny_vocab.canonical_vocab_size,
                              layers=(1, 4))  # fmt: skip
    docs = random_docs(11, tiny_vocab.source_vocab_size, count=60, high=90)
    plain = _build(tmp_path, "plain", tiny_vocab, wide_layout, docs)
    spilled = _build(tmp_path, "spilled", tiny_vocab, wide_layout, docs, max_memory=60_000)
    buckets = _build(tmp_path, "buckets", tiny_vocab, wide_layout, docs, partitions=5)
    return docs, plain, spilled, buckets


def test_spilled_and_bucketed_builds_equal_the_build_in_ram(builds):
    _, (report, store), *others = builds
    assert report.full_rows > 0  # K = 2 truncates: the order of continuations matters
    meta = store.meta
    assert meta["format_version"] == 2 and meta["occupied_rows"] == store.row_ids.shape[0] - 1
    assert (np.diff(store.row_ids) > 0).all() and store.row_ids[-1] == 2**63 - 1
    assert int(store.totals[-1]) == 0 and meta["occupied_rows"] < meta["rows"]
    for other_report, other in others:
        for name in ARRAYS:
            np.testing.assert_array_equal(getattr(other, name), getattr(store, name))
        for key in ("discounts", "gate", "full_rows", "occupied_rows"):
            assert other.meta[key] == meta[key]
        assert other_report.heldout_pairs == report.heldout_pairs > 0
        assert not [p for p in other.path.iterdir() if p.name.startswith(".")]  # no spill left


def test_dense_format_1_store_reads_the_same(builds, tmp_path, tiny_vocab):
    """A format-1 store (every layout row, no row_ids) gives the same scores."""
    docs, (_, store), *_ = builds
    R, K = store.meta["rows"], store.top_k
    dense = {"tokens": np.zeros((R, K), np.int32), "counts": np.zeros((R, K), np.uint32),
             "totals": np.zeros(R, np.uint64)}  # fmt: skip
    ids = np.asarray(store.row_ids[:-1])
    for name in dense:
        dense[name][ids] = np.asarray(getattr(store, name))[:-1]
    old = tmp_path / "old.zarr"
    old.mkdir()
    meta = {k: v for k, v in store.meta.items() if k not in ("manifest", "meta_sha256")}
    meta["format_version"] = 1
    dense |= {"unigram": np.asarray(store.unigram), "canonical": np.asarray(store.canonical)}
    write_metadata(old, meta, dense | {"row_ids": np.zeros(0, np.int64)})
    doc = json.loads((old / "zarr.json").read_text())
    del doc["attributes"][META_KEY]["manifest"]["row_ids"]  # a format-1 manifest
    (old / "row_ids.npy").unlink()
    body = {k: v for k, v in doc["attributes"][META_KEY].items() if k != "meta_sha256"}
    digest = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
    doc["attributes"][META_KEY]["meta_sha256"] = digest
    (old / "zarr.json").write_text(json.dumps(doc))
    assert read_metadata(old)["format_version"] == 1 and verify_counts(old) == []
    new_model = CountsModel(store, tiny_vocab)
    old_model = CountsModel(open_counts(old), tiny_vocab)
    assert old_model.row_ids is None
    for d in docs[:8]:
        np.testing.assert_array_equal(old_model.score_stream(d), new_model.score_stream(d))
        if len(d) > 1:
            np.testing.assert_array_equal(old_model.next_distribution(list(d))[0],
                                          new_model.next_distribution(list(d))[0])  # fmt: skip


def test_locate_equals_its_reference():
    from engramctl.counts.locate import RowLocator, locate_reference

    rng = np.random.default_rng(4)
    row_ids = np.append(np.unique(rng.integers(0, 10_000, 3000)), 2**63 - 1)
    rows = rng.integers(0, 10_050, size=(400, 7))
    np.testing.assert_array_equal(RowLocator.build(row_ids)(rows), locate_reference(row_ids, rows))
    assert RowLocator.build(row_ids[-1:])(rows).max() == 0  # an empty store: every row absent
