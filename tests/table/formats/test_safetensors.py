"""safetensors export/import: bit-for-bit round trips, and refusals."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest

from engramctl.errors import EngramError
from engramctl.table.build.create import create_table
from engramctl.table.core.dtypes import decode_rows, encode_rows
from engramctl.table.formats.safetensors import export_safetensors, read_safetensors_header
from engramctl.table.formats.safetensors_import import import_safetensors
from engramctl.table.sources.table import open_table
from engramctl.table.verify import verify_table
from tests.conftest import make_layout

FP = "sha256:0123456789abcdef"


@pytest.fixture(scope="module")
def layout():
    return make_layout((300, 300), layers=(2, 5), seed=1, vocab_size=1000)


def rows_of(path, layer_id):
    with open_table(path) as table:
        return table.gather(layer_id, np.arange(table.info.layers[layer_id].rows))


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16", "float8_e4m3fn"])
def test_export_import_round_trip(tmp_path, layout, dtype):
    src = create_table(
        tmp_path / "a.zarr",
        layout=layout,
        vocab_fingerprint=FP,
        dim=64,
        dtype=dtype,
        chunk_rows=200,
        lazy=True,
    )
    rng = np.random.default_rng(0)
    with open_table(src.path, mode="r+") as table:  # some written rows, some lazy init rows
        table.write_rows(5, [0, 700], rng.standard_normal((2, 64)).astype(np.float32))
    out = tmp_path / "a.safetensors"
    result = export_safetensors(src.path, out)
    names = {"layer_2", "layer_5"}
    if dtype == "float8_e4m3fn":
        names |= {"layer_2.scales", "layer_5.scales"}
    assert set(result.tensors) == names
    back = import_safetensors(out, tmp_path / "b.zarr", layout=layout, vocab_fingerprint=FP)
    assert back.info.dtype == dtype and back.info.status == "complete"
    for layer_id in layout.layers:
        np.testing.assert_array_equal(rows_of(src.path, layer_id), rows_of(back.path, layer_id))
    assert verify_table(back.path, deep=True).ok
    # the file is standard safetensors: torch reads it and sees the same values
    from safetensors.torch import load_file

    tensors = load_file(str(out))
    raw = rows_of(src.path, 5)
    if dtype == "float8_e4m3fn":
        values = tensors["layer_5"].float().numpy()
        scales = tensors["layer_5.scales"].numpy()
        assert np.array_equal(
            np.concatenate(
                [tensors["layer_5"].view(__import__("torch").uint8).numpy(), scales], axis=1
            ),
            raw,
        )
        np.testing.assert_array_equal(
            values * np.exp2(scales.astype(np.float32) - 127).repeat(32, axis=1),
            decode_rows(raw, dtype, 64),
        )
    else:
        np.testing.assert_array_equal(
            tensors["layer_5"].float().numpy(), decode_rows(raw, dtype, 64)
        )


def test_import_from_reference_model_names_and_conversion(tmp_path, layout):
    from safetensors.numpy import save_file

    rng = np.random.default_rng(1)
    weights = {
        f"blocks.{k}.engram.embedding.weight": rng.standard_normal(
            (layout.layer_rows(k), 32)
        ).astype(np.float32)
        for k in layout.layers
    }
    save_file(weights, str(tmp_path / "model.safetensors"))
    result = import_safetensors(
        tmp_path / "model.safetensors",
        tmp_path / "t.zarr",
        layout=layout,
        vocab_fingerprint=FP,
        name_template="blocks.{layer}.engram.embedding.weight",
        dtype="bfloat16",
    )
    assert result.info.dim == 32 and result.info.dtype == "bfloat16"
    np.testing.assert_array_equal(
        rows_of(result.path, 5),
        encode_rows(weights["blocks.5.engram.embedding.weight"], "bfloat16"),
    )


def test_import_refusals(tmp_path, layout):
    from safetensors.numpy import save_file

    rows = {k: layout.layer_rows(k) for k in layout.layers}
    good = {f"layer_{k}": np.zeros((n, 32), np.float32) for k, n in rows.items()}
    path = tmp_path / "x.safetensors"

    def attempt(tensors, **kw):
        save_file(tensors, str(path))
        return import_safetensors(
            path, tmp_path / "t.zarr", layout=layout, vocab_fingerprint=FP, **kw
        )

    with pytest.raises(EngramError, match="no tensor 'layer_5' for layer 5"):
        attempt({"layer_2": good["layer_2"]})
    with pytest.raises(EngramError, match=f"layer 2 of the layout has {rows[2]} rows"):
        attempt({**good, "layer_2": np.zeros((rows[2] - 1, 32), np.float32)})
    with pytest.raises(EngramError, match="dtype I64"):
        attempt({**good, "layer_2": np.zeros((rows[2], 32), np.int64)})
    with pytest.raises(EngramError, match="layers differ in dim"):
        attempt({**good, "layer_2": np.zeros((rows[2], 16), np.float32)})
    attempt(good)
    with pytest.raises(EngramError, match="exists; pass --overwrite"):
        attempt(good)
    attempt(good, overwrite=True)
    # a file exported for another vocab
    src = create_table(
        tmp_path / "s.zarr", layout=layout, vocab_fingerprint="sha256:other", dim=32, lazy=True
    )
    export_safetensors(src.path, tmp_path / "s.safetensors")
    with pytest.raises(EngramError, match="sha256:other.*sha256:0123456789abcdef"):
        import_safetensors(
            tmp_path / "s.safetensors", tmp_path / "u.zarr", layout=layout, vocab_fingerprint=FP
        )


def test_not_safetensors_and_truncated(tmp_path, layout):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x01")
    with pytest.raises(EngramError, match="shorter than 8 bytes"):
        read_safetensors_header(bad)
    bad.write_bytes(struct.pack("<Q", 10**12) + b"{}")
    with pytest.raises(EngramError, match="header length .* runs past the file"):
        read_safetensors_header(bad)
    src = create_table(tmp_path / "s.zarr", layout=layout, vocab_fingerprint=FP, dim=32, lazy=True)
    out = tmp_path / "s.safetensors"
    export_safetensors(src.path, out)
    out.write_bytes(out.read_bytes()[:-10])
    with pytest.raises(EngramError, match="past the file.s .* data bytes \\(truncated\\?\\)"):
        import_safetensors(out, tmp_path / "t.zarr", layout=layout, vocab_fingerprint=FP)
    assert not (tmp_path / "t.zarr").exists()
    assert not list(tmp_path.glob(".*importing*"))
    with pytest.raises(EngramError, match="exists; pass --overwrite"):
        export_safetensors(src.path, out)


def test_export_header_is_aligned_and_documented(tmp_path, layout):
    src = create_table(
        tmp_path / "s.zarr",
        layout=layout,
        vocab_fingerprint=FP,
        dim=32,
        dtype="float8_e4m3fn",
        lazy=True,
    )
    out = tmp_path / "s.safetensors"
    export_safetensors(src.path, out)
    data = Path(out).read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    assert length % 8 == 0
    header = json.loads(data[8 : 8 + length])
    meta = header.pop("__metadata__")
    assert meta["vocab_fingerprint"] == FP and json.loads(meta["engramctl_table"])["dim"] == 32
    assert header["layer_2"]["dtype"] == "F8_E4M3"
    assert header["layer_2.scales"] == {
        "dtype": "U8",
        "shape": [layout.layer_rows(2), 1],
        "data_offsets": header["layer_2.scales"]["data_offsets"],
    }
    ends = sorted(v["data_offsets"] for v in header.values())
    assert ends[0][0] == 0 and all(a[1] == b[0] for a, b in zip(ends, ends[1:], strict=False))
    assert ends[-1][1] == len(data) - 8 - length
