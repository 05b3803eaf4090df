"""Issue 14, lost work and races: overwrite builds beside and swaps, the writer lock is held
across check, delete and write, and two creators of one new path do not crash each other."""

from __future__ import annotations

import multiprocessing
import os
import shutil
import signal
from pathlib import Path

import numpy as np
import pytest

from engramctl.errors import EngramError
from engramctl.table.core.lock import WriterLock
from engramctl.table.core.manifest import read_group
from engramctl.table.sources.table import open_table
from engramctl.table.verify import verify_table

from .conftest import FP, make


def rows(path, layer_id=15):
    with open_table(path) as table:
        return table.gather(layer_id, np.arange(table.info.layers[layer_id].rows))


# ------------------------------------------------ item 7: --overwrite builds beside, then swaps
def test_interrupted_overwrite_keeps_the_old_table(tmp_path, small_layout, monkeypatch):
    import engramctl.table.build.create as create

    path = tmp_path / "t.zarr"
    make(path, small_layout, init="uniform", seed=3)
    before = rows(path)
    calls = {"n": 0}
    real = create.write_init_chunk

    def interrupted(*args, **kw):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return real(*args, **kw)

    monkeypatch.setattr(create, "write_init_chunk", interrupted)
    with pytest.raises(KeyboardInterrupt):
        make(path, small_layout, overwrite=True, init="zeros", workers=1)
    monkeypatch.setattr(create, "write_init_chunk", real)
    assert verify_table(path, deep=True).ok  # the old table, untouched
    np.testing.assert_array_equal(rows(path), before)
    result = make(path, small_layout, overwrite=True, init="zeros", workers=1)  # resumes beside
    assert result.resumed and result.chunks_skipped == 3
    assert not rows(path).any() and verify_table(path, deep=True).ok
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.zarr"]  # nothing left beside


def test_overwrite_lazy_and_full(tmp_path, small_layout):
    path = tmp_path / "t.zarr"
    make(path, small_layout, lazy=True, init="zeros")
    make(path, small_layout, overwrite=True, init="uniform")
    meta, _ = read_group(path)
    assert meta.status == "complete" and meta.init.kind == "uniform"
    make(path, small_layout, overwrite=True, lazy=True, init="zeros")
    assert not rows(path).any() and read_group(path)[0].status == "lazy"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.zarr"]


# --------------------------------------- item 8: the lock is held across check, delete, write
def test_overwrite_holds_the_lock_until_the_new_table_is_in_place(
    tmp_path, small_layout, monkeypatch
):
    """A writer that tries to slip in while the overwrite runs is refused at every moment."""
    import engramctl.table.build.create as create

    path = tmp_path / "t.zarr"
    make(path, small_layout, lazy=True)
    seen = []
    real = create.write_init_chunk

    def meddle(*args, **kw):
        try:
            WriterLock(path).acquire().release()
            seen.append("got in")
        except EngramError as exc:
            seen.append(str(exc))
        return real(*args, **kw) if args else None

    def meddle_rmtree(target, *args, **kw):  # deleting the old table is one of the moments
        meddle()
        return real_rmtree(target, *args, **kw)

    real_rmtree = shutil.rmtree
    monkeypatch.setattr(create, "write_init_chunk", meddle)
    monkeypatch.setattr(shutil, "rmtree", meddle_rmtree)
    make(path, small_layout, overwrite=True, workers=1)
    monkeypatch.undo()
    assert seen and all("is being written by pid" in s for s in seen), seen


def _create(args):
    path, layout_dict, lazy = args
    from engramctl import EngramLayout

    try:
        make(Path(path), EngramLayout.from_dict(layout_dict), lazy=lazy, workers=1)
        return "ok"
    except EngramError as exc:
        return str(exc)
    except Exception as exc:  # what the bug looked like: Directory not empty
        return f"CRASH {type(exc).__name__}: {exc}"


# ------------------------------------------------- item 9: two creators of one new path
@pytest.mark.parametrize("lazy", [True, False])
def test_simultaneous_creators(tmp_path, small_layout, lazy):
    path = str(tmp_path / "t.zarr")
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(4) as pool:
        results = pool.map(_create, [(path, small_layout.to_dict(), lazy)] * 4)
    assert "ok" in results and not any(r.startswith("CRASH") for r in results), results
    for r in results:
        assert r == "ok" or "is being written by pid" in r or "exists; pass --overwrite" in r, r
    assert verify_table(path, deep=True).ok
    assert sorted(os.listdir(tmp_path)) == ["t.zarr"]


