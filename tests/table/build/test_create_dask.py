"""init-table on Dask against a real LocalCluster: bit-identical tables, killed workers, resume."""

from __future__ import annotations

import json
import logging
import os
import socket
from pathlib import Path

import pytest
from typer.testing import CliRunner

pytest.importorskip("distributed")

from engramctl.cli import app  # noqa: E402
from engramctl.errors import EngramError  # noqa: E402
from engramctl.table.build.create import create_table  # noqa: E402
from engramctl.table.core.codec import chunk_key  # noqa: E402
from engramctl.table.core.lock import LOCK_NAME  # noqa: E402
from engramctl.table.core.manifest import read_group, write_group_attrs  # noqa: E402

SMALL = ["--ngram-vocab", "500,500", "--heads", "2", "--dim", "32", "--chunk-rows", "300"]
runner = CliRunner()


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def table_files(path: Path) -> dict[str, bytes]:
    """Every file of a table (but the lock) by relative path: equal dicts = identical tables."""
    return {
        p.relative_to(path).as_posix(): p.read_bytes()
        for p in sorted(path.rglob("*"))
        if p.is_file() and p.name != LOCK_NAME
    }


@pytest.fixture(scope="module")
def scheduler():
    """One LocalCluster of 2 single-threaded worker processes for the whole module."""
    import distributed

    with distributed.LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        dashboard_address=None,
        silence_logs=logging.ERROR,
    ) as cluster:
        yield cluster.scheduler_address


@pytest.fixture(scope="module")
def reference(tmp_path_factory, ds_vocab_path):
    """The same small table written by the single-process (thread pool) init."""
    path = tmp_path_factory.mktemp("ref") / "ref.zarr"
    result = run("init-table", path, "--vocab", ds_vocab_path, *SMALL, "--workers", "2", "--json")
    assert result.exit_code == 0, result.output
    return path


def test_dask_init_is_bit_identical(scheduler, reference, tmp_path, ds_vocab_path):
    path = tmp_path / "dask.zarr"
    result = run(
        "init-table", path, "--vocab", ds_vocab_path, *SMALL, "--scheduler", scheduler, "--json"
    )
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["status"] == "complete" and doc["chunks_skipped"] == 0
    assert doc["chunks_written_now"] == sum(v["chunks_total"] for v in doc["layers"].values())
    assert table_files(path) == table_files(reference)
    assert run("verify", path, "--deep").exit_code == 0


def test_killed_worker_is_retried_and_table_identical(scheduler, tmp_path, ds_vocab):
    """fp8 rows, many small chunks; a worker is killed after the first chunks come back."""
    import distributed

    kwargs = dict(
        layout=_small_layout(ds_vocab),
        vocab_fingerprint=ds_vocab.fingerprint,
        dim=64,
        dtype="float8_e4m3fn",
        chunk_rows=128,
    )
    single = create_table(tmp_path / "single.zarr", workers=2, **kwargs)
    with distributed.Client(scheduler, set_as_default=False) as client:
        pids = client.run(os.getpid)
    killed = []

    def kill_one(progress):
        if progress.chunks_done >= 3 and not killed:
            killed.append(progress.chunks_done)
            os.kill(next(iter(pids.values())), 9)

    result = create_table(tmp_path / "dask.zarr", scheduler=scheduler, progress=kill_one, **kwargs)
    assert killed and killed[0] < result.chunks_written  # killed mid-run
    assert result.chunks_written == single.chunks_written
    assert table_files(tmp_path / "dask.zarr") == table_files(tmp_path / "single.zarr")


def _small_layout(vocab):
    from engramctl import EngramLayout

    return EngramLayout.from_preset(
        "demo-v1", vocab_size=vocab.canonical_vocab_size, ngram_vocab=[3000, 3000], heads=2
    )


def test_resume_rewrites_only_missing_and_damaged_chunks(
    scheduler, reference, tmp_path, ds_vocab_path
):
    import shutil

    path = tmp_path / "resume.zarr"
    shutil.copytree(reference, path)
    meta, manifest = read_group(path)
    (path / chunk_key(1, 2)).unlink()  # written but never recorded (interrupted)
    del manifest[1][2]
    del manifest[15][0]  # recorded chunk whose file is gone
    (path / chunk_key(15, 0)).unlink()
    damaged = path / chunk_key(15, 3)
    data = bytearray(damaged.read_bytes())
    data[7] ^= 0xFF
    damaged.write_bytes(bytes(data))
    write_group_attrs(path, meta.with_status("initializing"), manifest)
    result = run(
        "init-table", path, "--vocab", ds_vocab_path, *SMALL, "--scheduler", scheduler, "--json"
    )
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["resumed"] and doc["chunks_written_now"] == 3 and doc["status"] == "complete"
    assert table_files(path) == table_files(reference)


def test_unreachable_scheduler_is_a_clear_error(tmp_path, ds_vocab_path):
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    path = tmp_path / "never.zarr"
    result = run(
        "init-table", path, "--vocab", ds_vocab_path, *SMALL, "--scheduler", f"127.0.0.1:{port}"
    )
    assert result.exit_code == 1
    assert "cannot reach the dask scheduler at tcp://127.0.0.1" in result.stderr
    assert "Traceback" not in result.output and not path.exists()


def test_version_mismatch_is_refused_before_writing(
    scheduler, tmp_path, ds_vocab_path, monkeypatch
):
    import engramctl

    monkeypatch.setattr(engramctl, "__version__", "9.9.9")
    path = tmp_path / "never.zarr"
    result = run("init-table", path, "--vocab", ds_vocab_path, *SMALL, "--scheduler", scheduler)
    assert result.exit_code == 1
    assert "runs engramctl 0.1.0 but this client runs 9.9.9" in result.stderr
    assert not path.exists()


def test_library_needs_a_scheduler_or_client(tmp_path):
    from engramctl.table.build.create_dask import initialize_table_dask
    from engramctl.table.core.store import open_store

    with pytest.raises(EngramError, match="needs a scheduler or a client"):
        initialize_table_dask(open_store(tmp_path / "t.zarr"))


def test_worker_memory_too_small_is_refused(scheduler, tmp_path, ds_vocab_path, monkeypatch):
    from engramctl.table.build import create_dask as table_dask

    monkeypatch.setattr(table_dask, "init_task_memory", lambda meta: 2**60)
    path = tmp_path / "big.zarr"
    result = run("init-table", path, "--vocab", ds_vocab_path, *SMALL, "--scheduler", scheduler)
    assert result.exit_code == 1 and "init-table needs about" in result.stderr
    assert "smaller --chunk-rows" in result.stderr
    assert not path.exists()
