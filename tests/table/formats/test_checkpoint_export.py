"""export --format deepseek: shards + index + config that import back bit for bit; dequantization
exactly as the engines do it."""

from __future__ import annotations

import json

import numpy as np
import pytest

from engramctl.errors import EngramError
from engramctl.table.build.create import create_table
from engramctl.table.core.checkpoint import open_checkpoint, read_shard_header
from engramctl.table.core.dtypes import decode_rows
from engramctl.table.core.fp8 import FP8_LUT
from engramctl.table.formats.checkpoint_export import export_checkpoint, plan_shards
from engramctl.table.formats.checkpoint_import import import_checkpoint
from engramctl.table.sources.table import open_table

from ..ckpt_util import small_layout, write_checkpoint

DIM = 64


def test_decoding_is_the_engines_exponent_shift_for_every_code_and_scale():
    codes = np.arange(256, dtype=np.uint8)
    codes = codes[(codes & 0x7F) != 0x7F]  # NaN codes are refused at import
    exps = np.arange(255, dtype=np.uint8)  # 255 is NaN in E8M0, refused at import
    # one row per (code, e): 32 copies of the code, then the scale byte e
    code_grid, exp_grid = np.meshgrid(codes, exps, indexing="ij")
    rows = np.empty((code_grid.size, 33), np.uint8)
    rows[:, :32] = code_grid.reshape(-1, 1)
    rows[:, 32] = exp_grid.reshape(-1)
    ours = decode_rows(rows, "float8_e4m3fn", 32)
    engine_scale = (exp_grid.reshape(-1).astype(np.uint32) << 23).view(np.float32)
    with np.errstate(over="ignore"):  # 448 * 2**127 overflows to inf on the engines too
        engine = FP8_LUT[code_grid.reshape(-1)] * engine_scale  # float32 * float32
    assert ours.dtype == np.float32
    np.testing.assert_array_equal(ours.view(np.uint32)[:, 0], engine.view(np.uint32))
    assert (ours == ours[:, :1]).all()
    assert ours[rows[:, 32] == 0].max() == 0  # e = 0 is a zero scale, as the engines have it


def test_shard_plan():
    tensors = [("a", "", [], 4), ("b", "", [], 4), ("c", "", [], 10), ("d", "", [], 1)]
    assert [[t[0] for t in s] for s in plan_shards(tensors, 8)] == [["a", "b"], ["c"], ["d"]]


@pytest.fixture
def fp8_table(tmp_path, tiny_vocab):
    layout = small_layout(tiny_vocab)
    write_checkpoint(tmp_path / "ckpt", layout, dim=DIM)
    import_checkpoint(tmp_path / "ckpt", tmp_path / "t.zarr", vocab=tiny_vocab, chunk_rows=11)
    return tmp_path / "t.zarr", layout


def test_fp8_export_imports_back_bit_identical(fp8_table, tmp_path, tiny_vocab):
    table_path, layout = fp8_table
    result = export_checkpoint(table_path, tmp_path / "out", max_shard_size=3000)
    assert not result.quantized and result.max_relative_error == 0
    assert len(result.shards) >= 3  # several shards at a 3 kB limit
    index = json.loads((tmp_path / "out" / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == {
        f"layers.{layer}.engram.embed.{part}" for layer in (1, 4) for part in ("weight", "scale")
    }
    for name in result.shards:
        header = read_shard_header(tmp_path / "out" / name)
        assert {e["dtype"] for e in header.tensors.values()} <= {"F8_E4M3", "F8_E8M0"}
    assert (
        open_checkpoint(tmp_path / "out").config.layout(vocab_size=tiny_vocab.canonical_vocab_size)
        == layout
    )
    import_checkpoint(tmp_path / "out", tmp_path / "back.zarr", vocab=tiny_vocab, chunk_rows=11)
    for name in ("zarr.json",):
        a = json.loads((table_path / name).read_text())["attributes"]["engramctl_manifest"]
        b = json.loads((tmp_path / "back.zarr" / name).read_text())["attributes"][
            "engramctl_manifest"
        ]
        assert a == b  # every chunk's checksum identical
    with open_table(table_path) as x, open_table(tmp_path / "back.zarr") as y:
        ids = np.arange(layout.layer_rows(4))
        np.testing.assert_array_equal(x.gather(4, ids), y.gather(4, ids))


def test_float_export_is_quantized_with_its_error(tmp_path, tiny_vocab):
    layout = small_layout(tiny_vocab)
    create_table(
        tmp_path / "f.zarr",
        layout=layout,
        vocab_fingerprint=tiny_vocab.fingerprint,
        dim=DIM,
        dtype="float32",
        init="normal",
        std=0.02,
        chunk_rows=13,
    )
    result = export_checkpoint(tmp_path / "f.zarr", tmp_path / "out")
    assert result.quantized and 0 < result.mean_relative_error <= result.max_relative_error < 0.1
    import_checkpoint(tmp_path / "out", tmp_path / "back.zarr", vocab=tiny_vocab, dtype="float32")
    with open_table(tmp_path / "f.zarr") as a, open_table(tmp_path / "back.zarr") as b:
        ids = np.arange(layout.layer_rows(1))
        x, q = a.gather(1, ids), b.gather(1, ids)
        rel = np.linalg.norm(q - x, axis=1) / np.linalg.norm(x, axis=1)
        assert rel.max() == pytest.approx(result.max_relative_error, rel=1e-6)


def test_export_refuses_existing_output_and_leaves_nothing(fp8_table, tmp_path):
    (tmp_path / "out").mkdir()
    with pytest.raises(EngramError, match="exists; pass --overwrite"):
        export_checkpoint(fp8_table[0], tmp_path / "out")
    export_checkpoint(fp8_table[0], tmp_path / "out", overwrite=True)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]
