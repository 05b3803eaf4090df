"""``engramctl cache-plan`` through typer's CliRunner: outputs reopened, bad input one line."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from engramctl.cli import app
from tests.conftest import REPO

runner = CliRunner()
BENCH = REPO / "sample_data" / "bench" / "lm_heldout.jsonl"
SMALL = ["--ngram-vocab", "1009,1013", "--heads", "2", "--layers", "1,4"]


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture()
def chat(tmp_path):
    """A 2-D .npy of 64 short prompts drawn from 6 templates (chat-like: heavy reuse)."""
    rng = np.random.default_rng(0)
    templates = rng.integers(3, 5000, size=(6, 24))
    path = tmp_path / "chat.npy"
    np.save(path, templates[rng.integers(0, 6, size=64)])
    return path


def test_json_report_and_plot(tmp_path, ds_vocab_path, chat):
    report, plot, spill = tmp_path / "plan.json", tmp_path / "plan.png", tmp_path / "spill"
    spill.mkdir()
    result = invoke(
        "cache-plan", chat, "--vocab", ds_vocab_path, *SMALL, "--batch", 4, "--sizes",
        "100,1k,4k", "--tokens-per-s", 1000, "--json", "--report", report, "--plot", plot,
        "--spill-dir", spill,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert list(spill.iterdir()) == []  # opt's spilled trace is gone
    doc = json.loads(result.stdout)
    assert json.loads(report.read_text()) == doc
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert doc["batches"] == 16 and doc["warmup_batches"] == 2 and doc["row_bytes"] == 256
    for layer in ("1", "4"):
        entry = doc["layers"][layer]
        for policy in ("lru", "pager", "static", "opt"):
            points = entry[policy]
            assert [p["cache_rows"] for p in points] == [100, 1000, 4000]
        lru = [p["hit_rate"] for p in entry["lru"]]
        assert lru == sorted(lru) and lru[-1] > 0.8  # six templates repeat: almost all hits
        assert all(o["hits"] >= p["hits"] for o, p in zip(entry["opt"], entry["lru"], strict=True))
        top = entry["lru"][-1]
        assert top["bandwidth"] == pytest.approx(top["bytes_per_token"] * 1000)
        assert entry["dedup_ratio"] > 1 and entry["rows_per_token"] > 0
        assert set(entry["reach"]["lru"]) == {"50%", "90%", "99%"}
    assert doc["all_layers"]["lru"][0]["cache_rows"] == 200


def test_rich_output_names_every_layer(ds_vocab_path):
    result = invoke(
        "cache-plan", BENCH, "--vocab", ds_vocab_path, *SMALL, "--points", 4, "--policy",
        "lru,pager", "--tokens-per-s", 50, "-q",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "layer 1:" in result.stdout and "layer 4:" in result.stdout
    assert "smallest lru cache" in result.stdout and "static" not in result.stdout


def test_table_sets_the_layout_and_its_vocab_is_checked(tmp_path, ds_vocab_path, tiny_vocab, chat):
    table = tmp_path / "t.zarr"
    made = invoke(
        "init-table", table, "--vocab", ds_vocab_path, "--ngram-vocab", "1009,1013",
        "--heads", "2", "--layers", "1,4", "--dim", "32", "--dtype", "bfloat16", "--lazy",
    )  # fmt: skip
    assert made.exit_code == 0, made.output
    common = ["cache-plan", chat, "--batch", 4, "--sizes", "500", "--json"]
    from_table = invoke(*common, "--vocab", ds_vocab_path, "--table", table)
    from_flags = invoke(*common, "--vocab", ds_vocab_path, *SMALL)
    assert from_table.exit_code == 0, from_table.output
    a, b = json.loads(from_table.stdout), json.loads(from_flags.stdout)
    assert a["row_bytes"] == 64 and a["dtype"] == "bfloat16"
    assert a["layers"]["1"]["lru"][0]["hits"] == b["layers"]["1"]["lru"][0]["hits"]
    fp8 = invoke(*common, "--vocab", ds_vocab_path, "--table", table, "--dtype", "fp8")
    assert json.loads(fp8.stdout)["row_bytes"] == 33  # 32 values + 1 scale byte
    other = tmp_path / "other.parquet"
    tiny_vocab.save(other)
    refused = invoke(*common, "--vocab", other, "--table", table)
    assert refused.exit_code == 1 and "vocab fingerprint" in refused.output
    flags_too = invoke(*common, "--vocab", ds_vocab_path, "--table", table, "--heads", "4")
    assert flags_too.exit_code == 2


@pytest.mark.parametrize(
    ("extra", "code", "message"),
    [
        (["--sizes", "0,5"], 2, "at least 1 row"),
        (["--sizes", "-5"], 2, "at least 1 row"),
        (["--sizes", "lots"], 2, "expected comma-separated integers"),
        (["--warmup-fraction", "1"], 2, "[0, 1)"),
        (["--warmup-fraction", "-0.5"], 2, "[0, 1)"),
        (["--batch", "65"], 2, "larger than the workload"),
        (["--batch", "32"], 1, "leaving 1"),
        (["--tokens-per-s", "0"], 2, "positive"),
        (["--tokens-per-s", "-3"], 2, "positive"),
        (["--policy", "fifo"], 2, "--policy"),
        (["--spill-dir", "/nonexistent/spill"], 2, "--spill-dir"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(
    tmp_path, ds_vocab_path, chat, extra, code, message
):
    report = tmp_path / "plan.json"
    result = invoke(
        "cache-plan", chat, "--vocab", ds_vocab_path, *SMALL, "--report", report, *extra
    )
    assert result.exit_code == code, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0]
    assert "Traceback" not in result.output
    assert not report.exists() and list(tmp_path.iterdir()) == [chat]


def test_refuses_to_overwrite_a_report(tmp_path, ds_vocab_path, chat):
    report = tmp_path / "plan.json"
    report.write_text("keep")
    result = invoke("cache-plan", chat, "--vocab", ds_vocab_path, *SMALL, "--report", report)
    assert result.exit_code == 1 and "--overwrite" in result.output
    assert report.read_text() == "keep"
