"""Checkpoint import (copy and --link), linked gather/verify, and the bad inputs of issue 10."""

from __future__ import annotations

import json
import os
import shutil
import struct

import numpy as np
import pytest

from engramctl.errors import EngramError, UsageError
from engramctl.table.core.checkpoint import open_checkpoint, read_shard_header
from engramctl.table.core.manifest import read_group
from engramctl.table.formats.checkpoint_import import import_checkpoint
from engramctl.table.sources.table import open_table
from engramctl.table.verify import verify_table

from ..ckpt_util import small_layout, write_checkpoint

DIM = 64


@pytest.fixture
def ckpt(tmp_path, tiny_vocab):
    layout = small_layout(tiny_vocab)
    rows = write_checkpoint(tmp_path / "ckpt", layout, dim=DIM)
    return tmp_path / "ckpt", layout, rows


def all_rows(table, layer_id):
    return table.gather(layer_id, np.arange(table.meta.layer(layer_id).rows))


@pytest.mark.parametrize("link", [False, True])
def test_import_gives_the_checkpoint_bytes(ckpt, tmp_path, tiny_vocab, link):
    path, layout, rows = ckpt
    out = tmp_path / "t.zarr"
    result = import_checkpoint(path, out, vocab=tiny_vocab, link=link, chunk_rows=7)
    assert result.info.dtype == "float8_e4m3fn" and result.info.dim == DIM
    with open_table(out, vocab=tiny_vocab) as table:
        assert table.meta.linked == link and table.layout == layout
        for layer_id in layout.layers:
            np.testing.assert_array_equal(all_rows(table, layer_id), rows[layer_id])
            ids = np.array([5, 0, 5, layout.layer_rows(layer_id) - 1])
            np.testing.assert_array_equal(table.gather(layer_id, ids), rows[layer_id][ids])
    assert verify_table(out).ok
    assert verify_table(out, deep=True).ok
    disk = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    assert (disk < 20_000) == link  # a link writes kilobytes


def test_linked_and_copied_tables_agree_and_export_alike(ckpt, tmp_path, tiny_vocab):
    path, layout, _ = ckpt
    import_checkpoint(path, tmp_path / "copy.zarr", vocab=tiny_vocab, chunk_rows=9)
    import_checkpoint(path, tmp_path / "link.zarr", vocab=tiny_vocab, link=True, chunk_rows=9)
    with open_table(tmp_path / "copy.zarr") as a, open_table(tmp_path / "link.zarr") as b:
        for layer_id in layout.layers:
            np.testing.assert_array_equal(all_rows(a, layer_id), all_rows(b, layer_id))
    info = open_table(tmp_path / "link.zarr").info.to_dict()
    files = info["sources"]["files"]
    assert info["sources"]["mode"] == "link" and len(files) == 2
    assert all(name.startswith("../ckpt/") for name in files)  # beside the table: relative


def test_model_prefix_and_single_file(tmp_path, tiny_vocab):
    layout = small_layout(tiny_vocab)
    rows = write_checkpoint(tmp_path / "c", layout, dim=DIM, prefix="model.", single=True)
    import_checkpoint(tmp_path / "c", tmp_path / "t.zarr", vocab=tiny_vocab, link=True)
    with open_table(tmp_path / "t.zarr") as table:
        np.testing.assert_array_equal(all_rows(table, 4), rows[4])


def test_layer_subset(ckpt, tmp_path, tiny_vocab):
    path, _, rows = ckpt
    import_checkpoint(path, tmp_path / "t.zarr", vocab=tiny_vocab, layers=[4])
    with open_table(tmp_path / "t.zarr") as table:
        assert table.layers == (4,)
        np.testing.assert_array_equal(all_rows(table, 4), rows[4])
    assert verify_table(tmp_path / "t.zarr", deep=True).ok
    with pytest.raises(UsageError, match="Engram layers are"):
        import_checkpoint(path, tmp_path / "u.zarr", vocab=tiny_vocab, layers=[2])


def test_moving_a_link_with_its_shards_keeps_it_valid(tmp_path, tiny_vocab):
    layout = small_layout(tiny_vocab)
    rows = write_checkpoint(tmp_path / "a" / "ckpt", layout, dim=DIM)
    import_checkpoint(
        tmp_path / "a" / "ckpt", tmp_path / "a" / "t.zarr", vocab=tiny_vocab, link=True
    )
    shutil.move(tmp_path / "a", tmp_path / "b")
    assert verify_table(tmp_path / "b" / "t.zarr").ok
    with open_table(tmp_path / "b" / "t.zarr") as table:
        np.testing.assert_array_equal(all_rows(table, 1), rows[1])


