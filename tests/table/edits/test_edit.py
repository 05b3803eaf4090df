"""engramctl edit: reset, copy or scale the rows a phrase hashes to, as one commit; bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from engramctl.cli import app
from engramctl.table import open_table
from engramctl.table.core.dtypes import decode_rows
from engramctl.table.edit import phrase_rows
from engramctl.vocab import CanonicalVocab

SMALL = ["--ngram-vocab", "500,500", "--heads", "2", "--dim", "32", "--chunk-rows", "300"]
TEXT = "the Great wall"
runner = CliRunner()


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture
def tables(tmp_path, ds_vocab_path):
    paths = []
    for name, seed in (("t.zarr", "1"), ("other.zarr", "2")):
        path = tmp_path / name
        args = ["init-table", path, "--vocab", ds_vocab_path, *SMALL, "--init-seed", seed]
        assert run(*args, "--lazy").exit_code == 0
        paths.append(path)
    return paths


def rows_of(path, vocab_path, order=None):
    from engramctl.tokenizer import encode_text

    vocab = CanonicalVocab.load(vocab_path)
    ids, _ = encode_text(TEXT, "deepseek-v4", vocab)
    with open_table(path) as table:
        rows = phrase_rows(table, ids, vocab, order)
        return {k: decode_rows(table.gather(k, v), table.dtype, table.dim) for k, v in rows.items()}


def test_scale_copy_reset_are_commits_revert_undoes(tables, ds_vocab_path):
    path, other = tables
    before = rows_of(path, ds_vocab_path)
    result = run("edit", path, "--vocab", ds_vocab_path, "--text", TEXT, "--scale", "2", "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["operation"] == "scale" and all(v > 0 for v in doc["rows"].values())
    scaled = rows_of(path, ds_vocab_path)
    for layer in before:
        np.testing.assert_allclose(scaled[layer], before[layer] * 2, rtol=1e-6)
    assert (
        run("edit", path, "--vocab", ds_vocab_path, "--text", TEXT, "--from", other).exit_code == 0
    )
    copied = rows_of(path, ds_vocab_path)
    for layer, want in rows_of(other, ds_vocab_path).items():
        np.testing.assert_array_equal(copied[layer], want)
    result = run("edit", path, "--vocab", ds_vocab_path, "--text", TEXT, "--reset", "--order", "2")
    assert result.exit_code == 0, result.output
    history = json.loads(run("history", path, "--json").stdout)["commits"]
    assert [c["made_by"]["operation"] for c in history] == ["scale", "from", "reset"]
    assert history[0]["message"] == TEXT
    assert run("revert", path, "--to", "base").exit_code == 0
    for layer, want in rows_of(path, ds_vocab_path).items():
        np.testing.assert_array_equal(want, before[layer])


def test_bad_input_is_one_line(tables, ds_vocab_path, tmp_path):
    path, _ = tables
    both = run("edit", path, "--vocab", ds_vocab_path, "--text", TEXT, "--reset", "--scale", "2")
    assert both.exit_code != 0 and "exactly one of --reset, --from, --scale" in both.output
    empty = run("edit", path, "--vocab", ds_vocab_path, "--text", "", "--reset")
    assert empty.exit_code != 0 and "is empty" in empty.output
    odd = tmp_path / "odd.zarr"
    assert run("init-table", odd, "--vocab", ds_vocab_path, "--ngram-vocab", "400,400",
               "--heads", "2", "--dim", "32", "--lazy").exit_code == 0  # fmt: skip
    other = run("edit", path, "--vocab", ds_vocab_path, "--text", TEXT, "--from", odd)
    assert other.exit_code != 0 and "another layout" in other.output
    assert len(other.output.strip().splitlines()) == 1
    assert not json.loads(run("history", path, "--json").stdout)["commits"]
