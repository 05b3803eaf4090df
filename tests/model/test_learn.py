"""``edit --learn``: a fact written into a model's table as one commit (only its rows train)."""

from __future__ import annotations

import hashlib
import json
import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from typer.testing import CliRunner  # noqa: E402

from engramctl.cli import app  # noqa: E402
from tests.conftest import SAMPLE, read_jsonl  # noqa: E402
from tests.model.table_double import small_real_table  # noqa: E402

FACT = "The assert statement is a way"
TINY = ["--depth", "2", "--width", "16", "--attn-heads", "2", "--seq-len", "16", "--batch", "2"]
TINY += ["--min-count", "1", "--device", "cpu", "--eval-every", "0"]


def run(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def trained(tmp_path_factory, ds_vocab, ds_vocab_path):
    """A tiny Engram model trained 3 steps on the sample corpus, its table, a held-out file."""
    root = tmp_path_factory.mktemp("learn")
    docs = read_jsonl(SAMPLE / "train.jsonl")[:3]
    (root / "docs.jsonl").write_text("\n".join(json.dumps(d) for d in docs) + "\n")
    held = read_jsonl(SAMPLE / "heldout.jsonl")[0]
    (root / "held.jsonl").write_text(json.dumps({"text": held["text"][:600]}) + "\n")
    table = small_real_table(root / "t.zarr", ds_vocab)
    result = run("train", "--corpus", root / "docs.jsonl", "--table", table, "--vocab",
                 ds_vocab_path, "--out", root / "m", "--steps", 3, *TINY)  # fmt: skip
    assert result.exit_code == 0, result.output
    return root / "m", table, root / "held.jsonl"


@pytest.fixture
def table(tmp_path, trained):
    copy = tmp_path / "t.zarr"
    shutil.copytree(trained[1], copy)
    return copy


def all_rows(path) -> dict:
    from engramctl.table.sources.table import open_table

    with open_table(path) as t:
        return {k: t.gather(k, np.arange(t.layout.layer_rows(k))) for k in t.layout.layers}


def digests(model_dir) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in model_dir.iterdir()}


def fact_rows(path, model_dir) -> dict:
    from engramctl.model.checkpoint import load_checkpoint
    from engramctl.model.serve.opening import load_model_tokenizer
    from engramctl.table.edit import phrase_rows
    from engramctl.table.sources.table import open_table

    checkpoint = load_checkpoint(model_dir)
    ids = load_model_tokenizer(checkpoint, None).encode(FACT, add_special_tokens=False).ids
    with open_table(path) as t:
        return phrase_rows(t, np.asarray(ids), checkpoint.vocab)


def test_learn_trains_only_the_fact_rows_as_one_commit_revert_undoes(trained, table):
    model, _, held = trained
    before, files = all_rows(table), digests(model)
    result = run("edit", table, "--text", FACT, "--learn", "--model", model, "--steps", 4,
                 "--lr", "0.2", "--device", "cpu", "--benchmark", held, "--json")  # fmt: skip
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["commit"] and doc["steps"] == 4 and doc["stopped"] == "steps"
    assert len(doc["losses"]) == 4 and doc["after"]["loss"] == doc["losses"][-1]
    assert doc["after"]["loss"] < doc["before"]["loss"]  # the fact's loss drops
    assert doc["prompt_tokens"] == 1 and doc["prompt"] == "The"
    for state in (doc["before"], doc["after"]):  # greedy decoding agrees with the check
        assert state["continues"] == (state["greedy"] == FACT[len("The") :])
    bench = doc["benchmark"]
    assert bench["before"]["scored_tokens"] == bench["after"]["scored_tokens"] > 0
    assert bench["before"]["loss"] != bench["after"]["loss"]  # the held-out text shares rows
    after, allowed = all_rows(table), fact_rows(table, model)
    for layer in before:
        changed = np.flatnonzero(np.any(before[layer] != after[layer], axis=1))
        assert len(changed) == doc["rows"].get(str(layer), 0)
        assert set(changed) <= set(allowed[layer].tolist())  # every other row bit-identical
    assert sum(doc["rows"].values()) > 0
    assert digests(model) == files  # the model's files untouched
    history = json.loads(run("history", table, "--json").stdout)["commits"]
    assert [c["made_by"]["kind"] for c in history] == ["train", "edit"]  # training's, ours
    assert history[-1]["id"] == doc["commit"]
    made_by = history[-1]["made_by"]
    assert made_by["operation"] == "learn" and made_by["steps"] == 4
    assert made_by["losses"] == {"before": doc["before"]["loss"], "after": doc["after"]["loss"]}
    assert history[-1]["message"] == FACT
    listed = run("history", table)
    assert "learn (model" in listed.output and "4 steps" in listed.output
    assert run("revert", table, "--to", history[0]["id"]).exit_code == 0
    for layer, rows in all_rows(table).items():
        np.testing.assert_array_equal(rows, before[layer])


