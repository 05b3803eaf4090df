"""hash-stats with dead (image) positions (issue 24 §1) and its two small items (§2, §3):
``--doc-sep-id`` that would be ignored, and ``--limit-tokens`` inside one long document."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engramctl.corpus.files import CorpusOptions
from engramctl.dead import DeadRule
from engramctl.errors import UsageError
from engramctl.hashing import NgramHasher
from engramctl.stats.counter import NgramCounter
from engramctl.stats.passes import count_corpus
from engramctl.stats.run import plan_hash_stats
from tests.conftest import make_layout, random_ids
from tests.hostile.conftest import assert_one_error, cli
from tests.stats.test_hash_stats_dask import make_plan


def _shards_merged(plan, vocab, shard_bytes):
    """The plan's shards counted one by one (as Dask workers count them) and merged."""
    from dataclasses import replace

    from engramctl.corpus.shards import split_files
    from engramctl.stats.run_dask import ShardSetup, count_shard, merge_counts

    setup = ShardSetup(vocab, None, replace(plan, files=[], threads=1, max_memory=2**62))
    parts = [count_shard(s, setup) for s in split_files(plan.files, plan.options, shard_bytes)]
    return merge_counts(*parts).counter


def _sorted_entries(counter) -> dict:
    out = {}
    for n in counter.maps:
        grams, counts = counter.entries(n)
        order = np.lexsort(grams.T[::-1])
        out[n] = (grams[order].tolist(), counts[order].tolist())
    return out


def _rows_from_counts(counter, layout, layer, order):
    """Every occurrence's row id per head of ``order``, from the counter's distinct n-grams."""
    grams, counts = counter.entries(order)
    mult = layout.multipliers(layer)[:order]
    with np.errstate(over="ignore"):
        mix = grams[:, 0] * mult[0]
        for k in range(1, order):
            mix = mix ^ (grams[:, k] * mult[k])
    primes = layout.head_rows(layer)[(order - 2) * layout.heads : (order - 1) * layout.heads]
    rows = np.stack([mix % p for p in primes], axis=1)
    return np.sort(np.repeat(rows, counts, axis=0), axis=0)


@settings(max_examples=30, deadline=None)
@given(data=st.data())
def test_counted_ngrams_are_those_the_hasher_hashes(data, ds_vocab):
    """Per head, the multiset of row ids hash-stats counts equals the hasher's, dead or not."""
    layout = make_layout((211, 223, 227), vocab_size=ds_vocab.canonical_vocab_size, max_ngram=4)
    hasher = NgramHasher(layout, ds_vocab)
    seed, length = data.draw(st.integers(0, 2**32 - 1)), data.draw(st.integers(1, 60))
    ids = random_ids(np.random.default_rng(seed), (length,), ds_vocab.source_vocab_size)
    ids[np.random.default_rng(seed + 1).random(length) < 0.15] = -7  # any negative id is dead
    cuts = sorted(set(data.draw(st.lists(st.integers(1, max(1, length - 1)), max_size=3))))
    bounds = [0, *(c for c in cuts if c < length), length]
    counter = NgramCounter(ds_vocab, max_ngram=4, pad=hasher.pad)
    offsets = np.array(bounds)
    counter.add(ids, offsets, [True] + [False] * (len(bounds) - 2))  # one document, in pieces
    hashed = hasher.hash(ids)[1]
    for order in range(2, 5):
        heads = slice((order - 2) * layout.heads, (order - 1) * layout.heads)
        expected = np.sort(hashed[:, heads], axis=0)
        np.testing.assert_array_equal(_rows_from_counts(counter, layout, 1, order), expected)


def test_a_dead_position_in_the_counter_is_a_pad_token_after_a_restart(ds_vocab):
    pad_raw = 2
    pad = int(ds_vocab.canonical_ids[pad_raw])
    a, b = (NgramCounter(ds_vocab, max_ngram=4, pad=pad) for _ in range(2))
    assert a.add(np.array([10, 11, -1, 12, 13]), np.array([0, 5]), [True]) == -1
    b.add(np.array([10, 11, pad_raw, 12, 13]), np.array([0, 2, 5]), [True, True])
    for n in range(2, 5):
        got, want = a.entries(n), b.entries(n)
        assert sorted(map(tuple, got[0].tolist())) == sorted(map(tuple, want[0].tolist()))
        assert sorted(got[1].tolist()) == sorted(want[1].tolist())
    assert a.tokens == 5


