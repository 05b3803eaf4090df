"""Output names longer than the file system takes (issue 24 §2: ``OSError 36`` surfaced as an
internal error): one line before any work, naming the limit; nothing left behind."""

from __future__ import annotations

import pytest

from engramctl._files import TEMPORARY_NAME_ROOM, check_name_length, name_max
from engramctl.errors import EngramError
from tests.conftest import SAMPLE
from tests.hostile.conftest import SMALL, assert_one_error, cli

LONG = "x" * 300


def commands(tmp_path, vocab_path, tokenizer, table, export, name):
    out = tmp_path / name
    return [
        ("init-table", out, "--vocab", vocab_path, *SMALL),
        ("init-table", out, "--vocab", vocab_path, *SMALL, "--lazy"),
        ("build-vocab", "--tokenizer", tokenizer, "--out", out),
        (
            "hash-stats",
            SAMPLE / "heldout.jsonl",
            "--vocab",
            vocab_path,
            "--tokenizer",
            tokenizer,
            "--ngram-vocab",
            "500,500",
            "--report",
            out,
        ),  # fmt: skip
        (
            "hash-stats",
            SAMPLE / "heldout.jsonl",
            "--vocab",
            vocab_path,
            "--tokenizer",
            tokenizer,
            "--ngram-vocab",
            "500,500",
            "--plot",
            out,
        ),  # fmt: skip
        ("train", "--corpus", SAMPLE / "heldout.jsonl", "--out", out, "--no-engram", "--steps", 1),
        ("export", table, out),
        ("export", table, out, "--format", "deepseek"),
        ("import", export, out, "--vocab", vocab_path, "--ngram-vocab", "500,500", "--heads", 2),
    ]


@pytest.mark.parametrize("name", [LONG, "y" * 250])  # 250: fits, its temporary name does not
def test_long_output_names_are_one_line(name, tmp_path, vocab_path, tiny_tokenizer_path,
                                        small_table, small_export):  # fmt: skip
    for args in commands(tmp_path, vocab_path, tiny_tokenizer_path, small_table, small_export,
                         name):  # fmt: skip
        line = assert_one_error(cli(*args), "choose a shorter name")
        assert "internal error" not in line, (args[0], line)
    assert list(tmp_path.iterdir()) == []


def test_a_name_that_fits_passes(tmp_path):
    fits = "z" * (name_max(tmp_path) - TEMPORARY_NAME_ROOM)
    check_name_length(tmp_path / fits)
    with pytest.raises(EngramError, match="shorter path"):
        check_name_length(tmp_path / LONG / "r.json")
