"""Hostile ``config.json`` of a model checkpoint given to ``eval``: one clear line, never a crash
and never gigabytes allocated for sizes the weights do not have."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.hostile.conftest import HOSTILE, assert_clean, assert_one_error, cli

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny baseline checkpoint and a one-document benchmark."""
    from engramctl.model.checkpoint import save_checkpoint
    from engramctl.model.data import ModelVocab
    from engramctl.model.transformer import EngramLM, ModelConfig

    root = tmp_path_factory.mktemp("ckpt")
    raw = np.arange(0, 400, dtype=np.int64)
    vocab = ModelVocab(raw, raw[:50])
    config = ModelConfig(
        vocab_size=vocab.size, output_vocab_size=51, n_layer=2, n_head=2, n_embd=8, block_size=16
    )
    torch.manual_seed(0)
    save_checkpoint(root / "model", model=EngramLM(config), model_vocab=vocab, meta={}, history={})
    bench = root / "bench.jsonl"
    bench.write_text(json.dumps({"text": "def main():\n    return 1\n" * 3}) + "\n")
    return root / "model", bench


def eval_with(tmp_path, checkpoint, config_bytes: bytes):
    model, bench = checkpoint
    hostile = tmp_path / "model"
    shutil.rmtree(hostile, ignore_errors=True)
    shutil.copytree(model, hostile)
    (hostile / "config.json").write_bytes(config_bytes)
    result = cli("-q", "eval", "--model", hostile, "--benchmark", bench, "--json", "--batch", 2)
    return result, assert_clean(result)


def test_the_untouched_checkpoint_evaluates(tmp_path, checkpoint):
    result, _ = eval_with(tmp_path, checkpoint, (checkpoint[0] / "config.json").read_bytes())
    assert result.exit_code == 0 and "loss" in json.loads(result.stdout)["metrics"]


JSON_JUNK = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.floats() | st.text(max_size=4),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner),
    max_leaves=5,
)


@given(data=st.data())
@HOSTILE
def test_mutated_config_fails_cleanly(data, tmp_path, checkpoint):
    doc = json.loads((checkpoint[0] / "config.json").read_text())
    for _ in range(data.draw(st.integers(1, 3))):
        where = data.draw(st.sampled_from(["model", "top"]))
        target = doc["model"] if where == "model" and isinstance(doc.get("model"), dict) else doc
        key = data.draw(st.sampled_from(sorted(target) + ["layout", "tokenizer", "zzz"]))
        if data.draw(st.booleans()) and key in target:
            del target[key]
        else:
            target[key] = data.draw(
                JSON_JUNK | st.sampled_from([0, -1, 2**31, 2**62, 10**6, 3, "8", 8.0, True])
            )
    result, _ = eval_with(tmp_path, checkpoint, json.dumps(doc).encode())
    if result.exit_code == 0:  # only changes that leave the model as trained may pass
        assert json.loads(result.stdout)["metrics"]["loss"] == pytest.approx(
            baseline_loss(checkpoint)
        )


_LOSS: dict = {}


def baseline_loss(checkpoint) -> float:
    if "loss" not in _LOSS:
        result = cli("-q", "eval", "--model", checkpoint[0], "--benchmark", checkpoint[1], "--json")
        _LOSS["loss"] = json.loads(result.stdout)["metrics"]["loss"]
    return _LOSS["loss"]


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        ({"n_embd": "8"}, "n_embd"),
        ({"n_layer": 2.0}, "n_layer"),
        ({"engram_layers": "1"}, "engram_layers"),
        ({"vocab_size": None}, "vocab_size"),
        ({"n_embd": 2**20, "n_head": 1}, "does not match"),
        ({"vocab_size": 10**9}, "does not match"),
        ({"n_layer": 2**30}, "does not match"),
        ({"block_size": 4096}, "does not match"),
        ({"n_head": 0}, "damaged"),
        ({"bogus": 1}, "bogus"),
    ],
)
def test_named_config_damage(change, fragment, tmp_path, checkpoint):
    doc = json.loads((checkpoint[0] / "config.json").read_text())
    doc["model"].update(change)
    result, _ = eval_with(tmp_path, checkpoint, json.dumps(doc).encode())
    assert_one_error(result, fragment)


@pytest.mark.parametrize(
    "payload",
    [
        b"[" * 100_000 + b"]" * 100_000,
        b"\xff\xfe not utf-8",
        b"[1, 2]",
        b'{"format": "engramctl-model", "model": []}',
        b'{"format": "engramctl-model", "format_version": "1", "model": {}}',
    ],
)
def test_unreadable_or_wrong_shape_config(payload, tmp_path, checkpoint):
    result, _ = eval_with(tmp_path, checkpoint, payload)
    assert result.exit_code == 1


def test_config_that_is_a_directory(tmp_path, checkpoint):
    model, bench = checkpoint
    hostile = tmp_path / "model"
    shutil.copytree(model, hostile)
    (hostile / "config.json").unlink()
    (hostile / "config.json").mkdir()
    result = cli("-q", "eval", "--model", hostile, "--benchmark", bench)
    assert_one_error(result, "config.json")
