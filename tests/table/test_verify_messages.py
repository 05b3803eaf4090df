"""verify names what it found: a chunk that is a directory is not "missing", and a chunk that
grew is not "(truncated?)" (issue 24 §3)."""

from __future__ import annotations

import shutil
from pathlib import Path

from engramctl.table.core.codec import chunk_key
from engramctl.table.verify import verify_table

from .conftest import make


def problem_of(path: Path, where: str) -> str:
    report = verify_table(path, deep=True)
    assert not report.ok
    (found,) = [p for p in report.problems if where in p]
    return found


def test_a_chunk_that_is_a_directory_is_called_a_directory(tmp_path, small_layout):
    path = Path(make(tmp_path / "t.zarr", small_layout).path)
    chunk = path / chunk_key(15, 2)
    chunk.unlink()
    chunk.mkdir()
    (chunk / "stray").write_bytes(b"x")
    problem = problem_of(path, "chunk 2 of layer 15")
    assert "is a directory" in problem and "missing" not in problem, problem


def test_an_empty_directory_in_place_of_a_chunk_is_called_a_directory(tmp_path, small_layout):
    path = Path(make(tmp_path / "t.zarr", small_layout).path)
    chunk = path / chunk_key(1, 0)
    chunk.unlink()
    chunk.mkdir()
    problem = problem_of(path, "chunk 0 of layer 1")
    assert "is a directory" in problem and "missing" not in problem, problem


def test_a_missing_chunk_is_still_missing(tmp_path, small_layout):
    path = Path(make(tmp_path / "t.zarr", small_layout).path)
    shutil.move(path / chunk_key(15, 2), tmp_path / "elsewhere")
    assert "is missing" in problem_of(path, "chunk 2 of layer 15")


def test_a_grown_chunk_is_not_called_truncated(tmp_path, small_layout):
    path = Path(make(tmp_path / "t.zarr", small_layout).path)
    chunk = path / chunk_key(15, 2)
    size = chunk.stat().st_size
    with chunk.open("ab") as f:
        f.write(b"\0" * 10)
    problem = problem_of(path, "chunk 2 of layer 15")
    assert f"{size + 10} bytes" in problem and "truncated" not in problem, problem
    assert "grew" in problem or "longer" in problem, problem


def test_a_short_chunk_is_called_truncated(tmp_path, small_layout):
    path = Path(make(tmp_path / "t.zarr", small_layout).path)
    chunk = path / chunk_key(15, 2)
    data = chunk.read_bytes()
    chunk.write_bytes(data[:-10])
    problem = problem_of(path, "chunk 2 of layer 15")
    assert "truncated" in problem and "?" not in problem, problem
