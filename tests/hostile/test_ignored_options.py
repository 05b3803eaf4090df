"""Options accepted and then ignored (issue 24 §2): each is refused in one line naming it.

- ``train --min-count`` larger than any id's count: every target unknown, "loss 0.0000";
- ``train --init-from M --depth/--width/...`` disagreeing with M: M's shape was kept silently;
- ``generate`` / ``eval`` of a ``--no-engram`` model given ``--table``: the table was ignored;
- ``eval --lm-eval-tasks DIR`` with a relative ``--table``: the harness changes directory, and
  the table's chunks read as "missing although the manifest lists it; the table is damaged".
"""

from __future__ import annotations

import json
import os
import shutil

import pytest

from engramctl.model.serve.eval_run import EvalRequest
from tests.conftest import REPO, SAMPLE
from tests.hostile.conftest import SMALL, assert_clean_process, assert_one_error, cli, run_engramctl

pytest.importorskip("torch")

TRAIN = ["--steps", "2", "--depth", "1", "--width", "16", "--attn-heads", "2", "--seq-len", "16",
         "--batch", "2", "--eval-every", "0", "--device", "cpu"]  # fmt: skip


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus") / "c.jsonl"
    shutil.copy(SAMPLE / "heldout.jsonl", path)
    return path


@pytest.fixture(scope="module")
def baseline(tmp_path_factory, corpus, tiny_tokenizer_path):
    out = tmp_path_factory.mktemp("base") / "m"
    result = cli("-q", "train", "--corpus", corpus, "--out", out, "--no-engram",
                 "--tokenizer", tiny_tokenizer_path, *TRAIN)  # fmt: skip
    assert result.exit_code == 0, result.output
    return out


def test_min_count_larger_than_every_count(tmp_path, corpus, tiny_tokenizer_path):
    out = tmp_path / "m"
    result = cli("train", "--corpus", corpus, "--out", out, "--no-engram", "--tokenizer",
                 tiny_tokenizer_path, *TRAIN, "--min-count", "100000000")  # fmt: skip
    line = assert_one_error(result, "--min-count 100000000", "0 of")
    assert "most frequent" in line, line
    assert not out.exists()


@pytest.mark.parametrize(
    ("flags", "named"),
    [(("--depth", "3"), "--depth 3"), (("--width", "48"), "--width 48"),
     (("--attn-heads", "4"), "--attn-heads 4"), (("--min-count", "2"), "--min-count 2"),
     (("--seq-len", "64"), "--seq-len 64")],
)  # fmt: skip
def test_init_from_with_disagreeing_shape(flags, named, tmp_path, baseline, corpus,
                                          tiny_tokenizer_path):  # fmt: skip
    train = ["--steps", "2", "--seq-len", "16", "--batch", "2", "--eval-every", "0", "--device",
             "cpu"]  # fmt: skip
    result = cli("train", "--corpus", corpus, "--out", tmp_path / "m2", "--no-engram",
                 "--tokenizer", tiny_tokenizer_path, "--init-from", baseline, *train,
                 *flags)  # fmt: skip
    assert_one_error(result, named, "--init-from")
    assert not (tmp_path / "m2").exists()


def test_init_from_with_agreeing_shape_trains(tmp_path, baseline, corpus, tiny_tokenizer_path):
    result = cli("-q", "train", "--corpus", corpus, "--out", tmp_path / "m2", "--no-engram",
                 "--tokenizer", tiny_tokenizer_path, "--init-from", baseline, *TRAIN)  # fmt: skip
    assert result.exit_code == 0, result.output


def test_generate_and_eval_of_a_baseline_refuse_a_table(baseline, small_table, corpus):
    result = cli("generate", "--model", baseline, "--table", small_table, "--prompt", "the",
                 "--max-tokens", "2", "--device", "cpu")  # fmt: skip
    assert_one_error(result, "--no-engram", "--table")
    result = cli("eval", "--model", baseline, "--table", small_table, "--benchmark", corpus,
                 "--device", "cpu")  # fmt: skip
    assert_one_error(result, "--no-engram", "--table")


def test_eval_request_paths_are_absolute_before_anything_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in ("m", "b.jsonl", "t.zarr"):
        (tmp_path / name).touch()
    request = EvalRequest(model="m", benchmark="b.jsonl", table="t.zarr", device="cpu", batch=2,
                          cache_rows=64, resident=False, explain=None, lm_eval_tasks=None,
                          limit=None, tokenizer=None, report="r.json", overwrite=False,
                          strict_table=False).resolved()  # fmt: skip
    for path in (request.model, request.benchmark, request.table, request.report):
        assert os.path.isabs(path) and str(path).startswith(str(tmp_path)), path


@pytest.mark.slow
def test_lm_eval_tasks_with_a_relative_table(tmp_path, monkeypatch, corpus, vocab_path,
                                             tiny_tokenizer_path):  # fmt: skip
    pytest.importorskip("lm_eval")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    assert cli("-q", "init-table", "t.zarr", "--vocab", vocab_path, *SMALL).exit_code == 0
    result = cli("-q", "train", "--corpus", corpus, "--table", "t.zarr", "--vocab", vocab_path,
                 "--out", "m", "--tokenizer", tiny_tokenizer_path, *TRAIN,
                 "--depth", "16")  # fmt: skip
    assert result.exit_code == 0, result.output
    result = cli("eval", "--model", "m", "--table", "t.zarr", "--lm-eval-tasks",
                 REPO / "sample_data" / "bench", "--limit", "2", "--json", "--device", "cpu",
                 "--tokenizer", tiny_tokenizer_path)  # fmt: skip
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["paging"]["cache_misses"] > 0


@pytest.mark.slow
def test_lm_eval_task_that_needs_a_download_offline(baseline, tmp_path):
    """``hellaswag`` where the Hub cannot be reached: one line saying so and what to do."""
    pytest.importorskip("lm_eval")
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1",
           "HF_HOME": str(tmp_path / "hf")}  # fmt: skip
    proc = run_engramctl("eval", "--model", baseline, "--lm-eval-tasks", "hellaswag", "--limit",
                         "2", "--device", "cpu", env=env, timeout=600)  # fmt: skip
    line = assert_clean_process(proc)
    assert proc.returncode == 1 and "downloaded" in line and "sample_data/bench" in line, line