def test_shards_elsewhere_are_recorded_absolute(tmp_path, tiny_vocab):
    layout = small_layout(tiny_vocab)
    write_checkpoint(tmp_path / "ckpt", layout, dim=DIM)
    (tmp_path / "tables").mkdir()
    out = tmp_path / "tables" / "sub" / "t.zarr"
    out.parent.mkdir()
    import_checkpoint(tmp_path / "ckpt", out, vocab=tiny_vocab, link=True)
    files = open_table(out).meta.sources["files"]
    assert all(name.startswith(str(tmp_path.resolve() / "ckpt")) for name in files)


# ----------------------------------------------------------------------- changed sources
def linked(ckpt, tmp_path, vocab):
    path, layout, rows = ckpt
    out = tmp_path / "t.zarr"
    import_checkpoint(path, out, vocab=vocab, link=True, chunk_rows=10)
    shard = path / "model-00002-of-00003.safetensors"  # layer 1's tensors
    return out, shard, rows


def test_changed_header_is_refused_by_verify_and_gather(ckpt, tmp_path, tiny_vocab):
    out, shard, _ = linked(ckpt, tmp_path, tiny_vocab)
    data = bytearray(shard.read_bytes())
    data[data.index(b"F8_E8M0") - 20 : data.index(b"F8_E8M0") - 19] = b" "  # same size
    shard.write_bytes(bytes(data))
    report = verify_table(out)
    assert not report.ok and str(shard.name) in report.problems[0]
    with pytest.raises(EngramError, match=f"{shard.name}.*changed"):
        open_table(out).gather(1, [0])


def test_truncated_source_is_refused_even_when_already_mapped(ckpt, tmp_path, tiny_vocab):
    out, shard, _ = linked(ckpt, tmp_path, tiny_vocab)
    table = open_table(out)
    table.gather(1, [0])  # mapped now
    with open(shard, "r+b") as handle:
        handle.truncate(shard.stat().st_size - 100)
    with pytest.raises(EngramError, match=f"{shard.name} changed since linking"):
        table.gather(1, [0])
    assert "bytes, the link recorded" in verify_table(out).problems[0]


def test_removed_source_is_refused(ckpt, tmp_path, tiny_vocab):
    out, shard, _ = linked(ckpt, tmp_path, tiny_vocab)
    shard.unlink()
    assert "is missing" in verify_table(out).problems[0]
    with pytest.raises(EngramError, match=f"{shard.name} is missing"):
        open_table(out).gather(1, [0])


