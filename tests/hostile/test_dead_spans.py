"""Dead positions through the CLI (issue 24 §1): ``hash --dead-spans`` / ``--dead-ids``, negative
ids in ``--ids-file`` and in pre-tokenized corpora, and hostile span and rule values."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from engramctl import CanonicalVocab, EngramLayout, NgramHasher
from tests.hostile.conftest import HOSTILE, assert_clean, assert_one_error, cli

FLAGS = ["--preset", "demo-v1", "--heads", "2", "--layers", "1"]


def _hash_json(vocab_path, *args):
    result = cli("hash", "--vocab", vocab_path, *FLAGS, "--json", *args)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def _layout(vocab):
    return EngramLayout.from_preset(
        "demo-v1", vocab_size=vocab.canonical_vocab_size, heads=2, layers=(1,)
    )


def test_dead_spans_negative_ids_and_the_library_agree(vocab_path, tmp_path):
    vocab = CanonicalVocab.load(vocab_path)
    ids = np.random.default_rng(3).integers(0, vocab.source_vocab_size, size=(2, 18))
    plain, negative = tmp_path / "plain.npy", tmp_path / "negative.npy"
    np.save(plain, ids)
    marked = ids.copy()
    marked[:, 6:10] = -1
    marked[1, 7] = -9  # any negative id is dead
    np.save(negative, marked)
    by_span = _hash_json(vocab_path, "--ids-file", plain, "--dead-spans", "6:10")
    by_ids = _hash_json(vocab_path, "--ids-file", negative)
    dead = np.zeros(ids.shape, bool)
    dead[:, 6:10] = True
    expected = NgramHasher(_layout(vocab), vocab).hash_reference(ids, dead=dead)[1]
    for doc in (by_span, by_ids):
        assert doc["layers"]["1"] == expected.tolist()
        assert (np.array(doc["canonical_ids"])[:, 6:10] == -1).all()
    whole = _hash_json(vocab_path, "--ids-file", plain)
    assert whole["layers"]["1"] != by_span["layers"]["1"]


def test_dead_spans_on_text_and_in_the_printed_table(ds_vocab_path):
    flags = ["--vocab", ds_vocab_path, "--preset", "deepseek-v4.1", "--text", "one two three four"]
    doc = json.loads(cli("hash", *flags, "--json", "--dead-spans", "1:2").stdout)
    assert (
        doc["canonical_ids"][1] == -1
        and min(doc["canonical_ids"][:1] + doc["canonical_ids"][2:]) >= 0
    )
    shown = cli("hash", *flags, "--dead-spans", "1:2")
    assert shown.exit_code == 0, shown.output
    assert "(dead)" in shown.stdout


def _save(ids, tmp_path) -> str:
    path = tmp_path / "ids.npy"
    np.save(path, np.array(ids, dtype=np.int64))
    return str(path)


@pytest.mark.parametrize(
    "spans, fragment",
    [
        ("6", "START:STOP"),
        ("4:4", "START < STOP"),
        ("9:3", "START < STOP"),
        ("-2:3", "START:STOP"),
        ("a:b", "START:STOP"),
        ("0:99", "not inside the 5 positions"),
        ("1:2,", "START:STOP"),
    ],
)
def test_bad_dead_spans_are_one_line(spans, fragment, vocab_path, tmp_path):
    ids = _save([3, 4, 5, 6, 7], tmp_path)
    result = cli("hash", "--vocab", vocab_path, *FLAGS, "--ids-file", ids, "--dead-spans", spans)
    line = assert_one_error(result, "--dead-spans", fragment)
    assert result.exit_code == 2, line


@HOSTILE
@given(spans=st.text(alphabet="0123456789:,- x>=", max_size=12))
def test_any_dead_spans_text_is_handled_cleanly(spans, vocab_path, tmp_path):
    ids = _save([3, 4, 5, 6, 7, 8], tmp_path)
    for option in ("--dead-spans", "--dead-ids"):
        assert_clean(cli("hash", "--vocab", vocab_path, *FLAGS, "--ids-file", ids, option, spans))


def test_dead_ids_v41_vision_rule(ds_vocab_path, tmp_path):
    ids = tmp_path / "ids.npy"
    np.save(ids, np.array([5, 129264, 17, 1_000_000, 2_500_000, 9, 42], dtype=np.int64))
    flags = ["--vocab", ds_vocab_path, "--preset", "deepseek-v4.1", "--json", "--ids-file", ids]
    refused = cli("hash", *flags)
    assert_one_error(refused, "1000000", "vocab size")
    doc = json.loads(cli("hash", *flags, "--dead-ids", "v4.1-vision").stdout)
    same = json.loads(cli("hash", *flags, "--dead-ids", "129264,>=1000000").stdout)
    assert doc["layers"] == same["layers"]
    assert doc["canonical_ids"][1] == doc["canonical_ids"][3] == doc["canonical_ids"][4] == -1
    marked = tmp_path / "marked.npy"
    np.save(marked, np.array([5, -1, 17, -1, -1, 9, 42], dtype=np.int64))
    flags[-1] = marked
    assert json.loads(cli("hash", *flags).stdout)["layers"] == doc["layers"]
