"""Block checksums of linked shards: recorded at link time or by verify, checked on first touch."""

from __future__ import annotations

import os

import numpy as np
import pytest

from engramctl.errors import EngramError
from engramctl.table.formats.checkpoint_import import import_checkpoint
from engramctl.table.sources import linkblocks, linkedcold
from engramctl.table.sources.linked import resolve_source
from engramctl.table.sources.table import open_table
from engramctl.table.verify import verify_table

from ..ckpt_util import small_layout as ckpt_layout
from ..ckpt_util import write_checkpoint


@pytest.fixture
def linked(tmp_path, ds_vocab):
    layout = ckpt_layout(ds_vocab, ngram_vocab=(500, 500), layers=(1, 15))
    rows = write_checkpoint(tmp_path / "ckpt", layout, dim=256)
    table = tmp_path / "t.zarr"
    import_checkpoint(tmp_path / "ckpt", table, vocab=ds_vocab, link=True, chunk_rows=300)
    return table, rows


def flip_tensor_byte(table, layer_id: int, part: str, at: int) -> str:
    """Flip one byte of a linked tensor in place, size and mtime kept; returns the tensor name."""
    with open_table(table) as t:
        entry = t.meta.sources["layers"][str(layer_id)][part]
    path = resolve_source(entry["file"], table)
    st = os.stat(path)
    with open(path, "r+b") as handle:
        handle.seek(entry["offset"] + at)
        byte = handle.read(1)
        handle.seek(entry["offset"] + at)
        handle.write(bytes([byte[0] ^ 0x01]))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    return entry["tensor"]


@pytest.mark.parametrize("cold", [False, True], ids=["warm", "cold"])
def test_a_flipped_byte_is_refused_naming_tensor_and_block(linked, cold, monkeypatch):
    table, rows = linked
    if cold:
        monkeypatch.setattr(linkedcold, "resident", lambda address, length: False)
    assert (table / "layer_1" / "link.crc32c").is_file()  # recorded at link time
    tensor = flip_tensor_byte(table, 1, "weight", 5000)  # block 1 of the weight: rows 16..31
    with open_table(table) as t:
        np.testing.assert_array_equal(t.gather(1, [0, 15, 40, 2000]), rows[1][[0, 15, 40, 2000]])
        message = rf"block 1 \(bytes 4096..8191\) of {tensor} of layer 1 .*verify --deep"
        with pytest.raises(EngramError, match=message):
            t.gather(1, [3, 5000 // 256])
        with pytest.raises(EngramError, match=message):
            t.rows(1, 0, 300)
        with pytest.raises(EngramError, match=message):
            t.read_chunk(1, 0)
        np.testing.assert_array_equal(t.gather(1, [32, 300]), rows[1][[32, 300]])  # still serve
        np.testing.assert_array_equal(t.gather(15, [19]), rows[15][[19]])
    with open_table(table, check_chunks=False) as t:  # unchecked, as for chunk files
        assert t.gather(1, [5000 // 256]).shape == (1, 264)


def test_verify_records_checks_and_names_a_changed_block(linked):
    table, _ = linked
    for file in table.glob("*/link.crc32c"):
        file.unlink()  # a link made before them (or too large to sum at link time)
    report = verify_table(table, deep=True)
    assert report.ok and any("block checksums" in w for w in report.warnings)
    assert (table / "layer_15" / "link.crc32c").is_file()
    tensor = flip_tensor_byte(table, 15, "scale", 10)
    report = verify_table(table, deep=True)
    assert any(f"block 0 (bytes 0..4095) of {tensor}" in p for p in report.problems)
    with open_table(table) as t, pytest.raises(EngramError, match="fails its block checksum"):
        t.gather(15, [1])


def test_a_large_link_defers_them_and_add_block_checksums_records_them(
    tmp_path, ds_vocab, monkeypatch, caplog
):
    from engramctl.table.formats import checkpoint_import

    layout = ckpt_layout(ds_vocab, ngram_vocab=(500, 500), layers=(1, 15))
    rows = write_checkpoint(tmp_path / "ckpt", layout, dim=64)
    monkeypatch.setattr(checkpoint_import, "LINK_TIME_BYTES", 1000)
    table = tmp_path / "t.zarr"
    import_checkpoint(tmp_path / "ckpt", table, vocab=ds_vocab, link=True)
    assert not list(table.glob("*/link.crc32c")) and "verify --deep" in caplog.text
    from engramctl.table.verify import add_block_checksums

    report = add_block_checksums(table)
    assert report.chunks_recorded == 0 and report.bytes_read == linkblocks.linked_bytes(
        open_table(table).meta
    )
    with open_table(table) as t:
        np.testing.assert_array_equal(t.gather(1, [7, 2000]), rows[1][[7, 2000]])
        assert t.source.layer(1).checks.counters["blocks_checked"] > 0


def test_a_sums_file_of_another_link_is_refused(linked, tmp_path, ds_vocab):
    table, _ = linked
    other = tmp_path / "other.zarr"
    layout = ckpt_layout(ds_vocab, ngram_vocab=(500, 500), layers=(1, 15))
    write_checkpoint(tmp_path / "ckpt2", layout, dim=256, seed=3)
    import_checkpoint(tmp_path / "ckpt2", other, vocab=ds_vocab, link=True, chunk_rows=300)
    sums = (other / "layer_1" / "link.crc32c").read_bytes()
    (table / "layer_1" / "link.crc32c").write_bytes(sums)
    with open_table(table) as t, pytest.raises(EngramError, match="another link of layer 1"):
        t.gather(1, [0])
