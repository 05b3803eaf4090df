"""Read-only and full destination filesystems (real tmpfs mounts; skipped where ``mount`` is not
allowed): every writer ends in one ``error:`` line and leaves no half-written output."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from tests.conftest import SAMPLE
from tests.hostile.conftest import SMALL, assert_one_error, cli


def _mount(target, *options) -> bool:
    target.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", ",".join(options), "tmpfs", str(target)],
        capture_output=True,
    )
    return proc.returncode == 0


def _umount(target) -> None:
    subprocess.run(["umount", "-l", str(target)], capture_output=True)


@pytest.fixture(params=["8m"])
def tiny_fs(tmp_path, request):
    """A small writable tmpfs (``request.param`` bytes; ``remount_ro`` turns it read-only)."""
    root = tmp_path / "mnt"
    if shutil.which("mount") is None or not _mount(root, f"size={request.param}"):
        pytest.skip("cannot mount a tmpfs here (needs root)")

    try:
        yield root
    finally:
        _umount(root)


def remount_ro(root) -> None:
    subprocess.run(["mount", "-o", "remount,ro", str(root)], check=True)


def test_read_only_destinations(tiny_fs, tmp_path, vocab_path, small_table, tiny_tokenizer_path):
    (tiny_fs / "old.zarr").mkdir()
    shutil.copytree(small_table, tiny_fs / "t.zarr", dirs_exist_ok=True)
    remount_ro(tiny_fs)
    corpus = SAMPLE / "heldout.jsonl"
    cases = [
        ("init-table", tiny_fs / "new.zarr", "--vocab", vocab_path, *SMALL),
        ("init-table", tiny_fs / "new.zarr", "--vocab", vocab_path, *SMALL, "--lazy"),
        ("init-table", tiny_fs / "t.zarr", "--vocab", vocab_path, *SMALL, "--overwrite"),
        ("init-table", tiny_fs / "t.zarr", "--vocab", vocab_path, *SMALL),
        ("export", small_table, tiny_fs / "t.safetensors"),
        ("build-vocab", "--tokenizer", tiny_tokenizer_path, "--out", tiny_fs / "v.parquet"),
        (
            "hash-stats",
            corpus,
            "--vocab",
            vocab_path,
            "--tokenizer",
            tiny_tokenizer_path,
            "--ngram-vocab",
            "500,500",
            "--report",
            tiny_fs / "r.json",
        ),
    ]
    for args in cases:
        result = cli("-q", *args)
        line = assert_one_error(result)
        assert "read-only" in line.lower() or "exists" in line or "complete" in line, line
    assert sorted(p.name for p in tiny_fs.iterdir()) == ["old.zarr", "t.zarr"]


@pytest.mark.parametrize("tiny_fs", ["256k"], indirect=True)
def test_full_filesystem(tiny_fs, vocab_path, small_table, small_export):
    cases = [
        ("init-table", tiny_fs / "big.zarr", "--vocab", vocab_path, *SMALL),
        ("export", small_table, tiny_fs / "t.safetensors"),
        (
            "import",
            small_export,
            tiny_fs / "u.zarr",
            "--vocab",
            vocab_path,
            "--ngram-vocab",
            "500,500",
            "--heads",
            "2",
        ),
    ]
    for args in cases:
        line = assert_one_error(cli("-q", *args))
        assert "space" in line or "No space" in line, line
    leftovers = [p.name for p in tiny_fs.iterdir() if not p.name.endswith(".zarr")]
    assert leftovers == []
