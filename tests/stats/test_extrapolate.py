"""--extrapolate: token parsing, the Heaps fit, checkpoints that add up across partitions, and the
report section (predictions, the 25% honesty check)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from engramctl.corpus.files import CorpusOptions
from engramctl.errors import UsageError
from engramctl.stats.extrapolate import fit_heaps, parse_tokens
from engramctl.stats.run import plan_hash_stats, run_hash_stats
from tests.stats.test_partition import token_corpus  # noqa: F401 (a fixture)

SEP = 7


def test_parse_tokens():
    assert parse_tokens("1e12") == 1e12
    assert parse_tokens("500B") == 5e11 and parse_tokens("2T") == 2e12
    assert parse_tokens("1_000_000") == 1e6
    for bad in ("abc", "", "-5", "nan", "inf", "0"):
        with pytest.raises(UsageError, match="--extrapolate"):
            parse_tokens(bad)


def test_fit_recovers_a_power_law():
    tokens = np.geomspace(1e3, 1e7, 40)
    k, beta = fit_heaps(tokens, 3.5 * tokens**0.71)
    assert abs(k - 3.5) < 1e-6 and abs(beta - 0.71) < 1e-9
    with pytest.raises(ValueError):
        fit_heaps(np.array([5.0]), np.array([3.0]))


def _plan(root, layout, **kw):
    options = CorpusOptions(doc_sep_id=SEP)
    return plan_hash_stats([str(root)], layout=layout, options=options, sweep=(5000,), **kw)


def test_extrapolation_section(token_corpus, ds_vocab, demo_layout):  # noqa: F811
    report = run_hash_stats(_plan(token_corpus, demo_layout, extrapolate=1e12), vocab=ds_vocab)
    section = json.loads(report.to_json())["extrapolation"]
    assert section["tokens"] == 1e12 and section["fitted_on_tokens"] == report.tokens
    assert len(section["checkpoints"]) >= 40
    assert section["checkpoints"][-1] == [
        report.tokens,
        [o.distinct for o in report.layers[1].values()],
    ]
    for n, entry in section["orders"].items():
        assert 0 < entry["beta"] <= 1.2
        assert report.layers[1][int(n)].distinct < entry["distinct"] <= 1e12
        check = entry["check"]
        assert check["fitted_on_tokens"] <= 0.25 * report.tokens
        assert check["actual_distinct"] == report.layers[1][int(n)].distinct
        assert check["relative_error"] == pytest.approx(
            check["predicted_distinct"] / check["actual_distinct"] - 1
        )
    assert set(section["layers"]) == {"1", "15"}
    assert section["sweep"][0]["ngram_vocab"] == [5000, 5000]
    head = section["layers"]["1"]["orders"]["2"]["heads"][0]
    assert head["occupancy"] > 0.99  # 1e12 tokens in 646,400 rows: every row taken


def test_partitioned_checkpoints_add_up(token_corpus, ds_vocab, demo_layout):  # noqa: F811
    single = run_hash_stats(_plan(token_corpus, demo_layout, extrapolate=1e9), vocab=ds_vocab)
    parted = run_hash_stats(
        _plan(token_corpus, demo_layout, extrapolate=1e9, partitions=3), vocab=ds_vocab
    )
    assert parted.extrapolation == single.extrapolation


def test_estimate_extrapolates_too(token_corpus, ds_vocab, demo_layout):  # noqa: F811
    exact = run_hash_stats(_plan(token_corpus, demo_layout, extrapolate=1e9), vocab=ds_vocab)
    est = run_hash_stats(
        _plan(token_corpus, demo_layout, extrapolate=1e9, estimate=True), vocab=ds_vocab
    )
    for n, entry in exact.extrapolation["orders"].items():
        assert abs(est.extrapolation["orders"][n]["beta"] - entry["beta"]) < 0.02


def test_bad_targets_and_scheduler(token_corpus, ds_vocab, demo_layout):  # noqa: F811
    with pytest.raises(UsageError, match="is not above the ~"):
        _plan(token_corpus, demo_layout, extrapolate=1000)
    from engramctl.stats.run_dask import run_hash_stats_dask

    plan = _plan(token_corpus, demo_layout, extrapolate=1e12)
    with pytest.raises(UsageError, match="drop --scheduler"):
        run_hash_stats_dask(plan, vocab=ds_vocab, scheduler="local:1")
