"""fit-gate: the gate fitted against the model it is mixed with, stored in one commit."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from tests.counts.test_counts_cli import run, setup, with_model  # noqa: E402, F401


def write_text(path, text: str):
    path.write_text(json.dumps({"text": text}) + "\n")
    return path


@pytest.fixture(scope="module")
def slices(setup, ds_vocab_path, tmp_path_factory):  # noqa: F811
    """Held-out text of the counts' corpus in halves (fit, eval), and a model that already
    knows that text (trained on it): for it the count memory carries no information."""
    root = tmp_path_factory.mktemp("slices")
    held = json.loads((setup["corpus"] / "heldout.jsonl").read_text())["text"]
    table = root / "t.zarr"
    shutil.copytree(setup["table"], table)
    knowing = root / "knowing"
    result = run("train", "--corpus", setup["corpus"] / "heldout.jsonl", "--out", knowing,
                 "--steps", 80, "--table", table, "--overwrite-rows", "--vocab", ds_vocab_path,
                 "--depth", 2, "--width", 32, "--attn-heads", 2, "--seq-len", 32, "--batch", 4,
                 "--min-count", 1, "--device", "cpu")  # fmt: skip
    assert result.exit_code == 0, result.output
    half = len(held) // 2
    return {
        "fit": write_text(root / "fit.jsonl", held[:half]),
        "eval": write_text(root / "eval.jsonl", held[half:]),
        "knowing": ("--model", knowing, "--table", table, "--device", "cpu"),
    }


def metrics(model, counts, benchmark):
    result = run("eval", *model, "--counts", counts, "--benchmark", benchmark, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def fit(model, counts, *benchmarks, extra=()):
    args = [a for b in benchmarks for a in ("--benchmark", b)]
    result = run("fit-gate", counts, *model, *args, *extra, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def test_fitted_gate_keeps_uninformative_counts_out(setup, slices, tmp_path):  # noqa: F811
    counts = tmp_path / "c.zarr"
    shutil.copytree(setup["counts"], counts)
    model = slices["knowing"]
    before = metrics(model, counts, slices["eval"])
    assert before["model"]["gate_warning"]  # the build's gate was fitted against the unigram
    # the build's gate trusts the counts: where the model knows better, it costs nats
    assert before["metrics"]["mixed_loss"] > before["metrics"]["model_loss"] + 0.5
    gate = fit(model, counts, slices["fit"])
    assert gate["fitted"] and gate["against"] == "model"
    after = metrics(model, counts, slices["eval"])  # out of sample
    assert after["model"]["gate_warning"] is None  # fitted for this very model
    m = after["metrics"]
    assert m["mixed_loss"] <= m["model_loss"] + 0.01, m
    assert m["mean_lambda"] < 0.05


def test_fitted_gate_improves_on_the_model_in_domain(setup, slices, tmp_path):  # noqa: F811
    counts = tmp_path / "c.zarr"
    shutil.copytree(setup["counts"], counts)
    gate = fit(with_model(setup), counts, slices["fit"])
    assert gate["feature_set"] == "recent" and len(gate["weights"]) == len(gate["features"])
    assert gate["features"][-1] == "recent_gain"
    # in sample the mix is at least as good as either component
    assert gate["heldout_loss_mixed"] <= min(gate["heldout_loss_model"],
                                             gate["heldout_loss_counts"]) + 1e-6  # fmt: skip
    m = metrics(with_model(setup), counts, slices["eval"])["metrics"]  # out of sample
    assert m["mixed_loss"] < m["model_loss"] - 0.05, m
    # the store is whole: its checksum and arrays verify, info names the model
    assert run("verify", counts).exit_code == 0
    info = json.loads(run("info", counts, "--json").output)
    assert info["gate"]["model"]["path"] == str(setup["model"])
    assert info["gate"]["benchmarks"] == [str(slices["fit"])]
    # a gate that reads all of the model (entropy, top token, agreement, recent gain): eval
    # and generate compute each per position / step
    every = fit(with_model(setup), counts, slices["fit"], extra=("--features", "all"))
    assert {"model_entropy", "log_counts_of_model_top", "level_0"} <= set(every["features"])
    m = metrics(with_model(setup), counts, slices["eval"])["metrics"]
    assert m["mixed_loss"] < m["model_loss"] - 0.05, m
    result = run("generate", *with_model(setup), "--prompt", "def main(", "--max-tokens", 3,
                 "--counts", counts, "--json")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert 0 < json.loads(result.output)["counts"]["mean_lambda"] < 1
    bad = run("fit-gate", counts, *with_model(setup), "--benchmark", slices["fit"],
              "--features", "everything")  # fmt: skip
    assert bad.exit_code != 0 and "--features must be one of" in bad.output


def test_a_model_gate_needs_the_models_entropy():
    from engramctl.counts.gate import fit_gate, gate_lambda
    from engramctl.errors import UsageError

    rng = np.random.default_rng(0)
    evidence = np.column_stack([rng.integers(0, 50, 400), rng.integers(0, 8, 400),
                                rng.integers(0, 4, 400)])  # fmt: skip
    entropy = rng.uniform(0, 6, 400)
    # the counts are right exactly where the model is unsure: λ should follow the entropy
    p_model = np.where(entropy > 3, 0.01, 0.5)
    p_counts = np.where(entropy > 3, 0.5, 0.01)
    gate = fit_gate(p_counts, p_model, evidence, 3, background="model", model_entropy=entropy)
    lam = gate_lambda(gate["weights"], evidence, 3, entropy)
    assert lam[entropy > 4].min() > 0.9 and lam[entropy < 2].max() < 0.1
    assert gate["heldout_loss_mixed"] < gate["heldout_loss_model"] - 0.5
    with pytest.raises(UsageError, match="entropy"):
        gate_lambda(gate["weights"], evidence, 3)


def test_eval_warns_for_another_model(setup, slices, tmp_path):  # noqa: F811
    counts = tmp_path / "c.zarr"
    shutil.copytree(setup["counts"], counts)
    from engramctl.counts.store import read_metadata, write_gate

    gate = dict(read_metadata(counts)["gate"])
    gate["model"] = {"path": "elsewhere/m", "identity": {"config_sha256": "0" * 64}}
    write_gate(counts, gate)
    result = run("eval", *with_model(setup), "--counts", counts, "--benchmark",
                 slices["eval"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "fitted for the model elsewhere/m" in result.output
    assert result.output.count("fit-gate") == 1  # warned once
    assert run("verify", counts).exit_code == 0  # the rewritten metadata checks


def test_fit_gate_bad_input_is_one_line(setup, slices, tmp_path):  # noqa: F811
    counts = tmp_path / "c.zarr"
    shutil.copytree(setup["counts"], counts)
    before = (counts / "zarr.json").read_bytes()
    missing = run("fit-gate", counts, *with_model(setup), "--benchmark", tmp_path / "none.jsonl")
    assert missing.exit_code != 0 and "benchmark not found" in missing.output
    tiny = write_text(tmp_path / "tiny.jsonl", "a b")
    short = run("fit-gate", counts, *with_model(setup), "--benchmark", tiny)
    assert short.exit_code != 0 and "give more held-out text" in short.output
    assert (counts / "zarr.json").read_bytes() == before  # nothing written
    gone = run("fit-gate", tmp_path / "no.zarr", *with_model(setup), "--benchmark", tiny)
    assert gone.exit_code != 0 and "no count memory" in gone.output
    assert "Traceback" not in missing.output + short.output + gone.output
