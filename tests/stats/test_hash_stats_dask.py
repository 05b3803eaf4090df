"""hash-stats on Dask: shards, exact merges, and a real LocalCluster (identical reports, killed
workers, bad schedulers, version mismatch, too little worker memory)."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from engramctl.corpus.files import CorpusOptions, discover_files
from engramctl.corpus.shards import split_files
from engramctl.errors import EngramError, UsageError
from engramctl.stats.run import load_matching_tokenizer, plan_hash_stats, run_hash_stats
from engramctl.stats.run_dask import ShardSetup, count_shard, merge_counts, worker_memory
from tests.conftest import SAMPLE, KillOneWorker

runner = CliRunner()
TIMING = ("seconds", "tokens_per_second")
SEP = 7


def figures(report) -> dict:
    """The report as JSON data without its timing keys."""
    data = json.loads(report.to_json()) if hasattr(report, "to_json") else report
    return {k: v for k, v in data.items() if k not in TIMING}


@pytest.fixture(scope="module")
def corpora(tmp_path_factory, ds_vocab):
    """Token files (a flat stream with separators, a 1-D and a 2-D .npy) and text files (JSON
    Lines with a bad UTF-8 line far in, Parquet with several row groups, --doc-sep text)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    root = tmp_path_factory.mktemp("dstats")
    rng = np.random.default_rng(5)
    tokens = root / "tokens"
    tokens.mkdir()
    stream = rng.integers(0, 3000, 60_000).astype(np.uint32)
    stream[rng.random(stream.shape[0]) < 0.002] = SEP  # long documents: shards cut inside them
    stream[:3] = SEP  # empty documents at the start
    stream.tofile(tokens / "a.u32")
    np.save(tokens / "b.npy", rng.integers(0, 3000, 20_000).astype(np.int32))
    np.save(tokens / "c.npy", rng.integers(0, 3000, (40, 300)).astype(np.uint16))

    text = root / "text"
    text.mkdir()
    lines = (SAMPLE / "heldout.jsonl").read_bytes().splitlines(keepends=True)[:150]
    lines.insert(120, b'{"text": "bad \xff\xfe utf-8 here"}\n')
    (text / "a.jsonl").write_bytes(b"".join(lines))
    texts = [json.loads(line)["text"] for line in lines[:60] if b"\xff" not in line]
    pq.write_table(pa.table({"text": texts}), text / "b.parquet", row_group_size=12)
    (text / "c.txt").write_text("\n\n".join(texts[:30]) + "\n")
    return {"tokens": tokens, "text": text}


def make_plan(inputs, layout, **options):
    """A plan of ``inputs`` with ``options`` (CorpusOptions fields) and a sweep of 5000 rows
    (test_partition_dask uses it too)."""
    return plan_hash_stats(
        [str(p) for p in inputs], layout=layout, options=CorpusOptions(**options), sweep=(5000,)
    )


def _in_process(plan, vocab, tokenizer, shard_bytes):
    """Shards counted one by one and merged in a lopsided tree, without Dask."""
    from dataclasses import replace

    setup = ShardSetup(vocab, tokenizer, replace(plan, files=[], threads=1, max_memory=2**62))
    shards = split_files(plan.files, plan.options, shard_bytes)
    parts = [count_shard(s, setup) for s in shards]
    while len(parts) > 1:
        parts = [merge_counts(*parts[:3]), *parts[3:]]
    return shards, parts[0]


def _entries(counter):
    out = {}
    for n in counter.maps:
        grams, counts = counter.entries(n)
        order = np.lexsort(grams.T[::-1])
        out[n] = (grams[order].tolist(), counts[order].tolist())
    return out


