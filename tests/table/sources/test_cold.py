"""The cold path: run planning, the parallel reader, CRC-32C, block checksums and damage.

The rows themselves are held to the expected rows by ``ColdTests`` in test_row_sources.py; here:
the pieces against their plain references, and what a damaged or changed table does.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from engramctl.errors import EngramError, UsageError
from engramctl.table.core.blocksums import (
    BlockSums,
    add_block_checksums,
    block_crcs,
    blocks_key,
    crc32c_reference,
    crc32c_spans,
    parse_block_size,
)
from engramctl.table.core.store import open_store
from engramctl.table.sources import coldgather
from engramctl.table.sources._gather import copy_spans
from engramctl.table.sources.coldread import (
    ParallelReader,
    ShortRead,
    open_random,
    plan_runs,
    plan_runs_reference,
    resident,
)
from engramctl.table.sources.table import open_table

from ..conftest import make

google_crc32c = pytest.importorskip("google_crc32c")


# ------------------------------------------------------------------------- pieces
@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("gap", [0, 1024])
def test_plan_runs_equals_the_reference(seed, gap):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 400))
    files = rng.integers(0, 4, n)
    starts = rng.integers(0, 50, n) * 512
    stops = np.minimum(starts + rng.integers(1, 5, n) * 512, 50 * 512)
    run_file, run_start, run_stop, unit_run = plan_runs(files, starts, stops, 50 * 512, gap)
    want = plan_runs_reference(files.tolist(), starts.tolist(), stops.tolist(), gap)
    got = zip(run_file.tolist(), run_start.tolist(), run_stop.tolist(), strict=True)
    assert list(got) == want
    # every unit lies inside its run
    assert (run_file[unit_run] == files).all()
    assert (run_start[unit_run] <= starts).all() and (stops <= run_stop[unit_run]).all()


def test_touching_units_merge_but_not_across_files():
    files = np.array([0, 0, 1, 0])
    starts = np.array([0, 4096, 0, 16384])
    stops = np.array([4096, 8192, 4096, 20480])
    run_file, run_start, run_stop, _ = plan_runs(files, starts, stops, 1 << 20)
    assert run_file.tolist() == [0, 0, 1]
    assert run_start.tolist() == [0, 16384, 0] and run_stop.tolist() == [8192, 20480, 4096]


def test_crc32c_equals_the_reference_and_google_crc32c():
    rng = np.random.default_rng(3)
    data = rng.integers(0, 256, 70_001).astype(np.uint8)
    spans = [(0, 0), (0, 9), (3, 100), (5, 8), (1, 70_001), (8, 65_544)]
    got = crc32c_spans(data, [a for a, _ in spans], [b for _, b in spans])
    for (a, b), crc in zip(spans, got.tolist(), strict=True):
        assert crc == google_crc32c.value(data[a:b].tobytes())
    assert crc32c_reference(b"123456789") == 0xE3069283
    assert crc32c_reference(data[3:100]) == int(got[2])
    blocks = block_crcs(data, 4096)
    assert blocks.size == 18 and int(blocks[-1]) == google_crc32c.value(data[69632:].tobytes())
    with pytest.raises(EngramError, match="inside the buffer"):
        crc32c_spans(data, [0], [70_002])


def test_copy_spans_equals_a_python_loop():
    rng = np.random.default_rng(1)
    staging = rng.integers(0, 256, 10_000).astype(np.uint8)
    sources = rng.integers(0, 10_000 - 264, 50)
    positions = rng.permutation(60)[:50]
    out = np.zeros((60, 264), np.uint8)
    copy_spans(staging, sources, out, positions)
    want = np.zeros_like(out)
    for s, p in zip(sources, positions, strict=True):
        want[p] = staging[s : s + 264]
    np.testing.assert_array_equal(out, want)


def test_parallel_reader_reads_every_run_and_reports_a_short_read(tmp_path):
    path = tmp_path / "f.bin"
    data = np.random.default_rng(0).integers(0, 256, 1 << 20).astype(np.uint8)
    data.tofile(path)
    fd = open_random(path)
    try:
        reader = ParallelReader(threads=8)
        starts = list(range(0, 1 << 20, 8192))
        lengths = [4096] * len(starts)
        positions = [i * 4096 for i in range(len(starts))]
        staging = np.empty(len(starts) * 4096, np.uint8)
        reader.read([fd] * len(starts), starts, lengths, positions, staging)
        want = np.concatenate([data[s : s + 4096] for s in starts])
        np.testing.assert_array_equal(staging, want)
        with pytest.raises(ShortRead) as info:
            reader.read([fd, fd], [0, (1 << 20) - 100], [10, 4096], [0, 10], staging)
        assert info.value.index == 1 and info.value.got == 100
        reader.close()
    finally:
        os.close(fd)


def test_resident_sees_a_file_just_written(tmp_path):
    import mmap

    path = tmp_path / "f.bin"
    path.write_bytes(b"x" * 65536)
    with open(path, "rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as m:
        view = np.frombuffer(m, np.uint8)
        assert resident(view.ctypes.data, view.size) in (1.0, None)  # None: no mincore
        del view


def test_block_size_parsing():
    assert parse_block_size("4K") == 4096 and parse_block_size("64KiB") == 65536
    assert parse_block_size(1 << 20) == 1 << 20
    for bad in ("3K", "2M", "0", "x", "4097"):
        with pytest.raises(UsageError, match="not a multiple of 4 KiB between 4K and 1M"):
            parse_block_size(bad)


# --------------------------------------------------------------- damage and changes
@pytest.fixture
def cold(monkeypatch):
    """Every chunk measured cold: rows come through the parallel reader."""
    monkeypatch.setattr(coldgather, "resident", lambda address, length: False)


def fp8_table(path, layout, **kw):
    make(path, layout, dtype="float8_e4m3fn", dim=256, **kw)
    return path


def flip_byte(file, offset: int) -> None:
    """Change one byte in place (same size; the mtime is put back, as damage would leave it)."""
    st = os.stat(file)
    with open(file, "r+b") as handle:
        handle.seek(offset)
        byte = handle.read(1)
        handle.seek(offset)
        handle.write(bytes([byte[0] ^ 0xFF]))
    os.utime(file, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_a_damaged_block_is_named_and_the_other_blocks_still_serve(tmp_path, small_layout, cold):
    path = fp8_table(tmp_path / "t.zarr", small_layout)
    add_block_checksums(path)
    with open_table(path) as table:
        want = table.rows(1, 0, 300)  # chunk 0 of layer 1, read before the damage
    flip_byte(path / "layer_1" / "c" / "0" / "0", 5000)  # block 1 (bytes 4096..8191)
    with open_table(path) as table:
        np.testing.assert_array_equal(table.gather(1, [0, 1, 40]), want[[0, 1, 40]])
        with pytest.raises(EngramError) as info:
            table.gather(1, [5000 // 264])  # the row holding byte 5000
        message = str(info.value)
        assert "block 1 (bytes 4096..8191) of chunk 0 of layer 1" in message
        assert "verify --deep" in message and "--add-block-checksums" in message
        np.testing.assert_array_equal(table.gather(1, [299]), want[[299]])  # block 19


def test_without_block_checksums_a_damaged_chunk_fails_whole(tmp_path, small_layout, cold, caplog):
    path = fp8_table(tmp_path / "t.zarr", small_layout)
    (path / "layer_1" / "blocks.crc32c").unlink()  # a table made before init wrote them
    flip_byte(path / "layer_1" / "c" / "0" / "0", 5000)
    with open_table(path) as table:
        with pytest.raises(EngramError, match="chunk 0 of layer 1 .* damaged: its checksum"):
            table.gather(1, [0])
        table.gather(1, [300])  # chunk 1 is sound
    assert "has no block checksums" in caplog.text and "--add-block-checksums" in caplog.text


def test_a_rewritten_chunk_updates_its_record_and_a_stale_record_falls_back(
    tmp_path, small_layout, cold
):
    path = fp8_table(tmp_path / "t.zarr", small_layout)
    add_block_checksums(path)
    values = np.full((2, 256), 0.5, np.float32)
    with open_table(path, "r+") as table:
        table.write_rows(1, [3, 4], values)
    with open_table(path) as table:
        got = table.gather(1, [3, 4, 5])
        sums = BlockSums.open(table.store, table.meta, 1)
        assert sums.for_chunk(0, table.manifest[1][0][0]) is not None  # the record followed
    # a record whose tag is stale (an older writer): whole-chunk check, rows still right
    store = open_store(path)
    raw = bytearray(store.read_bytes(blocks_key(table.meta, 1)))
    raw[32 + 4] ^= 0xFF  # chunk 0's tag
    store.write_bytes(blocks_key(table.meta, 1), bytes(raw))
    with open_table(path) as table:
        np.testing.assert_array_equal(table.gather(1, [3, 4, 5]), got)


def test_a_chunk_truncated_under_a_reader_is_an_error_not_a_fault(tmp_path, small_layout, cold):
    path = fp8_table(tmp_path / "t.zarr", small_layout)
    add_block_checksums(path)
    with open_table(path) as table:
        table.gather(1, [0, 10])
        os.truncate(path / "layer_1" / "c" / "0" / "0", 1000)
        with pytest.raises(EngramError, match="chunk 0 of layer 1 .*(damaged|shorter)"):
            table.gather(1, [250])


def test_a_damaged_block_checksum_file_is_refused_naming_the_fix(tmp_path, small_layout):
    path = fp8_table(tmp_path / "t.zarr", small_layout)
    add_block_checksums(path)
    file = path / "layer_1" / "blocks.crc32c"
    file.write_bytes(file.read_bytes()[:-4])
    with pytest.raises(EngramError, match="do not describe layer 1; run engramctl verify --add"):
        with open_table(path) as table:
            table.source.cold.layer(1)


def test_add_block_checksums_skips_damaged_chunks_and_refuses_other_tables(tmp_path, small_layout):
    path = fp8_table(tmp_path / "t.zarr", small_layout)
    flip_byte(path / "layer_15" / "c" / "2" / "0", 10)
    report = add_block_checksums(path, block_bytes="64K")
    assert report.block_bytes == 65536 and len(report.damaged) == 1
    assert "chunk 2 of layer 15" in report.damaged[0]
    with open_table(path) as table:
        sums = BlockSums.open(table.store, table.meta, 15)
        assert sums.covered == len(table.manifest[15]) - 1
    zstd = tmp_path / "z.zarr"
    make(zstd, small_layout, compressor="zstd")
    with pytest.raises(UsageError, match="local tables of uncompressed chunks"):
        add_block_checksums(zstd)


def test_a_page_cached_table_is_served_from_its_maps(tmp_path, small_layout):
    path = fp8_table(tmp_path / "t.zarr", small_layout)
    with open_table(path) as table:
        table.rows(1, 0, table.meta.layer(1).rows)  # read: now in the page cache
        table.gather(1, np.arange(0, 2000, 3))
        counters = table.source.cold.counters
        assert counters["cold_rows"] == 0 and counters["warm_chunks"] > 0


# ------------------------------------------------------------------------ the CLI
def test_verify_add_block_checksums_and_deep_checks_them(tmp_path, small_layout):
    from typer.testing import CliRunner

    from engramctl.cli import app

    def run(*args):
        return CliRunner().invoke(app, [str(a) for a in args])

    path = fp8_table(tmp_path / "t.zarr", small_layout)
    result = run("verify", path, "--add-block-checksums")
    assert result.exit_code == 0, result.output
    assert "block checksums recorded for" in result.output and "(4 KiB blocks)" in result.output
    assert (path / "layer_1" / "blocks.crc32c").is_file()
    assert run("verify", path, "--deep").exit_code == 0
    # a record that disagrees with a sound chunk: deep verify names it and the fix
    file = path / "layer_1" / "blocks.crc32c"
    raw = bytearray(file.read_bytes())
    raw[32 + 8] ^= 0xFF  # chunk 0, block 0's CRC-32C
    file.write_bytes(bytes(raw))
    result = run("verify", path, "--deep")
    assert result.exit_code == 1
    assert "chunk 0 of layer 1: its block checksums disagree with it (block 0" in result.output
    assert run("verify", path, "--add-block-checksums").exit_code == 0
    assert run("verify", path, "--deep").exit_code == 0
    bad = run("verify", path, "--add-block-checksums", "--block-size", "5K")
    assert bad.exit_code == 2 and "not a multiple of 4 KiB" in bad.output
    assert "Traceback" not in bad.output
