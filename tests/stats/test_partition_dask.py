"""Partitioned counting on a real LocalCluster: reports identical to the single pass for K = 1, 3,
8 (token files cut inside documents, text with warnings, a worker killed mid-run)."""

from __future__ import annotations

import pytest

from engramctl.stats.run import load_matching_tokenizer, plan_hash_stats, run_hash_stats
from tests.conftest import KillOneWorker
from tests.stats import test_hash_stats_dask as base
from tests.stats.test_partition import figures

SEP, make_plan = base.SEP, base.make_plan
corpora = base.corpora  # the same module-scoped fixture: token files and text with warnings
client, run_on_dask = base.client, base.run_on_dask  # a LocalCluster of 2 workers, and a run on it


@pytest.mark.slow
@pytest.mark.parametrize("parts", [1, 3, 8])
def test_partitioned_dask_equals_single_pass(client, corpora, ds_vocab, demo_layout, parts):
    from dataclasses import replace

    plan = make_plan([corpora["tokens"]], demo_layout, doc_sep_id=SEP, batch_tokens=5000)
    single = run_hash_stats(plan, vocab=ds_vocab)
    report = run_on_dask(replace(plan, partitions=parts), ds_vocab, client, shard_bytes=20_000)
    assert figures(report) == figures(single)


@pytest.mark.slow
def test_partitioned_dask_survives_a_killed_worker(client, corpora, ds_vocab, demo_layout):
    plan = plan_hash_stats(
        [str(corpora["text"])], layout=demo_layout, sweep=(5000,), partitions=3,
        options=make_plan([corpora["text"]], demo_layout, doc_sep=True).options,
    )  # fmt: skip
    tokenizer = load_matching_tokenizer("deepseek-v4", ds_vocab)
    from dataclasses import replace

    single = run_hash_stats(replace(plan, partitions=None), vocab=ds_vocab, tokenizer=tokenizer)
    kill_one = KillOneWorker(client)

    report = run_on_dask(plan, ds_vocab, client, tokenizer, shard_bytes=6_000, progress=kill_one)
    assert kill_one.killed
    assert single.warnings["invalid_utf8"]["count"] >= 2
    assert figures(report) == figures(single)


@pytest.mark.slow
def test_estimate_on_dask_equals_single_process(client, corpora, ds_vocab, demo_layout):
    """Sketches merge by register-wise maximum: the same estimates whatever the shards."""
    from dataclasses import replace

    plan = make_plan([corpora["tokens"]], demo_layout, doc_sep_id=SEP, batch_tokens=5000)
    plan = replace(plan, estimate=True)
    single = run_hash_stats(plan, vocab=ds_vocab)
    report = run_on_dask(plan, ds_vocab, client, shard_bytes=20_000)
    assert report.estimated and figures(report) == figures(single)