# ------------------------------------------------------------------- shards, no cluster
def test_token_shards_cut_inside_documents(corpora, ds_vocab, demo_layout):
    plan = make_plan([corpora["tokens"]], demo_layout, doc_sep_id=SEP, batch_tokens=5000)
    shards = split_files(plan.files, plan.options, 20_000)
    assert len(shards) > len(plan.files)
    assert sum(s.size for s in shards) == plan.bytes_total
    whole = run_hash_stats(plan, vocab=ds_vocab)
    _, merged = _in_process(plan, ds_vocab, None, 20_000)
    assert (merged.counter.tokens, merged.counter.documents) == (whole.tokens, whole.documents)


@settings(max_examples=25, deadline=None)
@given(
    length=st.integers(1, 400),
    shard_tokens=st.integers(1, 120),
    sep_rate=st.sampled_from([0.0, 0.05, 0.3]),
    seed=st.integers(0, 2**16),
)
def test_token_stream_shards_count_exactly(
    tmp_path_factory, ds_vocab, demo_layout, length, shard_tokens, sep_rate, seed
):
    rng = np.random.default_rng(seed)
    stream = rng.integers(0, 50, length).astype(np.uint16)
    stream[rng.random(length) < sep_rate] = SEP
    path = tmp_path_factory.mktemp("hyp") / "s.u16"
    stream.tofile(path)
    plan = make_plan([path], demo_layout, doc_sep_id=SEP, batch_tokens=17)
    from engramctl.stats.run import count_corpus

    whole, _, _, _ = count_corpus(plan, vocab=ds_vocab)
    _, merged = _in_process(plan, ds_vocab, None, 2 * shard_tokens)
    assert merged.counter.tokens == whole.tokens
    assert merged.counter.documents == whole.documents
    assert _entries(merged.counter) == _entries(whole)


def test_line_shards_keep_line_numbers(corpora, ds_vocab, demo_layout):
    files = discover_files([corpora["text"] / "a.jsonl"])
    shards = split_files(files, CorpusOptions(), 20_000)
    assert len(shards) > 2 and shards[0].first_line == 1
    data = files[0].path.read_bytes()
    for shard in shards:
        start, stop = shard.span
        assert start == 0 or data[start - 1 : start] == b"\n"
        assert shard.first_line == data[:start].count(b"\n") + 1
    text = split_files(
        discover_files([corpora["text"] / "c.txt"]), CorpusOptions(doc_sep=True), 900
    )
    assert len(text) > 2
    raw = (corpora["text"] / "c.txt").read_bytes()
    assert all(raw[s.span[0] - 2 : s.span[0]] == b"\n\n" for s in text[1:])
    parquet = split_files(discover_files([corpora["text"] / "b.parquet"]), CorpusOptions(), 6_000)
    import pyarrow.parquet as pq

    groups = pq.ParquetFile(corpora["text"] / "b.parquet").metadata.num_row_groups
    assert len(parquet) > 1 and parquet[-1].span[1] == groups  # runs of whole row groups
    # one document per file, or compressed: never cut
    assert len(split_files(discover_files([corpora["text"] / "c.txt"]), CorpusOptions(), 900)) == 1


def test_merges_leave_their_inputs_alone(corpora, ds_vocab, demo_layout):
    plan = make_plan([corpora["tokens"] / "b.npy"], demo_layout)
    setup = ShardSetup(ds_vocab, None, plan)
    a, b = (count_shard(s, setup) for s in split_files(plan.files, plan.options, 30_000)[:2])
    before = _entries(a.counter)
    merge_counts(a, b)
    assert _entries(a.counter) == before


# ----------------------------------------------------------------- a real LocalCluster
@pytest.fixture(scope="module")
def client():
    pytest.importorskip("distributed")
    from engramctl.cluster import open_client

    with open_client("local:2") as c:
        yield c


def run_on_dask(plan, vocab, client, tokenizer=None, **kw):
    """``run_hash_stats_dask`` on ``client`` once both workers are up."""
    from engramctl.stats.run_dask import run_hash_stats_dask

    client.wait_for_workers(2, timeout=60)
    return run_hash_stats_dask(plan, vocab=vocab, tokenizer=tokenizer, client=client, **kw)


