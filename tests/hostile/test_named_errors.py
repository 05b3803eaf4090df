"""The single inputs of issue 14's "internal errors that must become one clear line", each
reproduced through the CLI."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from engramctl.table.core.codec import chunk_key
from tests.hostile.conftest import SMALL, assert_one_error, cli, reseal


def test_vocab_with_a_non_integer_format_version(tmp_path, vocab_path):
    table = pq.read_table(vocab_path)
    meta = dict(table.schema.metadata)
    key = next(k for k in meta if b"engramctl" in k)
    doc = json.loads(meta[key])
    for version in ("1", 1.5, None, [1], True):
        doc["format_version"] = version
        meta[key] = json.dumps(doc).encode()
        bad = tmp_path / "v.parquet"
        pq.write_table(table.replace_schema_metadata(meta), bad)
        result = cli("layout", "--vocab", bad, "--ngram-vocab", "500,500")
        assert_one_error(result, "format_version")


@pytest.mark.parametrize("damage", ["directory", "unreadable"])
def test_export_blames_the_damaged_chunk_not_its_output(damage, tmp_path, small_table):
    table = tmp_path / "t.zarr"
    shutil.copytree(small_table, table)
    chunk = table / chunk_key(1, 0)
    chunk.unlink()
    if damage == "directory":
        chunk.mkdir()
    else:
        chunk.symlink_to(chunk)  # a symlink loop: ELOOP on open, even for root
    out = tmp_path / "out.safetensors"
    line = assert_one_error(cli("-q", "export", table, out), "cannot read chunk 0 of layer 1")
    assert "cannot write" not in line and not out.exists()


def test_null_token_id_in_a_parquet_token_list(tmp_path, vocab_path):
    corpus = tmp_path / "c.parquet"
    pq.write_table(
        pa.table({"ids": pa.array([[3, 4, 5], [6, None, 7]], pa.list_(pa.int64()))}), corpus
    )
    result = cli(
        "hash-stats",
        corpus,
        "--vocab",
        vocab_path,
        "--tokens-field",
        "ids",
        "--ngram-vocab",
        "500,500",
    )
    line = assert_one_error(result, "row 1", "null")
    assert "-9223372036854775808" not in line


def test_chunk_rows_larger_than_the_table(tmp_path, vocab_path):
    result = cli(
        "init-table",
        tmp_path / "t.zarr",
        "--vocab",
        vocab_path,
        "--ngram-vocab",
        "500,500",
        "--heads",
        "2",
        "--chunk-rows",
        "100000000",
    )
    assert_one_error(result, "--chunk-rows", "largest layer")
    assert not (tmp_path / "t.zarr").exists()
    assert result.exit_code == 2


def test_small_table_still_builds(small_table):
    doc = json.loads(cli("info", small_table, "--json").stdout)
    assert doc["layers"]["1"]["chunk_rows"] == 300
    assert SMALL[-1] == "300"


def _train(tmp_path, *extra):
    return cli("-q", "train", "--out", tmp_path / "m", "--steps", 1, "--seq-len", 8, *extra)


def test_train_does_not_suggest_a_flag_it_lacks(tmp_path):
    corpus = tmp_path / "c.jsonl"
    corpus.write_text(json.dumps({"body": "hello world " * 50}) + "\n")
    line = assert_one_error(_train(tmp_path, "--corpus", corpus, "--no-engram"), "'text'")
    assert "--text-field" not in line


def test_train_refuses_a_negative_min_count(tmp_path):
    corpus = tmp_path / "c.jsonl"
    corpus.write_text(json.dumps({"text": "hello world " * 50}) + "\n")
    result = _train(tmp_path, "--corpus", corpus, "--no-engram", "--min-count", -3)
    assert_one_error(result, "--min-count")
    assert result.exit_code == 2


def test_train_reports_the_vocab_mismatch_before_reading_the_corpus(
    tmp_path, small_table, ds_vocab_path
):
    corpus = tmp_path / "c.jsonl"
    corpus.write_text(json.dumps({"text": "too short"}) + "\n")
    result = _train(tmp_path, "--corpus", corpus, "--table", small_table, "--vocab", ds_vocab_path)
    line = assert_one_error(result, "fingerprint")
    assert "too few" not in line


def test_rerun_after_completion_says_already_complete(tmp_path, small_table, vocab_path):
    table = tmp_path / "t.zarr"
    shutil.copytree(small_table, table)
    result = cli("init-table", table, "--vocab", vocab_path, *SMALL)
    assert result.exit_code == 0 and "already complete" in result.stdout, result.output


def test_stale_temporary_chunk_files_are_cleaned_by_resume(tmp_path, small_table, vocab_path):
    table = tmp_path / "t.zarr"
    shutil.copytree(small_table, table)
    dead = 2**22 + 12345  # above the default pid_max: no such process
    stale = table / "layer_1" / "c" / "0" / f".0.tmp-{dead}"
    stale.write_bytes(b"half a chunk")
    doc = json.loads((table / "zarr.json").read_text())
    doc["attributes"]["engramctl"]["status"] = "initializing"  # as a kill mid-init leaves it
    reseal(doc["attributes"])
    (table / "zarr.json").write_text(json.dumps(doc))
    result = cli("-q", "init-table", table, "--vocab", vocab_path, *SMALL)
    assert result.exit_code == 0, result.output
    assert not stale.exists()
    sibling = tmp_path / ".new.zarr.creating"  # a kill while the group was created
    (sibling / "layer_1").mkdir(parents=True)
    result = cli("-q", "init-table", tmp_path / "new.zarr", "--vocab", vocab_path, *SMALL, "--lazy")
    assert result.exit_code == 0 and not sibling.exists(), result.output
    assert cli("verify", table, "--deep", "--json").exit_code == 0


def test_hash_ids_file_shows_the_tokens(tmp_path, vocab_path, tiny_vocab):
    ids = tmp_path / "ids.npy"
    np.save(ids, np.array([11, 15], dtype=np.int64))  # "Ġthe", "Ġcat"
    result = cli("hash", "--ids-file", ids, "--vocab", vocab_path, "--ngram-vocab", "500,500")
    assert result.exit_code == 0, result.output
    assert "␣the" in result.stdout and "␣cat" in result.stdout, result.stdout
