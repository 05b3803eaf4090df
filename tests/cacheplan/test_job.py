"""``run_cache_plan_job``: the command as one library call (targets, plan, files)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from engramctl.cacheplan.job import CachePlanJob, run_cache_plan_job
from engramctl.cacheplan.plan import plan_workload
from engramctl.errors import EngramError
from engramctl.layout import LayoutRequest, resolve_layout


@pytest.fixture()
def chat(tmp_path):
    rng = np.random.default_rng(0)
    templates = rng.integers(3, 5000, size=(6, 24))
    path = tmp_path / "chat.npy"
    np.save(path, templates[rng.integers(0, 6, size=64)])
    return path


@pytest.fixture()
def resolved(ds_vocab):
    request = LayoutRequest(ngram_vocab="1009,1013", heads=2, layers="1,4")
    return resolve_layout(request, vocab=ds_vocab)


def test_the_job_writes_the_plan_it_returns(tmp_path, ds_vocab, chat, resolved):
    job = CachePlanJob(
        paths=(str(chat),), batch=4, sizes=(100, 1000), dtype="float16",
        report=tmp_path / "plan.json", plot=tmp_path / "plan.png",
    )  # fmt: skip
    before = []
    plan = run_cache_plan_job(
        job=job, vocab=ds_vocab, layout=resolved,
        before_saving=lambda made: before.append((made, (tmp_path / "plan.json").exists())),
    )  # fmt: skip
    assert before == [(plan, False)]
    assert (tmp_path / "plan.json").read_text() == plan.to_json() + "\n"
    assert (tmp_path / "plan.png").read_bytes()[:4] == b"\x89PNG"
    direct = plan_workload(
        paths=[str(chat)], vocab=ds_vocab, layout=resolved.layout, dim=resolved.dim,
        dtype="float16", batch=4, sizes=(100, 1000),
    )  # fmt: skip
    keep_out = {"seconds"}

    def figures(doc):
        doc = {k: v for k, v in doc.items() if k not in keep_out}
        doc["layers"] = {
            k: {f: v for f, v in layer.items() if f not in keep_out}
            for k, layer in doc["layers"].items()
        }
        return doc

    assert figures(json.loads(plan.to_json())) == figures(direct.to_dict())
    assert plan.dtype == "float16" and plan.dim == resolved.dim


def test_targets_are_refused_before_reading(tmp_path, ds_vocab, resolved):
    (tmp_path / "plan.json").write_text("kept")
    job = CachePlanJob(paths=(str(tmp_path / "missing.npy"),), report=tmp_path / "plan.json")
    with pytest.raises(EngramError, match="exists; pass --overwrite"):
        run_cache_plan_job(job=job, vocab=ds_vocab, layout=resolved)
    assert (tmp_path / "plan.json").read_text() == "kept"