def test_deep_verify_records_then_compares_checksums(ckpt, tmp_path, tiny_vocab):
    out, shard, _ = linked(ckpt, tmp_path, tiny_vocab)
    first = verify_table(out, deep=True)
    assert first.ok and first.chunks_checked == first.chunks_total
    assert any("recorded the checksums" in w for w in first.warnings)
    assert verify_table(out, deep=True).ok
    header = read_shard_header(shard)
    data = bytearray(shard.read_bytes())
    data[header.data_start + 3] ^= 0x01  # same size, header and mtime: only --deep sees it
    stat = shard.stat()
    shard.write_bytes(bytes(data))
    changed = verify_table(out)  # the modification time the link recorded differs
    assert not changed.ok and "modified after the link was made" in changed.problems[0]
    os.utime(shard, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert verify_table(out).ok
    report = verify_table(out, deep=True)
    assert not report.ok and "chunk 0 of layer 1" in report.problems[0]


def test_a_linked_table_takes_commits_and_leaves_its_checkpoint_alone(ckpt, tmp_path, tiny_vocab):
    out, _, _ = linked(ckpt, tmp_path, tiny_vocab)
    path = ckpt[0]
    before = {f.name: (f.stat().st_mtime_ns, f.read_bytes()) for f in path.iterdir()}
    with open_table(out) as table:
        base = table.gather(1, [0, 1, 2])
    with open_table(out, mode="r+") as table:
        table.write_rows(1, [1], np.ones((1, DIM), np.float32))
        with pytest.raises(EngramError, match="linked"):  # the base itself is never written
            table.write_chunk(1, 0, table.read_chunk(1, 0), source="data")
    with open_table(out) as table:
        got = table.gather(1, [0, 1, 2])
        assert len(table.commits) == 1
    assert got[0].tobytes() == base[0].tobytes() and got[2].tobytes() == base[2].tobytes()
    assert got[1].tobytes() != base[1].tobytes()
    assert {f.name: (f.stat().st_mtime_ns, f.read_bytes()) for f in path.iterdir()} == before
    assert verify_table(out, deep=True).ok


# -------------------------------------------------------------------------------- copies
def test_copy_resumes_after_an_interruption(ckpt, tmp_path, tiny_vocab):
    path, layout, rows = ckpt
    out = tmp_path / "t.zarr"
    calls = []

    def stop_after_three(done, total):
        calls.append(done)
        if len(calls) == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        import_checkpoint(path, out, vocab=tiny_vocab, chunk_rows=7, progress=stop_after_three)
    meta, manifest = read_group(out)
    assert meta.status == "initializing"
    recorded = sum(len(chunks) for chunks in manifest.values())
    assert recorded >= 2  # those done before the stop, and those in flight that finished
    with pytest.raises(EngramError, match="unfinished import"):  # no reader takes it for data
        open_table(out)
    assert any("unfinished import" in p for p in verify_table(out).problems)
    result = import_checkpoint(path, out, vocab=tiny_vocab, chunk_rows=7)
    assert result.resumed and result.chunks_skipped == recorded
    assert (
        result.chunks_written + result.chunks_skipped
        == result.info.layers[1].chunks_total + result.info.layers[4].chunks_total
    )
    with open_table(out) as table:
        assert table.meta.status == "complete"
        np.testing.assert_array_equal(all_rows(table, 1), rows[1])
    with pytest.raises(EngramError, match="exists; pass --overwrite"):
        import_checkpoint(path, out, vocab=tiny_vocab, chunk_rows=7)


def test_copy_with_conversion(ckpt, tmp_path, tiny_vocab):
    from engramctl.table.core.dtypes import decode_rows

    path, _, rows = ckpt
    import_checkpoint(path, tmp_path / "t.zarr", vocab=tiny_vocab, dtype="float32")
    with open_table(tmp_path / "t.zarr") as table:
        np.testing.assert_array_equal(
            all_rows(table, 4), decode_rows(rows[4], "float8_e4m3fn", DIM)
        )


@pytest.mark.parametrize("column, value, message", [(3, 0x7F, "NaN code"), (DIM + 1, 255, "255")])
def test_nan_rows_are_refused_naming_the_first(tmp_path, tiny_vocab, column, value, message):
    layout = small_layout(tiny_vocab)
    write_checkpoint(tmp_path / "c", layout, dim=DIM)
    shard = tmp_path / "c" / "model-00003-of-00003.safetensors"  # layer 4
    header = read_shard_header(shard)
    entry = header.tensors[
        "layers.4.engram.embed.weight" if column < DIM else "layers.4.engram.embed.scale"
    ]
    width = DIM if column < DIM else DIM // 32
    data = bytearray(shard.read_bytes())
    for row in (57, 90):
        data[header.data_start + entry["data_offsets"][0] + row * width + column % DIM] = value
    shard.write_bytes(bytes(data))
    with pytest.raises(EngramError, match=f"layer 4.*row 57: .*{message}"):
        import_checkpoint(tmp_path / "c", tmp_path / "t.zarr", vocab=tiny_vocab, chunk_rows=16)
    assert not (tmp_path / "t.zarr").exists()  # nothing half-written


# ---------------------------------------------------------------------------- bad input
def rewrite_header(shard, edit):
    header = read_shard_header(shard)
    data = shard.read_bytes()
    doc = json.loads(data[8 : header.data_start])
    edit(doc)
    blob = json.dumps(doc).encode()
    blob += b" " * (header.data_start - 8 - len(blob))
    shard.write_bytes(struct.pack("<Q", len(blob)) + blob + data[header.data_start :])


def shard_of(path, layer):
    index = json.loads((path / "model.safetensors.index.json").read_text())
    return path / index["weight_map"][f"layers.{layer}.engram.embed.weight"]


def bad(path, vocab, tmp_path, match, **kwargs):
    out = tmp_path / "bad.zarr"
    with pytest.raises((EngramError, UsageError), match=match):
        import_checkpoint(path, out, vocab=vocab, **kwargs)
    assert not out.exists()


def test_no_engram_tensors_lists_prefixes(tmp_path, tiny_vocab):
    layout = small_layout(tiny_vocab)
    write_checkpoint(
        tmp_path / "c",
        layout,
        skip=tuple(
            f"layers.{layer}.engram.embed.{part}"
            for layer in (1, 4)
            for part in ("weight", "scale")
        ),
    )
    bad(tmp_path / "c", tiny_vocab, tmp_path, "no Engram tensors.*named embed.weight")


def test_missing_scale(tmp_path, tiny_vocab):
    write_checkpoint(
        tmp_path / "c", small_layout(tiny_vocab), skip=("layers.4.engram.embed.scale",)
    )
    bad(tmp_path / "c", tiny_vocab, tmp_path, "no scale tensor layers.4.engram.embed.scale")


def test_missing_shard(ckpt, tmp_path, tiny_vocab):
    path, _, _ = ckpt
    shard_of(path, 4).unlink()
    bad(path, tiny_vocab, tmp_path, "names shard model-00003-of-00003.safetensors.*missing")


def test_wrong_dtype_and_shape(tmp_path, tiny_vocab):
    layout = small_layout(tiny_vocab)
    write_checkpoint(tmp_path / "c", layout, dtypes={"layers.1.engram.embed.scale": "U8"})
    bad(tmp_path / "c", tiny_vocab, tmp_path, "scale has dtype U8, expected F8_E8M0")
    write_checkpoint(tmp_path / "d", layout, config_overrides={"engram_head_dim": 32})
    bad(tmp_path / "d", tiny_vocab, tmp_path, r"weight has shape \[\d+, 64\].*config gives")


def test_header_past_the_file(ckpt, tmp_path, tiny_vocab):
    path, _, _ = ckpt
    shard = shard_of(path, 1)
    data = bytearray(shard.read_bytes())
    data[:8] = struct.pack("<Q", len(data) + 5)
    shard.write_bytes(bytes(data))
    bad(path, tiny_vocab, tmp_path, "header length .* runs past the file")


def test_offsets_past_the_file_and_overlaps(ckpt, tmp_path, tiny_vocab):
    path, _, _ = ckpt
    shard = shard_of(path, 1)
    with open(shard, "r+b") as handle:
        handle.truncate(shard.stat().st_size - 1)
    bad(path, tiny_vocab, tmp_path, "past the file's .* data bytes")
    with pytest.raises(EngramError, match="overlap"):
        shard2 = shard_of(path, 4)

        def overlap(doc):
            doc["layers.4.engram.embed.scale"]["data_offsets"] = [
                doc["layers.4.engram.embed.weight"]["data_offsets"][1] - 1,
                doc["layers.4.engram.embed.weight"]["data_offsets"][1]
                - 1
                + doc["layers.4.engram.embed.scale"]["shape"][0] * 2,
            ]

        rewrite_header(shard2, overlap)
        read_shard_header(shard2)


def test_config_without_engram_keys(tmp_path, tiny_vocab):
    write_checkpoint(tmp_path / "c", small_layout(tiny_vocab))
    (tmp_path / "c" / "config.json").write_text(json.dumps({"hidden_size": 8}))
    bad(tmp_path / "c", tiny_vocab, tmp_path, "no engram_\\* keys")


def test_link_cannot_convert(ckpt, tmp_path, tiny_vocab):
    bad(ckpt[0], tiny_vocab, tmp_path, "a link .* cannot convert", link=True, dtype="float32")


def test_vocab_size_must_match_config(ckpt, tmp_path, tiny_vocab, ds_vocab):
    bad(ckpt[0], ds_vocab, tmp_path, "engram_compressed_vocab_size is")


def test_open_checkpoint_needs_config_and_tensors(tmp_path):
    (tmp_path / "e").mkdir()
    with pytest.raises(UsageError, match="no config.json"):
        open_checkpoint(tmp_path / "e")


WEIGHT_1 = "layers.1.engram.embed.weight"


def as_strings(doc):
    doc[WEIGHT_1]["data_offsets"] = [str(v) for v in doc[WEIGHT_1]["data_offsets"]]


def as_floats(doc):
    doc[WEIGHT_1]["data_offsets"] = [v + 0.0 for v in doc[WEIGHT_1]["data_offsets"]]


def metadata_not_strings(doc):
    doc["__metadata__"] = {"format": 1}


def unknown_dtype(doc):
    doc[WEIGHT_1]["dtype"] = "U128"


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (as_strings, "data_offsets .* two integers"),
        (as_floats, "data_offsets .* two integers"),
        (metadata_not_strings, "__metadata__ must map strings to strings"),
        (unknown_dtype, "'U128', which is not a safetensors dtype"),
    ],
)
def test_shard_headers_obey_the_strict_rules(ckpt, tmp_path, tiny_vocab, edit, match):
    """A checkpoint shard is held to st_header's rules, like a single .safetensors import."""
    path, _, _ = ckpt
    rewrite_header(shard_of(path, 1), edit)
    bad(path, tiny_vocab, tmp_path, match)


def test_shard_header_nested_too_deeply(ckpt, tmp_path, tiny_vocab):
    path, _, _ = ckpt
    shard = shard_of(path, 1)
    header = read_shard_header(shard)
    data = shard.read_bytes()
    blob = data[8 : header.data_start].rstrip()[:-1] + b', "junk": ' + b"[" * 100_000
    blob += b"]" * 100_000 + b"}"
    shard.write_bytes(struct.pack("<Q", len(blob)) + blob + data[header.data_start :])
    bad(path, tiny_vocab, tmp_path, "nested too deeply")


def test_shard_with_bytes_no_tensor_owns(ckpt, tmp_path, tiny_vocab):
    path, _, _ = ckpt
    with open(shard_of(path, 1), "ab") as handle:
        handle.write(b"\0" * 16)
    bad(path, tiny_vocab, tmp_path, r"the tensors cover \d+ of the file's \d+ data bytes")