def test_learn_is_deterministic_library_and_cli_agree(trained, table, tmp_path):
    from engramctl.model.learn import learn_fact

    other = tmp_path / "other.zarr"
    shutil.copytree(table, other)
    a = learn_fact(table, FACT, model=trained[0], steps=2, lr=0.1, prompt="The assert")
    assert a.prompt_tokens == 2 and len(a.losses) == 2 and a.before.greedy
    text = run("edit", other, "--text", FACT, "--learn", "--model", trained[0], "--steps", 2,
               "--lr", "0.1", "--prompt", "The assert", "--device", "cpu")  # fmt: skip
    assert text.exit_code == 0, text.output
    assert "fact loss" in text.output and f"{a.after.loss:.3f}" in text.output
    for layer, rows in all_rows(table).items():  # the same rows, bit for bit
        np.testing.assert_array_equal(rows, all_rows(other)[layer])


def test_fact_refusals(trained):
    from engramctl.errors import EngramError, UsageError
    from engramctl.model.checkpoint import load_checkpoint
    from engramctl.model.learn import fact_ids
    from engramctl.model.serve.opening import load_model_tokenizer

    checkpoint = load_checkpoint(trained[0])
    tok, mv = load_model_tokenizer(checkpoint, None), checkpoint.model_vocab
    ids, n = fact_ids(FACT, None, tok, mv, 16)
    assert n == 1 and list(ids) == tok.encode(FACT, add_special_tokens=False).ids
    for text, prompt, needle in [
        ("", None, "at least 2"),  # no tokens: no rows to train
        ("The", None, "at least 2"),
        (FACT, "A class", "must be how --text starts"),
        (FACT, FACT, "must be how --text starts"),  # nothing left to continue
        (FACT + " of the module" * 5, None, "the model's window is 16"),
    ]:
        with pytest.raises(UsageError, match=needle):
            fact_ids(text, prompt, tok, mv, 16)
    with pytest.raises(EngramError, match="never predicts"):  # words the model never saw
        fact_ids("The zebra quagga", None, tok, mv, 16)


def _one_line_error(result, needle):
    assert result.exit_code != 0
    assert needle in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1, result.output


def test_bad_input_is_one_line_and_commits_nothing(trained, table, tmp_path, ds_vocab):
    from engramctl.table.sources.table import open_table

    model = trained[0]
    learn = ["edit", table, "--text", FACT, "--learn", "--device", "cpu"]
    _one_line_error(run(*learn), "--learn needs --model")
    _one_line_error(run(*learn, "--model", model, "--steps", 0), "--steps must be at least 1")
    _one_line_error(run(*learn, "--model", model, "--lr", "-1"), "--lr must be a positive")
    _one_line_error(run(*learn, "--model", model, "--reset"), "--learn goes alone")
    _one_line_error(run("edit", table, "--text", FACT, "--model", model, "--reset"), "--learn")
    odd = small_real_table(tmp_path / "odd.zarr", ds_vocab, primes=(199, 227))
    _one_line_error(
        run("edit", odd, "--text", FACT, "--learn", "--model", model), "does not match the model"
    )
    with open_table(table, mode="r+"):  # another writer holds the table
        _one_line_error(run(*learn, "--model", model), "is being written by")
    assert len(json.loads(run("history", table, "--json").stdout)["commits"]) == 1  # training's
    assert not json.loads(run("history", odd, "--json").stdout)["commits"]