def _jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_hash_stats_reads_negative_ids_and_the_dead_ids_rule(tmp_path, ds_vocab_path):
    base = ["--vocab", ds_vocab_path, "--tokens-field", "ids", "--json", "-q"]
    marked = _jsonl(tmp_path / "m.jsonl", [{"ids": [5, 6, -1, -1, 7, 8, 9]}, {"ids": [5, 6, 7]}])
    rule = _jsonl(
        tmp_path / "r.jsonl", [{"ids": [5, 6, 129264, 1_000_000, 7, 8, 9]}, {"ids": [5, 6, 7]}]
    )
    by_marks = cli("hash-stats", marked, *base)
    assert by_marks.exit_code == 0, by_marks.output
    refused = cli("hash-stats", rule, *base)
    assert_one_error(refused, "1000000", "--dead-ids")
    by_rule = cli("hash-stats", rule, *base, "--dead-ids", "v4.1-vision")
    assert by_rule.exit_code == 0, by_rule.output
    one, two = json.loads(by_marks.stdout), json.loads(by_rule.stdout)
    assert one["tokens"] == two["tokens"] == 10
    for key in ("layers", "sweep"):
        assert one.get(key) == two.get(key)


def test_parquet_npy_and_jsonl_mark_dead_positions_alike(tmp_path, ds_vocab_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    docs = [[5, 6, -1, -1, 7, 8, 9], [5, 6, 7, -1]]
    jsonl = _jsonl(tmp_path / "d.jsonl", [{"ids": d} for d in docs])
    parquet = tmp_path / "d.parquet"
    pq.write_table(pa.table({"ids": pa.array(docs, pa.list_(pa.int64()))}), parquet)
    npy = tmp_path / "d.npy"
    np.save(npy, np.array([*docs[0], 1, *docs[1]], dtype=np.int64))
    base = ["--vocab", ds_vocab_path, "--json", "-q"]
    reports = [
        cli("hash-stats", jsonl, *base, "--tokens-field", "ids"),
        cli("hash-stats", parquet, *base, "--tokens-field", "ids"),
        cli("hash-stats", npy, *base, "--doc-sep-id", "1"),
    ]
    for result in reports:
        assert result.exit_code == 0, result.output
    one, two, three = (json.loads(r.stdout) for r in reports)
    assert one["tokens"] == two["tokens"] == three["tokens"] == 11
    assert one["layers"] == two["layers"] == three["layers"]


# ----------------------------------------------------------------- --doc-sep-id (issue §2)
def test_negative_doc_sep_id_is_refused():
    with pytest.raises(UsageError, match="0 or more.*dead"):
        CorpusOptions(doc_sep_id=-4).validate()


def test_doc_sep_id_without_a_token_stream_is_refused(tmp_path, ds_vocab_path):
    corpus = _jsonl(tmp_path / "x.jsonl", [{"text": "hello there"}])
    for sep in ("-4", "7"):
        result = cli("hash-stats", corpus, "--vocab", ds_vocab_path, "--doc-sep-id", sep)
        assert_one_error(result, "--doc-sep-id")
        assert result.exit_code == 2
    stream = tmp_path / "s.npy"
    np.save(stream, np.array([5, 6, 7, 1, 8, 9], dtype=np.int64))
    ok = cli("hash-stats", stream, "--vocab", ds_vocab_path, "--doc-sep-id", "1", "--json", "-q")
    assert ok.exit_code == 0, ok.output
    assert json.loads(ok.stdout)["documents"] == 2


def test_plan_refuses_a_doc_sep_id_it_would_ignore(tmp_path, ds_vocab):
    layout = make_layout(vocab_size=ds_vocab.canonical_vocab_size)
    corpus = _jsonl(tmp_path / "x.jsonl", [{"text": "hi"}])
    with pytest.raises(UsageError, match="splits token streams"):
        plan_hash_stats([str(corpus)], layout=layout, options=CorpusOptions(doc_sep_id=3))


def test_dead_rule_marks_only_its_ids():
    rule = DeadRule((9,), 100)
    assert rule.mark(np.array([8, 9, 99, 100, -3])).tolist() == [8, -1, 99, -1, -3]


@settings(max_examples=20, deadline=None)
@given(
    length=st.integers(1, 300),
    shard_tokens=st.integers(1, 60),
    dead_rate=st.sampled_from([0.05, 0.3]),
    seed=st.integers(0, 2**16),
)
def test_shards_cut_next_to_dead_positions_count_exactly(
    tmp_path_factory, ds_vocab, demo_layout, length, shard_tokens, dead_rate, seed
):
    """Dask shards of a token stream start from the ids before them: a dead position there is
    pad context, exactly as counting the stream whole (negative ids and --dead-ids alike)."""
    rng = np.random.default_rng(seed)
    stream = rng.integers(0, 50, length).astype(np.int32)
    marks = rng.random(length)
    stream[marks < dead_rate / 2] = -1
    stream[(marks >= dead_rate / 2) & (marks < dead_rate)] = 129264  # dead by the rule
    path = tmp_path_factory.mktemp("dead") / "s.npy"
    np.save(path, stream)
    plan = make_plan([path], demo_layout, batch_tokens=13, dead_rule=DeadRule.sglang_v41())
    whole, _, _, _ = count_corpus(plan, vocab=ds_vocab)
    merged = _shards_merged(plan, ds_vocab, 4 * shard_tokens)  # int32: 4 bytes an id
    assert merged.tokens == whole.tokens == length
    assert _sorted_entries(merged) == _sorted_entries(whole)
