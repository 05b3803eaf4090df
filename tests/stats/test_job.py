"""``run_hash_stats_job``: the command as one library call (targets, pass, files, fallback)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from engramctl.corpus.files import CorpusOptions
from engramctl.errors import EngramError, UsageError
from engramctl.layout import LayoutRequest, resolve_layout
from engramctl.stats.job import HashStatsJob, run_hash_stats_job
from engramctl.stats.report import HashStatsReport
from engramctl.stats.run import plan_hash_stats, run_hash_stats


@pytest.fixture()
def stream(tmp_path):
    ids = (np.random.default_rng(5).zipf(1.3, 5_000) % 3000).astype(np.uint32)
    path = tmp_path / "s.u32"
    ids.tofile(path)
    return path


@pytest.fixture()
def resolved(ds_vocab):
    return resolve_layout(LayoutRequest(ngram_vocab="1009,1013"), vocab=ds_vocab)


def test_the_job_reports_what_the_plan_and_pass_report(tmp_path, ds_vocab, stream, resolved):
    options = CorpusOptions(doc_sep_id=7, batch_tokens=1000)
    job = HashStatsJob(inputs=(str(stream),), corpus=options, sweep=(500,), report=tmp_path / "r")
    seen, before = [], []
    outcome = run_hash_stats_job(
        job=job, vocab=ds_vocab, layout=resolved, on_plan=seen.append,
        before_saving=lambda report: before.append((report, (tmp_path / "r").exists())),
    )  # fmt: skip
    assert before == [(outcome.report, False)]  # called once counted, before the file is written
    plan = plan_hash_stats([str(stream)], layout=resolved.layout, options=options, sweep=(500,))
    direct = run_hash_stats(plan, vocab=ds_vocab)
    assert seen[0].files == plan.files and seen[0].memory_estimate == plan.memory_estimate
    assert outcome.report.layers == direct.layers and outcome.report.sweep == direct.sweep
    assert [s.path for s in outcome.saved] == [tmp_path / "r"] and not outcome.failed
    written = HashStatsReport.from_dict(json.loads((tmp_path / "r").read_text()))
    assert written.layers == direct.layers


def test_targets_are_refused_before_the_pass(tmp_path, ds_vocab, stream, resolved):
    (tmp_path / "r").write_text("kept")
    job = HashStatsJob(inputs=(str(stream),), report=tmp_path / "r")
    seen = []
    with pytest.raises(EngramError, match="exists; pass --overwrite"):
        run_hash_stats_job(job=job, vocab=ds_vocab, layout=resolved, on_plan=seen.append)
    assert not seen and (tmp_path / "r").read_text() == "kept"


def test_estimate_draws_no_plot(tmp_path):
    with pytest.raises(UsageError, match="--plot draws row-load histograms"):
        HashStatsJob(inputs=("x",), estimate=True, plot=tmp_path / "p.png")


def test_a_target_failing_after_the_pass_gets_a_fallback(
    tmp_path, ds_vocab, stream, resolved, monkeypatch
):
    import tempfile

    import engramctl._files as files

    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    target, real = tmp_path / "r.json", files.atomic_write

    def full_disk(path, *args, **kw):
        if path == target:
            raise EngramError(f"cannot write {path}: No space left on device")
        return real(path, *args, **kw)

    monkeypatch.setattr(files, "atomic_write", full_disk)
    job = HashStatsJob(inputs=(str(stream),), report=target)
    outcome = run_hash_stats_job(job=job, vocab=ds_vocab, layout=resolved)
    (saved,) = outcome.saved
    assert outcome.failed and "No space left" in saved.failure and not target.exists()
    assert saved.path.parent == tmp_path / "tmp"
    assert json.loads(saved.path.read_text())["tokens"] == outcome.report.tokens
