"""init-table, info, verify, export, import through typer's CliRunner."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from typer.testing import CliRunner

from engramctl.cli import app
from engramctl.table.core.codec import chunk_key
from engramctl.table.sources.table import open_table

SMALL = ["--ngram-vocab", "500,500", "--heads", "2", "--dim", "32", "--chunk-rows", "300"]
runner = CliRunner()


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture
def table(tmp_path, ds_vocab_path):
    path = tmp_path / "t.zarr"
    result = run("init-table", path, "--vocab", ds_vocab_path, *SMALL, "--workers", "2", "--json")
    assert result.exit_code == 0, result.output
    return path


def test_init_info_verify(table, ds_vocab, ds_vocab_path):
    info = json.loads(run("info", table, "--json").stdout)
    assert info["format_version"] == 1 and info["vocab_fingerprint"] == ds_vocab.fingerprint
    assert set(info["layers"]) == {"1", "15"}
    layer = info["layers"]["1"]
    assert {"rows", "dim", "dtype", "chunk_rows", "head_rows", "head_offsets"} <= set(layer)
    assert layer["dim"] == 32 and layer["dtype"] == "float32" and layer["chunk_rows"] == 300
    assert layer["rows"] == sum(layer["head_rows"]) and layer["head_offsets"][0] == 0
    assert info["layout"]["heads"] == 2
    assert layer["chunks_written"] == layer["chunks_total"]
    assert run("info", table).exit_code == 0
    report = run("verify", table, "--deep", "--vocab", ds_vocab_path, "--json")
    assert report.exit_code == 0 and json.loads(report.stdout)["ok"]
    with open_table(table) as t:
        assert t.gather(15, [0, 1]).shape == (2, 32)


def test_verify_reports_damage(table):
    victim = table / chunk_key(1, 1)
    data = bytearray(victim.read_bytes())
    data[100] ^= 1
    victim.write_bytes(bytes(data))
    assert run("verify", table).exit_code == 0  # sizes are fine
    result = run("verify", table, "--deep")
    assert result.exit_code == 1
    assert "damaged: chunk 1 of layer 1" in result.stderr


def test_refusals(table, tmp_path, ds_vocab_path, tiny_vocab):
    result = run("init-table", table, "--vocab", ds_vocab_path, *SMALL)  # the same: nothing to do
    assert result.exit_code == 0 and "already complete" in result.stdout, result.output
    result = run("init-table", table, "--vocab", ds_vocab_path, *SMALL, "--seed", "1")
    assert result.exit_code == 1 and "exists; pass --overwrite" in result.stderr
    assert "Traceback" not in result.output
    result = run("info", tmp_path / "nothing.zarr")
    assert result.exit_code == 1 and "no table at" in result.stderr
    result = run("init-table", tmp_path / "x.zarr", "--vocab", ds_vocab_path, "--dtype", "int8")
    assert result.exit_code == 2 and "'int8' is not one of" in result.stderr
    result = run("init-table", tmp_path / "x.zarr", "--vocab", ds_vocab_path, "--workers", "0")
    assert result.exit_code == 2
    other = tmp_path / "tiny.parquet"
    tiny_vocab.save(other)
    result = run("verify", table, "--vocab", other)
    assert result.exit_code == 1 and "was made for vocab" in result.stderr


def test_export_import_round_trip(table, tmp_path, ds_vocab_path):
    out = tmp_path / "t.safetensors"
    result = run("export", table, out, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["tensors"]["layer_1"][1] == 32
    back = tmp_path / "back.zarr"
    result = run(
        "import",
        out,
        back,
        "--vocab",
        ds_vocab_path,
        "--ngram-vocab",
        "500,500",
        "--heads",
        "2",
        "--json",
    )
    assert result.exit_code == 0, result.output
    with open_table(table) as a, open_table(back) as b:
        ids = np.arange(a.info.layers[15].rows)
        np.testing.assert_array_equal(a.gather(15, ids), b.gather(15, ids))
    result = run("import", out, tmp_path / "c.zarr", "--vocab", ds_vocab_path)
    assert result.exit_code == 0, result.output  # the file records its layout
    with open_table(tmp_path / "c.zarr") as c:
        assert c.layout == open_table(table).layout
    result = run("import", out, tmp_path / "d.zarr", "--vocab", ds_vocab_path, "--pad-id", "0")
    assert result.exit_code == 2 and "--pad-id 0, the file has" in result.stderr
    assert not (tmp_path / "d.zarr").exists()


def test_lazy_deepseek_and_no_torch_at_import(tmp_path, ds_vocab_path):
    result = run(
        "init-table",
        tmp_path / "ds.zarr",
        "--vocab",
        ds_vocab_path,
        "--preset",
        "deepseek-v4.1",
        "--lazy",
        "--json",
    )
    assert result.exit_code == 0
    info = json.loads(result.stdout)
    assert info["dtype"] == "float8_e4m3fn" and info["dim"] == 256 and info["disk_bytes"] == 0
    code = (
        "import sys, engramctl.cli; "
        "print(any(m in sys.modules for m in ('torch', 'zarr', 'numba')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_bad_tensor_name_and_zero_chunk_rows_refused(table, tmp_path, ds_vocab_path):
    # A template without {layer} would write every layer under one name (the last one wins).
    out = tmp_path / "x.safetensors"
    for template, words in [("foo", "same name"), ("{bad}", "not a valid template")]:
        result = run("export", table, out, "--tensor-name", template)
        assert result.exit_code == 2 and words in result.stderr, result.output
        assert "Traceback" not in result.output and not out.exists()
    # --chunk-rows 0 is refused like a negative count, not replaced by the default.
    result = run("init-table", tmp_path / "z.zarr", "--vocab", ds_vocab_path, "--chunk-rows", "0")
    assert result.exit_code == 2 and "--chunk-rows must be at least 1" in result.stderr
    assert not (tmp_path / "z.zarr").exists()
