"""Tables on disk: create (full, lazy, resumable), gather, write_rows, and every bad input."""

from __future__ import annotations

import errno
import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from engramctl.errors import EngramError
from engramctl.table.build.chunks import init_chunk, record_chunks
from engramctl.table.build.create import create_table
from engramctl.table.core.codec import chunk_key
from engramctl.table.core.dtypes import encode_rows
from engramctl.table.core.manifest import read_group
from engramctl.table.core.rowinit import InitRecipe, init_values
from engramctl.table.sources.table import open_table
from engramctl.table.verify import verify_table

from ..conftest import FP, make

DTYPES = ["float32", "float16", "bfloat16", "float8_e4m3fn"]


def chunk_files(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.glob("layer_*/c/*/0"))}


def all_rows(table, layer_id):
    return table.gather(layer_id, np.arange(table.info.layers[layer_id].rows))


# ----------------------------------------------------------------------- round trips
@pytest.mark.parametrize("compressor", ["none", "zstd"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_full_lazy_and_zarr_agree(tmp_path, small_layout, dtype, compressor):
    import zarr

    full = make(tmp_path / "full.zarr", small_layout, dtype=dtype, compressor=compressor)
    lazy = make(tmp_path / "lazy.zarr", small_layout, dtype=dtype, compressor=compressor, lazy=True)
    assert full.info.status == "complete" and lazy.info.status == "lazy"
    assert full.chunks_written == 7 + 8 and lazy.chunks_written == 0
    recipe = InitRecipe("normal", 0.02, 0)
    with open_table(full.path) as a, open_table(lazy.path) as b:
        for layer_id in small_layout.layers:
            rows = all_rows(a, layer_id)
            np.testing.assert_array_equal(rows, all_rows(b, layer_id))
            expected = encode_rows(init_values(recipe, layer_id, np.arange(len(rows)), 64), dtype)
            np.testing.assert_array_equal(rows, expected)
            # zarr's own reader sees the same bytes: chunk names and codecs are what zarr expects
            np.testing.assert_array_equal(zarr.open_array(f"{full.path}/layer_{layer_id}")[:], rows)
    assert verify_table(full.path, deep=True).ok


def test_gather_hand_worked_and_shapes(tmp_path, small_layout):
    result = make(
        tmp_path / "t.zarr", small_layout, dtype="bfloat16", init="uniform", std=0.5, seed=9
    )
    table = open_table(result.path)
    ids = np.array([[0, 1999], [5, 5]])
    rows = table.gather(15, ids)
    assert rows.shape == (4, 64) and rows.dtype == np.uint16
    expected = encode_rows(
        init_values(InitRecipe("uniform", 0.5, 9), 15, ids.ravel(), 64), "bfloat16"
    )
    np.testing.assert_array_equal(rows, expected)
    out = np.empty((4, 64), np.uint16)
    assert table.gather(15, ids, out=out) is out
    assert table.gather(1, np.array([], np.int64)).shape == (0, 64)
    with pytest.raises(EngramError, match="out must be"):
        table.gather(15, ids, out=np.empty((4, 64), np.float32))
    assert table.layout == small_layout and table.dim == 64 and table.layers == (1, 15)
    info = table.info
    assert info.head_offsets[1] == small_layout.head_offsets(1).tolist()
    assert info.vocab_fingerprint == FP and info.format_version == 1


def test_workers_chunk_rows_and_order_do_not_change_values(tmp_path, small_layout):
    one = make(tmp_path / "one.zarr", small_layout, workers=1)
    three = make(tmp_path / "three.zarr", small_layout, workers=3)
    assert chunk_files(Path(one.path)) == chunk_files(Path(three.path))
    other = make(tmp_path / "other.zarr", small_layout, chunk_rows=128)
    # chunks written one by one, in reverse order, by the standalone function
    lazy = make(tmp_path / "scattered.zarr", small_layout, lazy=True)
    records = [
        init_chunk(lazy.path, layer_id, c)
        for layer_id in (15, 1)
        for c in reversed(range(7 if layer_id == 1 else 8))
    ]
    record_chunks(lazy.path, records, status="complete")
    assert chunk_files(Path(lazy.path)) == chunk_files(Path(one.path))
    assert verify_table(lazy.path, deep=True).ok
    with open_table(one.path) as a, open_table(other.path) as b:
        np.testing.assert_array_equal(all_rows(a, 1), all_rows(b, 1))


def test_write_rows_round_trip(tmp_path, small_layout):
    result = make(tmp_path / "t.zarr", small_layout, dtype="float8_e4m3fn", lazy=True)
    rng = np.random.default_rng(0)
    ids = np.array([3, 1500, 3, 299])  # 3 twice: the last one wins
    values = rng.standard_normal((4, 64)).astype(np.float32)
    with open_table(result.path, mode="r+") as table:
        before = table.gather(1, np.arange(2000))
        table.write_rows(1, ids, values)
        raw = table.gather(1, [7])
        table.write_rows(1, [8], raw)  # stored rows as gather returns them
    assert not any(read_group(Path(result.path))[1].values())  # the base is untouched
    with open_table(result.path) as table:
        after = table.gather(1, np.arange(2000))
        assert [c.rows for c in table.commits] == [3, 1]  # one commit per call, ids deduped
    expected = before.copy()
    expected[ids[1:]] = encode_rows(values[1:], "float8_e4m3fn")
    expected[8] = before[7]
    np.testing.assert_array_equal(after, expected)
    report = verify_table(result.path, deep=True)
    assert report.ok and report.chunks_written == 0
    with open_table(result.path) as table, pytest.raises(EngramError, match="read-only"):
        table.write_rows(1, [0], values[:1])
    with open_table(result.path, mode="r+") as table:
        with pytest.raises(EngramError, match="values must be"):
            table.write_rows(1, [0], np.zeros((1, 63), np.float32))
        with pytest.raises(EngramError, match="row id 2056"):
            table.write_rows(1, [2056], values[:1])


def test_lazy_deepseek_table_is_small(tmp_path, ds_layout):
    result = create_table(
        tmp_path / "ds.zarr",
        layout=ds_layout,
        vocab_fingerprint=FP,
        dim=256,
        dtype="float8_e4m3fn",
        lazy=True,
    )
    size = sum(p.stat().st_size for p in Path(result.path).rglob("*") if p.is_file())
    assert size < 100_000
    info = result.info
    assert info.layers[1].rows == ds_layout.layer_rows(1) > 380_000_000
    assert info.logical_bytes > 180 * 2**30 and info.disk_bytes == 0
    table = open_table(result.path)
    last = ds_layout.layer_rows(14) - 1
    rows = table.gather(14, [0, last])
    assert rows.shape == (2, 264)
    expected = encode_rows(init_values(InitRecipe(), 14, np.array([0, last]), 256), "float8_e4m3fn")
    np.testing.assert_array_equal(rows, expected)


# ------------------------------------------------------------------------ bad inputs
def test_not_a_table(tmp_path, small_layout):
    with pytest.raises(EngramError, match="does not exist"):
        open_table(tmp_path / "nope.zarr")
    (tmp_path / "file.zarr").write_text("hello")
    with pytest.raises(EngramError, match="not an engramctl table"):
        open_table(tmp_path / "file.zarr")
    (tmp_path / "empty.zarr").mkdir()
    with pytest.raises(EngramError, match="not an engramctl table"):
        open_table(tmp_path / "empty.zarr")
    import zarr

    zarr.open_group(str(tmp_path / "plain.zarr"), mode="w")
    with pytest.raises(EngramError, match="zarr group but not an engramctl table"):
        open_table(tmp_path / "plain.zarr")
    with pytest.raises(EngramError, match="not an engramctl table; refusing"):
        make(tmp_path / "plain.zarr", small_layout, overwrite=True)


def _edit_meta(path: Path, **changes):
    """Edit the metadata as an older engramctl (no checksums) would have left it; the checksum
    refusal itself is tested in test_table_integrity.py."""
    doc = json.loads((path / "zarr.json").read_text())
    doc["attributes"]["engramctl"].update(changes)
    doc["attributes"].pop("engramctl_checksum", None)
    (path / "zarr.json").write_text(json.dumps(doc))


def test_newer_format_and_damaged_metadata(tmp_path, small_layout):
    path = Path(make(tmp_path / "t.zarr", small_layout, lazy=True).path)
    _edit_meta(path, format_version=99)
    with pytest.raises(EngramError, match="format version 99, newer.*upgrade engramctl"):
        open_table(path)
    _edit_meta(path, format_version=1, dim="many")
    with pytest.raises(EngramError, match="damaged metadata"):
        open_table(path)
    _edit_meta(path, dim=64)
    layers = json.loads((path / "zarr.json").read_text())["attributes"]["engramctl"]["layers"]
    layers["1"]["rows"] = 5
    _edit_meta(path, layers=layers)
    report = verify_table(path)
    assert not report.ok and "differ from its layout" in report.problems[0]


def test_vocab_fingerprint_mismatch(tmp_path, small_layout):
    path = make(tmp_path / "t.zarr", small_layout, lazy=True).path
    other = SimpleNamespace(fingerprint="sha256:ffffffffffffffff")
    with pytest.raises(
        EngramError, match=f"made for vocab fingerprint {FP}, but .* has sha256:ffffffffffffffff"
    ):
        open_table(path, vocab=other)
    assert not verify_table(path, vocab=other).ok
    open_table(path, vocab=SimpleNamespace(fingerprint=FP)).check_vocab(
        SimpleNamespace(fingerprint=FP)
    )


def test_out_of_range_ids_and_unknown_layer(tmp_path, small_layout):
    table = open_table(make(tmp_path / "t.zarr", small_layout, lazy=True).path)
    rows = small_layout.layer_rows(1)
    with pytest.raises(EngramError, match=f"row id {rows} \\(position 1\\) is out of range"):
        table.gather(1, [0, rows, -4])
    with pytest.raises(EngramError, match="layer 3 is not in this table"):
        table.gather(3, [0])


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete"])
def test_damaged_chunk_is_found(tmp_path, small_layout, damage):
    path = Path(make(tmp_path / "t.zarr", small_layout, dtype="float16").path)
    victim = path / chunk_key(15, 2)
    data = bytearray(victim.read_bytes())
    if damage == "truncate":
        victim.write_bytes(data[:1000])
    elif damage == "flip":
        data[12345] ^= 0x10
        victim.write_bytes(bytes(data))
    else:
        victim.unlink()
    table = open_table(path)
    table.gather(15, [0, 599, 900])  # other chunks still read
    with pytest.raises(EngramError, match=r"chunk 2 of layer 15 .*(damaged|missing)"):
        table.gather(15, [0, 650])
    shallow, deep = verify_table(path), verify_table(path, deep=True)
    assert shallow.ok == (damage == "flip")
    assert not deep.ok and "chunk 2 of layer 15" in deep.problems[0]


def test_second_writer_is_refused(tmp_path, small_layout):
    path = make(tmp_path / "t.zarr", small_layout, lazy=True).path
    with open_table(path, mode="r+"):
        with pytest.raises(EngramError, match="being written by pid .*one writer at a time"):
            open_table(path, mode="r+")
        with pytest.raises(EngramError, match="being written"):
            make(path, small_layout, overwrite=True)
        open_table(path).gather(1, [0])  # readers are welcome
    with open_table(path, mode="r+"):  # released on close
        pass


def test_overwrite_rules(tmp_path, small_layout):
    path = tmp_path / "t.zarr"
    make(path, small_layout, lazy=True)
    with pytest.raises(EngramError, match="exists; pass --overwrite"):
        make(path, small_layout, lazy=True)
    with pytest.raises(EngramError, match="exists; pass --overwrite"):
        make(path, small_layout)  # a lazy table is not an unfinished init
    result = make(path, small_layout, overwrite=True, init="zeros")
    assert result.info.init["kind"] == "zeros" and result.info.status == "complete"
    with pytest.raises(EngramError, match="does not exist; create it first"):
        make(tmp_path / "missing" / "t.zarr", small_layout)


def test_free_space_is_checked_first(tmp_path, small_layout, monkeypatch):
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage._replace(free=1_000_000))
    with pytest.raises(EngramError, match="not enough disk space.*needs 1\\.1 MiB more"):
        make(tmp_path / "t.zarr", small_layout)
    assert not (tmp_path / "t.zarr").exists()
    make(tmp_path / "t.zarr", small_layout, lazy=True)  # lazy needs no space


def test_disk_full_then_resume(tmp_path, small_layout, monkeypatch):
    import engramctl.table.build.chunks as table_init

    reference = chunk_files(Path(make(tmp_path / "ref.zarr", small_layout).path))
    real_write = table_init.write_file_atomic
    calls = {"n": 0}

    def failing_write(path, data, **kw):
        calls["n"] += 1
        if calls["n"] > 5:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(path, data, **kw)

    monkeypatch.setattr(table_init, "write_file_atomic", failing_write)
    path = tmp_path / "t.zarr"
    with pytest.raises(EngramError, match="disk full.*rerun the same command to resume"):
        make(path, small_layout, workers=1)
    meta, manifest = read_group(path)
    assert meta.status == "initializing"
    assert sum(len(m) for m in manifest.values()) == 5  # every finished chunk is recorded
    assert not list(path.rglob("*.tmp-*"))  # no half-written chunk left
    report = verify_table(path, deep=True)  # unfinished: exit 1, naming the resume
    assert not report.ok and any("unfinished init" in p for p in report.problems), report
    with pytest.raises(EngramError, match="rerun the same `engramctl init-table`"):
        open_table(path)  # no reader takes an unfinished table for data
    monkeypatch.setattr(table_init, "write_file_atomic", real_write)
    # damage a finished chunk: the resume must rewrite it too
    (path / chunk_key(1, 0)).write_bytes(b"garbage")
    with pytest.raises(EngramError, match="other settings: dim 64 .* vs 32"):
        make(path, small_layout, dim=32)
    result = make(path, small_layout)
    assert result.resumed and result.chunks_written == 15 - 4 and result.chunks_skipped == 4
    assert chunk_files(path) == reference
    assert read_group(path)[0].status == "complete"
    assert verify_table(path, deep=True).ok


def test_interrupt_records_finished_chunks(tmp_path, small_layout, monkeypatch):
    import engramctl.table.build.create as table_init

    calls = {"n": 0}
    real = table_init.write_init_chunk

    def interrupted(*args, **kw):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return real(*args, **kw)

    monkeypatch.setattr(table_init, "write_init_chunk", interrupted)
    with pytest.raises(KeyboardInterrupt):
        make(tmp_path / "t.zarr", small_layout, workers=1)
    _, manifest = read_group(tmp_path / "t.zarr")
    assert sum(len(m) for m in manifest.values()) == 3


def test_zstd_cache_eviction_and_unchecked_reads(tmp_path, small_layout, monkeypatch):
    import engramctl.table.sources.chunked as chunked_module

    path = Path(make(tmp_path / "z.zarr", small_layout, compressor="zstd").path)
    reference = all_rows(open_table(make(tmp_path / "r.zarr", small_layout).path), 15)
    monkeypatch.setattr(chunked_module, "DECODED_CACHE_CHUNKS", 2)
    table = open_table(path)
    rng = np.random.default_rng(0)
    for _ in range(5):  # touch few chunks at a time so the cache keeps evicting
        ids = rng.integers(0, 2208, 3)
        np.testing.assert_array_equal(table.gather(15, ids), reference[ids])
        assert table.source.cached_chunks <= 3
    # check_chunks=False skips the checksum (sizes are still checked)
    victim = path / chunk_key(15, 0)
    data = bytearray(victim.read_bytes())
    data[-1] ^= 0xFF  # corrupt the zstd frame's last byte
    victim.write_bytes(bytes(data))
    with pytest.raises(EngramError, match="chunk 0 of layer 15"):
        open_table(path).gather(15, [0])
    try:
        open_table(path, check_chunks=False).gather(15, [0])
    except EngramError as exc:  # a broken frame may still fail to decompress: a clear error
        assert "chunk 0 of layer 15" in str(exc)
