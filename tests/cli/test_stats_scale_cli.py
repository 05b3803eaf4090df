"""``hash-stats --partitions / --max-memory / --estimate / --extrapolate`` through CliRunner."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from engramctl.cli import app

runner = CliRunner()
KEEP_OUT = ("seconds", "tokens_per_second", "memory_estimate_bytes")


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture()
def stream(tmp_path):
    rng = np.random.default_rng(3)
    path = tmp_path / "s.u32"
    ids = (rng.zipf(1.3, 60_000) % 4000).astype(np.uint32)
    ids[rng.random(ids.shape[0]) < 0.003] = 7
    ids.tofile(path)
    return path


def _report(path):
    return {k: v for k, v in json.loads(path.read_text()).items() if k not in KEEP_OUT}


def test_partitions_and_max_memory_give_the_single_pass_report(tmp_path, ds_vocab_path, stream):
    base = ["hash-stats", stream, "--vocab", ds_vocab_path, "--doc-sep-id", 7,
            "--ngram-vocab", "60000,60000", "--sweep", "5k"]  # fmt: skip
    one = invoke(*base, "-q", "--report", tmp_path / "one.json")
    assert one.exit_code == 0, one.output
    parted = invoke(*base, "-q", "--partitions", 3, "--spill-dir", tmp_path, "--report",
                    tmp_path / "three.json")  # fmt: skip
    assert parted.exit_code == 0, parted.output
    assert _report(tmp_path / "three.json") == _report(tmp_path / "one.json")
    plain = invoke(*base, "--report", tmp_path / "x.json")
    bound = json.loads((tmp_path / "x.json").read_text())["memory_estimate_bytes"]
    chosen = invoke(*base, "--max-memory", bound // 3, "--report", tmp_path / "auto.json")
    assert chosen.exit_code == 0, chosen.output
    assert plain.exit_code == 0 and "counting in" not in plain.output
    text = " ".join(chosen.output.split())
    assert "would not fit --max-memory" in text and "counting in" in text and "partitions" in text
    assert _report(tmp_path / "auto.json") == _report(tmp_path / "one.json")
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("engramctl-")) == []


def test_estimate_and_extrapolate(tmp_path, ds_vocab_path, stream):
    out = tmp_path / "e.json"
    result = invoke(
        "hash-stats", stream, "--vocab", ds_vocab_path, "--doc-sep-id", 7,
        "--estimate", "--extrapolate", "2B", "--sweep", "1M", "--report", out,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "estimated" in text and "extrapolated to 2,000,000,000 tokens" in text
    report = json.loads(out.read_text())
    assert report["estimated"] is True and report["relative_standard_error"] > 0
    assert report["extrapolation"]["tokens"] == 2e9 and len(report["extrapolation"]["sweep"]) == 1


@pytest.mark.parametrize(
    "extra, message",
    [
        (("--partitions", "0"), "--partitions must be at least 1, got 0"),
        (("--partitions", "-3"), "--partitions must be at least 1, got -3"),
        (("--estimate", "--partitions", "2"), "--estimate counts nothing exactly"),
        (("--estimate", "--plot", "p.png"), "--plot draws row-load histograms"),
        (("--extrapolate", "lots"), "--extrapolate: expected a number of tokens"),
        (("--extrapolate", "100"), "--extrapolate 100 is not above the ~60,000 tokens"),
    ],
)
def test_bad_input_is_one_line(ds_vocab_path, stream, extra, message):
    result = invoke("hash-stats", stream, "--vocab", ds_vocab_path, "-q", *extra)
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split())
    assert "Traceback" not in result.output


def test_unwritable_spill_dir(tmp_path, ds_vocab_path, stream):
    result = invoke("hash-stats", stream, "--vocab", ds_vocab_path, "-q", "--partitions", 2,
                    "--spill-dir", tmp_path / "missing")  # fmt: skip
    assert result.exit_code == 2
    assert "is not a directory" in result.output and "Traceback" not in result.output
