"""Block checksums written as chunks are written: init-table and both imports record them."""

from __future__ import annotations

import numpy as np
import pytest

from engramctl.errors import EngramError
from engramctl.table.core.blocksums import BlockSums, add_block_checksums
from engramctl.table.formats.checkpoint_import import import_checkpoint
from engramctl.table.formats.safetensors import export_safetensors
from engramctl.table.formats.safetensors_import import import_safetensors
from engramctl.table.sources.table import open_table

from ..ckpt_util import small_layout as ckpt_layout
from ..ckpt_util import write_checkpoint
from ..conftest import make
from .test_cold import cold, flip_byte  # noqa: F401 - the fixture is used by name


def records(path, layer_id):
    """Every chunk's ``(tag, block CRC-32Cs)`` as the table's file holds them."""
    with open_table(path) as table:
        sums = BlockSums.open(table.store, table.meta, layer_id)
        assert sums is not None, f"layer {layer_id} has no block checksums"
        n = table.meta.layer(layer_id).n_chunks(table.meta.chunk_rows)
        assert sums.covered == n
        return {c: (int(sums.records[c, 1]), sums.records[c, 2:].tolist()) for c in range(n)}


def assert_same_as_added(path, layers):
    """What the writer recorded equals what verify --add-block-checksums computes afresh."""
    written = {layer_id: records(path, layer_id) for layer_id in layers}
    add_block_checksums(path)
    assert {layer_id: records(path, layer_id) for layer_id in layers} == written


def test_init_table_records_block_checksums(tmp_path, small_layout):
    path = tmp_path / "t.zarr"
    make(path, small_layout, dtype="float8_e4m3fn", dim=256)
    assert_same_as_added(path, (1, 15))


def test_compressed_tables_get_none(tmp_path, small_layout):
    path = tmp_path / "z.zarr"
    make(path, small_layout, dtype="float8_e4m3fn", dim=256, compressor="zstd")
    assert not (path / "layer_1" / "blocks.crc32c").exists()


def test_checkpoint_and_safetensors_imports_record_them(tmp_path, ds_vocab):
    layout = ckpt_layout(ds_vocab, ngram_vocab=(500, 500), layers=(1, 15))
    write_checkpoint(tmp_path / "ckpt", layout, dim=64)
    copy = tmp_path / "c.zarr"
    import_checkpoint(tmp_path / "ckpt", copy, vocab=ds_vocab, chunk_rows=300)
    assert_same_as_added(copy, (1, 15))
    export_safetensors(copy, tmp_path / "x.safetensors")
    again = tmp_path / "s.zarr"
    import_safetensors(
        tmp_path / "x.safetensors", again, layout=layout, vocab_fingerprint=ds_vocab.fingerprint
    )
    assert_same_as_added(again, (1, 15))


def test_a_damaged_block_of_a_new_table_is_named(tmp_path, small_layout, cold):  # noqa: F811
    path = tmp_path / "t.zarr"
    make(path, small_layout, dtype="float8_e4m3fn", dim=256)
    with open_table(path) as table:
        want = table.rows(1, 0, 300)
    flip_byte(path / "layer_1" / "c" / "0" / "0", 5000)
    with open_table(path) as table:
        with pytest.raises(EngramError, match="block 1 .* of chunk 0 of layer 1"):
            table.gather(1, [5000 // 264])
        np.testing.assert_array_equal(table.gather(1, [0, 299]), want[[0, 299]])


def test_a_resumed_init_keeps_the_records_of_earlier_chunks(tmp_path, small_layout):
    path = tmp_path / "t.zarr"
    make(path, small_layout, dtype="float8_e4m3fn", dim=256)
    full = records(path, 1)
    # a later run that writes one chunk again merges its record with those already there
    from engramctl.table.build.chunks import ManifestRecorder
    from engramctl.table.core.manifest import read_group
    from engramctl.table.core.store import open_store

    store = open_store(path)
    meta, manifest = read_group(store)
    recorder = ManifestRecorder(store, meta, manifest, chunks_total=1)
    tag, crcs = full[3]
    from engramctl.table.build.chunks import ChunkRecord

    recorder.record(ChunkRecord(1, 3, tag, meta.chunk_bytes, np.array(crcs, np.uint32)))
    recorder.finish(None)
    assert records(path, 1) == full