def test_new_table_is_created_under_the_lock(tmp_path, small_layout, monkeypatch):
    import engramctl.table.build.create as create

    path = tmp_path / "t.zarr"
    seen = []
    real = create.write_init_chunk

    def meddle(*args, **kw):
        try:
            make(path, small_layout, lazy=True)
            seen.append("got in")
        except EngramError as exc:
            seen.append(str(exc))
        return real(*args, **kw)

    monkeypatch.setattr(create, "write_init_chunk", meddle)
    make(path, small_layout, workers=1)
    assert seen and all("is being written by pid" in s for s in seen), seen[:2]


def test_import_overwrite_holds_the_lock(tmp_path, small_layout, monkeypatch):
    """import --overwrite: no writer slips in between the lock check and the delete."""
    from engramctl.table.formats.safetensors import export_safetensors
    from engramctl.table.formats.safetensors_import import import_safetensors

    path = tmp_path / "t.zarr"
    make(path, small_layout, lazy=True, init="zeros")
    export_safetensors(path, tmp_path / "t.safetensors")
    seen = []
    real_rmtree = shutil.rmtree

    def meddle_rmtree(target, *args, **kw):
        try:
            WriterLock(path).acquire().release()
            seen.append("got in")
        except EngramError as exc:
            seen.append(str(exc))
        return real_rmtree(target, *args, **kw)

    monkeypatch.setattr(shutil, "rmtree", meddle_rmtree)
    import_safetensors(tmp_path / "t.safetensors", path, vocab_fingerprint=FP, overwrite=True)
    monkeypatch.undo()
    assert seen and all("is being written by pid" in s for s in seen), seen
    assert verify_table(path, deep=True).ok
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.safetensors", "t.zarr"]


# ------------------------------------------- item 11: readers racing a writer see no damage
def _stage_rows(writer, layer_id=15, chunk=2, value=5.0):
    """Rows written but not committed yet (``flush=False``)."""
    start = chunk * writer.meta.chunk_rows
    ids = np.arange(start, start + 10)
    writer.write_rows(layer_id, ids, np.full((10, 64), value, np.float32), flush=False)
    return ids


def test_a_reader_reads_the_snapshot_it_opened(tmp_path, small_layout):
    path = tmp_path / "t.zarr"
    make(path, small_layout)
    old = open_table(path).gather(15, np.arange(600, 610))
    writer = open_table(path, mode="r+")
    ids = _stage_rows(writer)
    np.testing.assert_array_equal(writer.gather(15, ids), np.full((10, 64), 5.0, np.float32))
    before = open_table(path)  # opened while the rows are staged: never sees them
    np.testing.assert_array_equal(before.gather(15, ids), old)
    writer.flush()  # the commit
    np.testing.assert_array_equal(before.gather(15, ids), old)  # still its snapshot, no wait
    after = open_table(path)
    np.testing.assert_array_equal(after.gather(15, ids), np.full((10, 64), 5.0, np.float32))
    writer.close()
    before.close()
    after.close()
    assert verify_table(path, deep=True).ok


def test_reader_and_verify_never_call_a_table_mid_write_damaged(tmp_path, small_layout):
    path = tmp_path / "t.zarr"
    make(path, small_layout)
    old = open_table(path).gather(15, np.arange(600, 610))
    writer = open_table(path, mode="r+")
    ids = _stage_rows(writer)
    np.testing.assert_array_equal(open_table(path).gather(15, ids), old)
    report = verify_table(path, deep=True)
    assert report.ok, report.problems
    writer.close()
    assert verify_table(path, deep=True).ok
    np.testing.assert_array_equal(open_table(path).gather(15, ids)[:, 0], np.full(10, 5.0))


def _write_then_die(path):
    """A writer killed with rows staged, after a segment of a commit it never made visible."""
    from engramctl.table.edits.log import segments_path
    from engramctl.table.edits.segment import write_segment

    writer = open_table(path, mode="r+")
    ids = _stage_rows(writer)
    segments_path(path).mkdir(parents=True, exist_ok=True)
    write_segment(segments_path(path) / "deadbeef0000-15.seg", 15, ids, np.zeros((10, 64), "f4"))
    os.kill(os.getpid(), signal.SIGKILL)  # no flush, no close: the kernel drops the writer lock


def test_a_killed_writer_leaves_the_table_as_it_was(tmp_path, small_layout):
    path = tmp_path / "t.zarr"
    make(path, small_layout)
    old = open_table(path).gather(15, [600])
    child = multiprocessing.get_context("fork").Process(target=_write_then_die, args=(path,))
    child.start()
    child.join()
    assert child.exitcode == -signal.SIGKILL
    np.testing.assert_array_equal(open_table(path).gather(15, [600]), old)
    assert verify_table(path, deep=True).ok
    with open_table(path, mode="r+") as table:  # writable again; the orphan segment is gone
        assert not list((path / "edits" / "segments").iterdir())
        table.write_rows(15, [600], np.ones((1, 64), np.float32))
    assert open_table(path).gather(15, [600])[0, 0] == 1.0
