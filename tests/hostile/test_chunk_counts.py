"""Chunk counts no file system serves well (issue 24 §2: ``init-table --chunk-rows 1`` wrote one
file per row, a 4 MB table unfinished after 4 minutes): refused in one line naming the limit
and a ``--chunk-rows`` that works; the suggestion is accepted."""

from __future__ import annotations

import re

import pytest

from engramctl.errors import UsageError
from engramctl.table.build.create import MAX_CHUNKS, check_chunk_count
from tests.hostile.conftest import assert_one_error, cli

LAYOUT = ["--ngram-vocab", "500,500", "--heads", "2", "--dim", "32"]


@pytest.mark.parametrize("lazy", [False, True])
def test_init_table_chunk_rows_1(tmp_path, vocab_path, lazy):
    out = tmp_path / "t.zarr"
    args = ["init-table", out, "--vocab", vocab_path, *LAYOUT, "--chunk-rows", "1"]
    line = assert_one_error(cli(*args, *(["--lazy"] if lazy else [])), "--chunk-rows 1", "1,024")
    assert not out.exists()
    better = re.search(r"use --chunk-rows (\d+)", line).group(1)
    args[-1] = better
    result = cli("-q", *args, *(["--lazy"] if lazy else []))
    assert result.exit_code == 0, result.output


def test_import_chunk_rows_1(tmp_path, vocab_path, small_export):
    out = tmp_path / "u.zarr"
    result = cli("import", small_export, out, "--vocab", vocab_path, "--ngram-vocab", "500,500",
                 "--heads", "2", "--chunk-rows", "1")  # fmt: skip
    assert_one_error(result, "--chunk-rows 1")
    assert not out.exists()


def test_small_tables_keep_small_chunks():
    check_chunk_count(7, 306, 96)  # 44 chunks: a few files, whatever their size
    check_chunk_count(1, 1024, 4)


def test_too_many_chunks_of_any_size():
    with pytest.raises(UsageError, match="chunks per layer"):
        check_chunk_count(1, MAX_CHUNKS + 1, 2**20)
