"""A linked checkpoint whose shard changed in place: a NaN scale is never served."""

from __future__ import annotations

import os

import numpy as np
import pytest

from engramctl.errors import EngramError
from engramctl.table.formats.checkpoint_import import import_checkpoint
from engramctl.table.sources import linkedcold
from engramctl.table.sources.linked import LinkedLayer, resolve_source
from engramctl.table.sources.table import open_table

from ..ckpt_util import small_layout as ckpt_layout
from ..ckpt_util import write_checkpoint


@pytest.fixture
def linked(tmp_path, ds_vocab):
    layout = ckpt_layout(ds_vocab, ngram_vocab=(500, 500), layers=(1, 15))
    write_checkpoint(tmp_path / "ckpt", layout, dim=64)
    table = tmp_path / "t.zarr"
    import_checkpoint(tmp_path / "ckpt", table, vocab=ds_vocab, link=True, chunk_rows=300)
    return table


def set_scale_255(table, layer_id: int, row: int, byte: int) -> None:
    """Rewrite one scale byte in place, same size and mtime (as the issue's user did)."""
    with open_table(table) as t:
        entry = t.meta.sources["layers"][str(layer_id)]["scale"]
    path = resolve_source(entry["file"], table)
    st = os.stat(path)
    with open(path, "r+b") as handle:
        handle.seek(entry["offset"] + row * entry["shape"][1] + byte)
        handle.write(b"\xff")
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def drop_link_sums(table) -> None:
    """Remove the block checksums: a link made before they were recorded."""
    for file in table.glob("*/link.crc32c"):
        file.unlink()


def test_a_nan_scale_is_refused_by_gather_rows_and_read_chunk(linked):
    drop_link_sums(linked)
    with open_table(linked) as t:
        sound = t.gather(1, [0, 1, 2, 700]).copy()
    set_scale_255(linked, 1, 700, 1)
    with open_table(linked) as t:
        np.testing.assert_array_equal(t.gather(1, [0, 1, 2]), sound[:3])  # other rows serve
        message = r"row 700 of layer 1: scale byte 1 is 255 \(NaN in E8M0.*verify --deep"
        with pytest.raises(EngramError, match=message):
            t.gather(1, [5, 700])
        with pytest.raises(EngramError, match=message):
            t.rows(1, 600, 800)
        with pytest.raises(EngramError, match=message):
            t.read_chunk(1, 2)


def test_a_shard_modified_after_the_link_is_refused_naming_the_tensor(linked):
    with open_table(linked) as t:
        entry = t.meta.sources["layers"]["15"]["weight"]
        t.gather(15, [0])  # opened and mapped: the next gather re-checks the file
        path = resolve_source(entry["file"], linked)
        os.utime(path, ns=(0, os.stat(path).st_mtime_ns + 10**9))
        with pytest.raises(
            EngramError, match=rf"modified after the link.*it holds {entry['tensor']} of layer 15\)"
        ):
            t.gather(15, [1])
    with pytest.raises(EngramError, match=r"changed since linking.*it holds .* of layer 15\)"):
        with open_table(linked) as t:
            t.gather(15, [1])


def test_a_shard_truncated_under_a_cold_reader_is_an_error_not_a_fault(linked, monkeypatch):
    monkeypatch.setattr(linkedcold, "resident", lambda address, length: False)
    with open_table(linked) as t:
        t.gather(1, [0, 900])
        entry = t.meta.sources["layers"]["1"]["weight"]
        path = resolve_source(entry["file"], linked)
        os.truncate(path, entry["offset"] + 100 * entry["shape"][1])
        with pytest.raises(EngramError, match="changed since linking"):
            t.gather(1, [900])  # the check before every gather sees it
        # the truncation landing between that check and the reads: still an error
        monkeypatch.setattr(LinkedLayer, "check_files", lambda self: None)
        with pytest.raises(EngramError, match=r"ended early while reading layer 1 \(truncated"):
            t.gather(1, [901])


def test_a_page_cached_linked_table_is_served_from_its_maps(linked):
    with open_table(linked) as t:
        t.rows(1, 0, t.meta.layer(1).rows)  # read: in the page cache now
        t.gather(1, np.arange(0, 900, 5))
        cold = t.source.cold_layer(1)
        assert cold.counters["cold_rows"] == 0 and cold.counters["warm_regions"] > 0
