"""Partitioned exact counting: the key-space split, the two looks, and whole reports identical to
the single pass for K = 1, 3, 8 (plus Ctrl-C, --max-memory choosing K, bad --spill-dir)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engramctl import EngramLayout
from engramctl.corpus.files import CorpusOptions
from engramctl.errors import EngramError, UsageError
from engramctl.stats.counter import NgramCounter
from engramctl.stats.figures import order_stats
from engramctl.stats.partition import (
    add_loads,
    choose_partitions,
    loads_figures,
    order_stats_of,
    partition_collisions,
    partition_loads,
    partition_of_keys,
    targets,
)
from engramctl.stats.run import plan_hash_stats, run_hash_stats
from tests.conftest import SAMPLE

TIMING = ("seconds", "tokens_per_second", "memory_estimate_bytes")
SEP = 7


def figures(report) -> dict:
    """The report as JSON data without its timing keys (and the plan's memory bound, which is
    per partition)."""
    return {k: v for k, v in json.loads(report.to_json()).items() if k not in TIMING}


def _count(vocab, layout, stream, partition=None, threads=1):
    counter = NgramCounter(
        vocab, max_ngram=layout.max_ngram, pad=layout.pad_canonical_id(vocab),
        threads=threads, partition=partition,
    )  # fmt: skip
    docs = np.split(stream, np.flatnonzero(stream == SEP))
    ids = np.concatenate(docs)
    offsets = np.concatenate([[0], np.cumsum([d.shape[0] for d in docs])])
    assert counter.add(ids, offsets, np.ones(len(docs), np.uint8)) == -1
    return counter


def _entries(counter, n):
    grams, counts = counter.entries(n)
    order = np.lexsort(grams.T[::-1])
    return grams[order], counts[order]


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**16), parts=st.integers(1, 9), threads=st.sampled_from([1, 3]))
def test_partitions_are_disjoint_cover_and_match_the_reference(ds_vocab, seed, parts, threads):
    layout = EngramLayout(
        ngram_vocab=(97, 101, 103), max_ngram=4, heads=2, layers=(1,), seed=3, pad_id=0,
        vocab_size=ds_vocab.canonical_vocab_size,
    )  # fmt: skip
    rng = np.random.default_rng(seed)
    stream = rng.integers(0, 40, 600).astype(np.int64)
    stream[rng.random(600) < 0.05] = SEP
    whole = _count(ds_vocab, layout, stream)
    pieces = [_count(ds_vocab, layout, stream, (k, parts), threads) for k in range(parts)]
    split = whole.split(parts)
    for n in range(2, 5):
        grams, counts = _entries(whole, n)
        which = partition_of_keys(grams, whole.bits, parts)
        for k in range(parts):
            for counter in (pieces[k], split[k]):
                got_grams, got_counts = _entries(counter, n)
                assert np.array_equal(got_grams, grams[which == k])
                assert np.array_equal(got_counts, counts[which == k])
    assert split[0].tokens == whole.tokens and all(c.tokens == 0 for c in split[1:])
    merged = split[0]
    for other in split[1:]:
        merged.merge(other)
    for n in range(2, 5):
        pairs = zip(_entries(merged, n), _entries(whole, n), strict=True)
        assert all(np.array_equal(a, b) for a, b in pairs)


@settings(max_examples=30, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    parts=st.integers(1, 6),
    rows=st.sampled_from([2, 3, 5, 31]),
    d=st.integers(0, 700),
)
def test_two_looks_equal_order_stats(seed, parts, rows, d):
    """Any split of the entries gives what order_stats gives on all of them, including loads of
    255 and more (rows=2, d=700) and empty partitions."""
    rng = np.random.default_rng(seed)
    grams = rng.integers(0, 1 << 20, (d, 3))
    counts = rng.integers(1, 5, d)
    layout = EngramLayout(
        ngram_vocab=(rows, rows), max_ngram=3, heads=3, layers=(4,), seed=5, pad_id=0,
        vocab_size=1 << 20,
    )  # fmt: skip
    target = [t for t in targets(layout, (4,)) if t.order == 3][0]
    expected = order_stats(grams, counts, np.asarray(target.multipliers), target.head_rows,
                           order=3)  # fmt: skip
    which = rng.integers(0, parts, d)
    split = [(grams[which == k], counts[which == k]) for k in range(parts)]
    per_part = [partition_loads(target, g) for g, _ in split]
    loads = add_loads(*per_part) if parts > 1 else per_part[0]
    heads = loads_figures(loads)
    found = partition_collisions(target, *split[0], heads)
    for g, c in split[1:]:
        found = found + partition_collisions(target, g, c, heads)
    assert order_stats_of(target, heads, found) == expected


def test_choose_partitions_is_the_smallest_that_fits():
    assert choose_partitions(lambda k: 100 // k, 100) == 1
    assert choose_partitions(lambda k: 1000 // k, 100) == 10
    assert choose_partitions(lambda k: 1000 // k + 50, 100) == 20
    assert choose_partitions(lambda k: 200, 100) is None


# --------------------------------------------------------------------------- whole reports
@pytest.fixture(scope="module")
def token_corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("ptok")
    rng = np.random.default_rng(11)
    stream = rng.zipf(1.3, 80_000).astype(np.uint32) % 5000
    stream[rng.random(stream.shape[0]) < 0.003] = SEP
    stream.tofile(root / "a.u32")
    np.save(root / "b.npy", rng.integers(0, 3000, (30, 200)).astype(np.uint16))
    return root


def _plan(inputs, layout, **kw):
    options = CorpusOptions(doc_sep_id=SEP, batch_tokens=7000)
    return plan_hash_stats([str(p) for p in inputs], layout=layout, options=options,
                           sweep=(5000, 70_000), **kw)  # fmt: skip


@pytest.mark.parametrize("parts", [1, 3, 8])
def test_partitioned_report_equals_single_pass(token_corpus, ds_vocab, ds_layout, tmp_path, parts):
    layout = ds_layout.with_ngram_vocab([60_000, 60_000, 60_000])
    single = run_hash_stats(_plan([token_corpus], layout), vocab=ds_vocab)
    seen = []
    plan = _plan([token_corpus], layout, partitions=parts, spill_dir=str(tmp_path))
    report = run_hash_stats(plan, vocab=ds_vocab, progress=lambda *a: seen.append(a))
    assert figures(report) == figures(single)
    assert seen[-1][0] == seen[-1][1] == parts * plan.bytes_total
    assert list(tmp_path.iterdir()) == []  # spill files removed


def test_text_report_with_warnings_equals_single_pass(ds_vocab, demo_layout, tmp_path):
    from engramctl.stats.run import load_matching_tokenizer

    lines = (SAMPLE / "heldout.jsonl").read_bytes().splitlines(keepends=True)[:80]
    lines.insert(50, b'{"text": "bad \xff\xfe utf-8 here"}\n')
    (tmp_path / "a.jsonl").write_bytes(b"".join(lines))
    tokenizer = load_matching_tokenizer("deepseek-v4", ds_vocab)
    args = dict(layout=demo_layout, sweep=(3000,))
    single = run_hash_stats(plan_hash_stats([tmp_path / "a.jsonl"], **args), vocab=ds_vocab,
                            tokenizer=tokenizer)  # fmt: skip
    parted = run_hash_stats(plan_hash_stats([tmp_path / "a.jsonl"], partitions=3, **args),
                            vocab=ds_vocab, tokenizer=tokenizer)  # fmt: skip
    assert single.warnings["invalid_utf8"]["count"] >= 1
    assert figures(parted) == figures(single)


def test_stop_in_first_pass_covers_the_tokens_read(token_corpus, ds_vocab, demo_layout):
    calls = []

    def stop_after_two():
        calls.append(1)
        return len(calls) >= 2

    plan = _plan([token_corpus], demo_layout, partitions=4)
    report = run_hash_stats(plan, vocab=ds_vocab, should_stop=stop_after_two)
    assert report.partial and report.stopped_reason == "interrupted"
    assert report.partitions_counted == 0
    limited = run_hash_stats(
        _plan([token_corpus], demo_layout, limit_tokens=report.tokens), vocab=ds_vocab
    )
    assert figures(report)["layers"] == figures(limited)["layers"]


def test_stop_in_a_later_pass_reports_the_partitions_counted(token_corpus, ds_vocab, demo_layout):
    plan = _plan([token_corpus], demo_layout, partitions=4)
    where = []

    def stop_in_third_pass():
        return where[-1][0] > 2 * plan.bytes_total

    report = run_hash_stats(plan, vocab=ds_vocab, should_stop=stop_in_third_pass,
                            progress=lambda *a: where.append(a))  # fmt: skip
    assert report.partial and report.stopped_reason == "interrupted"
    assert report.partitions_counted == 2
    assert json.loads(report.to_json())["partitions_counted"] == 2
    whole = run_hash_stats(_plan([token_corpus], demo_layout), vocab=ds_vocab)
    assert report.tokens == whole.tokens
    for n, stats in report.layers[1].items():
        assert 0 < stats.distinct < whole.layers[1][n].distinct


def test_max_memory_chooses_partitions(token_corpus, ds_layout):
    ds_layout = ds_layout.with_ngram_vocab([60_000] * 3)
    plan = _plan([token_corpus], ds_layout)
    assert plan.partitions is None
    tight = _plan([token_corpus], ds_layout, max_memory=plan.memory_estimate // 3)
    assert tight.partitions_chosen and tight.partitions > 1
    assert tight.memory_estimate <= plan.memory_estimate // 3
    smaller = _plan([token_corpus], ds_layout, max_memory=2**40, partitions=tight.partitions - 1)
    assert smaller.memory_estimate > plan.memory_estimate // 3
    with pytest.raises(EngramError, match="raise --partitions or --max-memory"):
        _plan([token_corpus], ds_layout, max_memory=plan.memory_estimate // 3, partitions=1)
    big = ds_layout.with_ngram_vocab([16_000_000] * 3)  # 8 heads x 16 MiB of loads
    with pytest.raises(EngramError, match="do not fit at any --partitions"):
        _plan([token_corpus], big, max_memory=32 << 20, partitions=4)
    with pytest.raises(EngramError, match="above --max-memory"):  # no K helps: the usual advice
        _plan([token_corpus], big, max_memory=16 << 20)


def test_bad_partitions_and_spill_dir(token_corpus, ds_vocab, demo_layout, tmp_path):
    for bad in (0, -2):
        with pytest.raises(UsageError, match="--partitions must be at least 1"):
            _plan([token_corpus], demo_layout, partitions=bad)
    plan = _plan([token_corpus], demo_layout, partitions=2, spill_dir=str(tmp_path / "nope"))
    with pytest.raises(UsageError, match="is not a directory"):
        run_hash_stats(plan, vocab=ds_vocab)
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    plan = _plan([token_corpus], demo_layout, partitions=2, spill_dir=str(locked))
    import os

    if os.geteuid() != 0:
        with pytest.raises(UsageError, match="is not writable"):
            run_hash_stats(plan, vocab=ds_vocab)


def test_full_spill_disk_is_a_clean_error(token_corpus, ds_vocab, demo_layout, tmp_path,
                                          monkeypatch):  # fmt: skip
    import errno

    real_save = np.save
    writes = []

    def save(path, array):
        writes.append(path)
        if len(writes) > 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_save(path, array)

    monkeypatch.setattr(np, "save", save)
    plan = _plan([token_corpus], demo_layout, partitions=3, spill_dir=str(tmp_path))
    with pytest.raises(EngramError, match="the disk is full"):
        run_hash_stats(plan, vocab=ds_vocab)
    assert list(tmp_path.iterdir()) == []
