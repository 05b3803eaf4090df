"""An output that is the same file as an input (by inode, not by name) is refused, with or
without ``--overwrite``, and the input is left as it was (issue 24 §2)."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest

from tests.conftest import SAMPLE
from tests.hostile.conftest import assert_one_error, cli
from tests.hostile.test_checkpoint_config import checkpoint  # noqa: F401 (a fixture)

SAME = "is the input"


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "c.jsonl"
    shutil.copy(SAMPLE / "heldout.jsonl", path)
    return path


def unchanged(path, before: bytes) -> None:
    assert path.read_bytes() == before, f"{path} was changed"


@pytest.mark.parametrize("flag", ["--plot", "--report"])
@pytest.mark.parametrize("overwrite", [False, True])
def test_hash_stats_output_naming_its_corpus(flag, overwrite, corpus, vocab_path,
                                             tiny_tokenizer_path):  # fmt: skip
    before = corpus.read_bytes()
    args = ["hash-stats", corpus, "--vocab", vocab_path, "--tokenizer", tiny_tokenizer_path,
            "--ngram-vocab", "500,500", flag, corpus]  # fmt: skip
    assert_one_error(cli(*args, *(["--overwrite"] if overwrite else [])), SAME, flag)
    unchanged(corpus, before)


def test_hash_stats_report_naming_a_hard_link_of_the_corpus(corpus, tmp_path, vocab_path,
                                                            tiny_tokenizer_path):  # fmt: skip
    link = tmp_path / "other-name.json"
    os.link(corpus, link)
    before = corpus.read_bytes()
    result = cli("hash-stats", corpus, "--vocab", vocab_path, "--tokenizer", tiny_tokenizer_path,
                 "--ngram-vocab", "500,500", "--report", link, "--overwrite")  # fmt: skip
    assert_one_error(result, SAME)
    unchanged(corpus, before)


def test_hash_stats_report_naming_the_vocab(corpus, tmp_path, vocab_path, tiny_tokenizer_path):
    vocab = tmp_path / "v.parquet"
    shutil.copy(vocab_path, vocab)
    before = vocab.read_bytes()
    result = cli("hash-stats", corpus, "--vocab", vocab, "--tokenizer", tiny_tokenizer_path,
                 "--ngram-vocab", "500,500", "--report", vocab, "--overwrite")  # fmt: skip
    assert_one_error(result, SAME)
    unchanged(vocab, before)


@pytest.mark.parametrize("flag", ["--plot", "--report"])
def test_cache_plan_output_naming_its_workload(flag, corpus, vocab_path, tiny_tokenizer_path):
    before = corpus.read_bytes()
    result = cli("cache-plan", corpus, "--vocab", vocab_path, "--tokenizer", tiny_tokenizer_path,
                 "--ngram-vocab", "500,500", flag, corpus, "--overwrite")  # fmt: skip
    assert_one_error(result, SAME)
    unchanged(corpus, before)


def test_eval_report_naming_its_benchmark(checkpoint, tmp_path):  # noqa: F811
    model, bench = checkpoint
    copy = tmp_path / "bench.jsonl"
    shutil.copy(bench, copy)
    before = copy.read_bytes()
    result = cli("eval", "--model", model, "--benchmark", copy, "--report", copy, "--overwrite")
    assert_one_error(result, SAME, "--report")
    unchanged(copy, before)


def test_hash_out_naming_its_ids_file(tmp_path, vocab_path):
    ids = tmp_path / "ids.npy"
    np.save(ids, np.array([11, 15], dtype=np.int64))
    before = ids.read_bytes()
    result = cli("hash", "--ids-file", ids, "--vocab", vocab_path, "--ngram-vocab", "500,500",
                 "--out", ids, "--overwrite")  # fmt: skip
    assert_one_error(result, SAME)
    unchanged(ids, before)


def test_build_vocab_out_naming_its_tokenizer(tmp_path, tiny_tokenizer_path):
    tokenizer = tmp_path / "tokenizer.json"
    shutil.copy(tiny_tokenizer_path, tokenizer)
    before = tokenizer.read_bytes()
    result = cli("build-vocab", "--tokenizer", tokenizer, "--out", tokenizer, "--overwrite")
    assert_one_error(result, SAME)
    unchanged(tokenizer, before)


@pytest.mark.parametrize("fmt", ["safetensors", "deepseek"])
def test_export_onto_its_own_table(fmt, tmp_path, small_table):
    table = tmp_path / "t.zarr"
    shutil.copytree(small_table, table)
    result = cli("export", table, table, "--format", fmt, "--overwrite")
    assert_one_error(result, SAME)
    assert cli("verify", table, "--deep").exit_code == 0


def test_train_out_naming_its_table(tmp_path, small_table, vocab_path, corpus):
    table = tmp_path / "t.zarr"
    shutil.copytree(small_table, table)
    result = cli("train", "--corpus", corpus, "--table", table, "--vocab", vocab_path,
                 "--out", table, "--overwrite", "--steps", "1")  # fmt: skip
    assert_one_error(result, SAME, "--out")
    assert cli("verify", table, "--deep").exit_code == 0
