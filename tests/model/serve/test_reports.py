"""What eval and generate print about how rows were served: a resident table is said to be
resident, never a "cache hit rate 0.0%" that reads like a failure (issue 24 §3)."""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")

from tests.model import test_train_eval as base  # noqa: E402

corpus, small_layout, tables, trained = base.corpus, base.small_layout, base.tables, base.trained


@pytest.fixture
def mc(tmp_path):
    path = tmp_path / "mc.jsonl"
    line = {"context": "def main(", "choices": ["):", " banana split"], "label": 0}
    path.write_text(json.dumps(line) + "\n")
    return path


def test_eval_resident_says_the_table_is_resident(trained, mc):
    model, _, _ = trained
    result = base.eval_cpu(model, "t.zarr", "--benchmark", mc, "--resident")
    assert result.exit_code == 0, result.output
    assert "0.0%" not in result.stdout and "cache hit rate" not in result.stdout
    assert "resident" in result.stdout and "every row on the device" in result.stdout


def test_eval_resident_json_has_no_hit_rate(trained, mc):
    model, _, _ = trained
    result = base.eval_cpu(model, "t.zarr", "--benchmark", mc, "--resident", "--json")
    assert result.exit_code == 0, result.output
    paging = json.loads(result.stdout)["paging"]
    assert paging["mode"] == "resident" and paging["hit_rate"] is None
    assert paging["cache_rows"] > 0 and paging["rows_requested"] > 0


def test_eval_paged_still_reports_its_hit_rate(trained, mc):
    model, _, _ = trained
    result = base.eval_cpu(model, "t.zarr", "--benchmark", mc)
    assert result.exit_code == 0, result.output
    assert "cache hit rate" in result.stdout and "%" in result.stdout
