"""Out-of-core training and table-only adaptation (``train --freeze-backbone --init-from``)."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from typer.testing import CliRunner  # noqa: E402

from engramctl.cli import app  # noqa: E402
from tests.conftest import SAMPLE, read_jsonl  # noqa: E402
from tests.model.table_double import small_real_table  # noqa: E402

TINY = ["--depth", "2", "--width", "16", "--attn-heads", "2", "--seq-len", "16", "--batch", "2"]
TINY += ["--min-count", "1", "--device", "cpu", "--eval-every", "2"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    docs = read_jsonl(SAMPLE / "train.jsonl")
    (root / "docs.jsonl").write_text("\n".join(json.dumps(d) for d in docs[:3]) + "\n")
    (root / "other.jsonl").write_text("\n".join(json.dumps(d) for d in docs[-3:]) + "\n")
    held = read_jsonl(SAMPLE / "heldout.jsonl")[0]
    held["text"] = held["text"][:2000]
    (root / "heldout.jsonl").write_text(json.dumps(held) + "\n")
    (root / "empty.jsonl").write_text(json.dumps({"text": ""}) + "\n")
    return root


def make_table(path, ds_vocab, primes=(211, 223), dtype="float32"):
    return small_real_table(path, ds_vocab, primes=primes, dtype=dtype)


def all_rows(path):
    from engramctl.table.sources.table import open_table

    with open_table(path) as table:
        return table.gather(1, np.arange(table.layout.layer_rows(1)))


def run(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def train(corpus_file, heldout, table, vocab_path, out, *extra, steps=4):
    result = run(
        "train", "--corpus", corpus_file, "--heldout", heldout, "--table", table,
        "--vocab", vocab_path, "--out", out, "--steps", steps, *TINY, *extra,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    return out


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_out_of_core_training_equals_in_memory_bit_for_bit(
    tmp_path, corpus, ds_vocab, ds_vocab_path, dtype
):
    """Also on bfloat16: out of core, a trained row's float32 master copy rides in the commits, so
    the rows train as the in-memory float32 ones do (without it every flush would round them)."""
    a_table, b_table = (
        make_table(tmp_path / "a.zarr", ds_vocab, dtype=dtype),
        make_table(tmp_path / "b.zarr", ds_vocab, dtype=dtype),
    )
    held = corpus / "heldout.jsonl"
    a = train(corpus / "docs.jsonl", held, a_table, ds_vocab_path, tmp_path / "a", "--in-memory")
    # a buffer of 40 rows forces many flushes mid-run: the result must not depend on them
    b = train(
        corpus / "docs.jsonl", held, b_table, ds_vocab_path, tmp_path / "b",
        "--out-of-core", "--buffer-rows", 40,
    )  # fmt: skip
    assert (a / "model.safetensors").read_bytes() == (b / "model.safetensors").read_bytes()
    np.testing.assert_array_equal(all_rows(a_table), all_rows(b_table))
    ha, hb = (json.loads((m / "history.json").read_text()) for m in (a, b))
    assert ha == hb
    meta = json.loads((b / "config.json").read_text())
    assert meta["train"]["out_of_core"] is True
    assert "moments" not in meta["result"] and not (tmp_path / "b.adam.zarr").exists()
    history = json.loads(run("history", b_table, "--json").output)["commits"]
    assert len(history) > 2 and {c["made_by"]["kind"] for c in history} == {"train"}
    verify = run("verify", b_table, "--deep")
    assert verify.exit_code == 0, verify.output


@pytest.fixture(scope="module")
def base_model(tmp_path_factory, corpus, ds_vocab, ds_vocab_path):
    root = tmp_path_factory.mktemp("base")
    table = make_table(root / "base.zarr", ds_vocab)
    model = train(corpus / "docs.jsonl", corpus / "heldout.jsonl", table, ds_vocab_path, root / "m")
    return model, table


def test_table_only_adaptation(tmp_path, corpus, base_model, ds_vocab_path):
    import shutil

    model, base_table = base_model
    table = tmp_path / "adapt.zarr"
    shutil.copytree(base_table, table)
    before = all_rows(table)
    out = tmp_path / "adapted"
    result = run(
        "train", "--freeze-backbone", "--init-from", model, "--table", table,
        "--corpus", corpus / "other.jsonl", "--heldout", corpus / "heldout.jsonl",
        "--out", out, "--steps", 3, "--device", "cpu", "--table-lr", "0.05",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "s writing rows (" in result.output  # the final commit's time is reported
    assert (out / "model.safetensors").read_bytes() == (model / "model.safetensors").read_bytes()
    meta = json.loads((out / "config.json").read_text())
    adaptation = meta["adaptation"]
    assert adaptation["kind"] == "table-only" and adaptation["base_model"] == str(model)
    assert adaptation["steps"] == 3 and adaptation["corpus"]["path"].endswith("other.jsonl")
    assert "moments" not in adaptation and not (tmp_path / "adapt.adam.zarr").exists()
    assert meta["train"]["freeze_backbone"] and meta["train"]["out_of_core"]
    after = all_rows(table)
    changed = np.any(before != after, axis=1)
    assert 0 < changed.sum() < len(changed)
    # the moments ride in the table's commit: exactly the changed rows have them, step counts
    # 3 or fewer (a float32 table needs no master copy)
    from engramctl.table.sources.table import open_table

    with open_table(table) as opened:
        ids = np.arange(opened.layout.layer_rows(1))
        steps = opened.side_rows(1, "adam", ids)[:, -1]
        assert opened.side_rows(1, "master", ids) is None
        assert opened.commits[-1].made_by["step"] == 3  # (the base's training made one before)
    assert np.array_equal(~np.isnan(steps), changed) and np.nanmax(steps) <= 3
    assert run("verify", table, "--deep").exit_code == 0
    evaluated = run(
        "eval", "--model", out, "--table", table, "--benchmark", corpus / "heldout.jsonl",
        "--device", "cpu", "--json",
    )  # fmt: skip
    assert evaluated.exit_code == 0, evaluated.output


def test_adaptation_bad_input(tmp_path, corpus, base_model, ds_vocab, ds_vocab_path):
    model, base_table = base_model
    base = ["train", "--corpus", corpus / "other.jsonl", "--out", tmp_path / "x", "--device", "cpu"]
    result = run(*base, "--freeze-backbone", "--table", base_table, "--vocab", ds_vocab_path)
    assert result.exit_code == 2 and "--init-from" in result.output
    other = make_table(tmp_path / "other.zarr", ds_vocab, primes=(227, 229))
    before = all_rows(other)
    result = run(*base, "--freeze-backbone", "--init-from", model, "--table", other)
    assert result.exit_code == 1 and "layout" in result.output
    assert np.array_equal(before, all_rows(other))
    empty = ["--corpus", corpus / "empty.jsonl"]
    result = run(*base, *empty, "--freeze-backbone", "--init-from", model, "--table", base_table)
    assert result.exit_code == 1 and "tokens" in result.output
    assert not (tmp_path / "x").exists()
    assert len(result.output.strip().splitlines()) == 1