def test_dask_tokens_equal_single_process(client, corpora, ds_vocab, demo_layout):
    plan = make_plan([corpora["tokens"]], demo_layout, doc_sep_id=SEP, batch_tokens=5000)
    seen = []
    report = run_on_dask(
        plan, ds_vocab, client, shard_bytes=20_000, progress=lambda *a: seen.append(a)
    )
    assert figures(report) == figures(run_hash_stats(plan, vocab=ds_vocab))
    assert seen[-1][0] == seen[-1][1] == plan.bytes_total and seen[-1][3] == report.tokens


def test_killed_worker_is_retried_and_text_report_identical(client, corpora, ds_vocab, demo_layout):
    plan = make_plan([corpora["text"]], demo_layout, doc_sep=True)
    tokenizer = load_matching_tokenizer("deepseek-v4", ds_vocab)
    single = run_hash_stats(plan, vocab=ds_vocab, tokenizer=tokenizer)
    assert single.warnings["invalid_utf8"]["count"] >= 2  # ours on line 121, in a later shard
    kill_one = KillOneWorker(client)

    report = run_on_dask(plan, ds_vocab, client, tokenizer, shard_bytes=6_000, progress=kill_one)
    assert kill_one.killed
    assert figures(report) == figures(single)


def test_limit_tokens_is_refused(client, corpora, ds_vocab, demo_layout):
    plan = plan_hash_stats([corpora["tokens"]], layout=demo_layout, limit_tokens=10)
    with pytest.raises(UsageError, match="drop --scheduler"):
        run_on_dask(plan, ds_vocab, client)


def test_worker_memory_too_small_is_refused(client, corpora, ds_vocab, demo_layout, monkeypatch):
    import engramctl.stats.run_dask as module

    plan = make_plan([corpora["tokens"] / "b.npy"], demo_layout)
    assert worker_memory(plan, plan.files) > 0
    monkeypatch.setattr(module, "worker_memory", lambda plan, shards: 1 << 50)
    with pytest.raises(EngramError, match=r"needs about 1024\.0 TiB per worker but worker tcp://"):
        run_on_dask(plan, ds_vocab, client)


def _cli(corpus: Path, vocab_path, *extra):
    from engramctl.cli import app

    args = ["hash-stats", corpus, "--vocab", vocab_path, "--doc-sep-id", SEP, "-q", *extra]
    return runner.invoke(app, [str(a) for a in args])


def test_cli_scheduler_report_equals_single_process(client, corpora, ds_vocab_path, tmp_path):
    client.wait_for_workers(2, timeout=60)
    address = client.scheduler.address
    one = _cli(corpora["tokens"], ds_vocab_path, "--report", tmp_path / "one.json")
    assert one.exit_code == 0, one.output
    many = _cli(
        corpora["tokens"], ds_vocab_path, "--report", tmp_path / "d.json", "--scheduler", address
    )
    assert many.exit_code == 0, many.output
    load = [json.loads((tmp_path / n).read_text()) for n in ("one.json", "d.json")]
    assert figures(load[0]) == figures(load[1])


def test_cli_unreachable_scheduler_is_a_clear_error(corpora, ds_vocab_path):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    result = _cli(corpora["tokens"], ds_vocab_path, "--scheduler", f"127.0.0.1:{port}")
    assert result.exit_code == 1
    assert "cannot reach the dask scheduler" in result.output
    assert "Traceback" not in result.output


def test_cli_version_mismatch_is_refused(client, corpora, ds_vocab_path, monkeypatch):
    import engramctl

    monkeypatch.setattr(engramctl, "__version__", "9.9.9")
    address = client.scheduler.address
    result = _cli(corpora["tokens"], ds_vocab_path, "--scheduler", address)
    assert result.exit_code == 1
    assert "runs engramctl 0.1.0 but this client runs 9.9.9" in " ".join(result.output.split())
