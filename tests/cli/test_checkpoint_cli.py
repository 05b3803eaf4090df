"""layout --config, import CKPT_DIR (copy, --link), info/verify of links, export --format
deepseek, lookup, and the bad inputs of issue 10 through typer's CliRunner."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from engramctl.cli import app
from engramctl.table.sources.table import open_table

from ..table.ckpt_util import small_layout, write_checkpoint
from ..test_model_config import V41
from .test_cli_foundation import assert_one_error_line

runner = CliRunner()


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def tiny_vocab_file(tiny_vocab, tmp_path_factory):
    path = tmp_path_factory.mktemp("vocab") / "tiny.parquet"
    tiny_vocab.save(path)
    return path


@pytest.fixture
def ckpt(tmp_path, tiny_vocab):
    layout = small_layout(tiny_vocab)
    rows = write_checkpoint(tmp_path / "ckpt", layout, dim=64)
    return tmp_path / "ckpt", rows


def test_layout_from_the_v41_config_is_the_preset(tmp_path, ds_vocab_path):
    (tmp_path / "config.json").write_text(json.dumps({"text_config": V41}))
    preset = run("layout", "--vocab", ds_vocab_path, "--preset", "deepseek-v4.1", "--json")
    config = run("layout", "--vocab", ds_vocab_path, "--config", tmp_path / "config.json", "--json")
    assert preset.exit_code == 0 and config.exit_code == 0, config.output
    assert json.loads(config.stdout) == json.loads(preset.stdout)
    rows = [json.loads(config.stdout)["layers"][k]["rows"] for k in ("1", "14")]
    assert rows == V41["engram_num_embeddings"]
    text = run("layout", "--vocab", ds_vocab_path, "--config", tmp_path)  # the directory
    assert text.exit_code == 0 and "384,006,168" in text.stdout


def test_config_refusals(tmp_path, ds_vocab_path, tiny_vocab_file):
    (tmp_path / "config.json").write_text(json.dumps(V41))
    line = assert_one_error_line(
        run("layout", "--vocab", ds_vocab_path, "--config", tmp_path, "--preset", "demo-v1"), 2
    )
    assert "drop --preset" in line
    line = assert_one_error_line(run("layout", "--vocab", tiny_vocab_file, "--config", tmp_path), 2)
    assert "engram_compressed_vocab_size is 99092" in line
    wrong = {**V41, "engram_num_embeddings": [384006168, 1]}
    (tmp_path / "config.json").write_text(json.dumps(wrong))
    line = assert_one_error_line(
        run("hash", "--vocab", ds_vocab_path, "--config", tmp_path, "--text", "a"), 2
    )
    assert "[384006168, 1]" in line and "384016682" in line
    (tmp_path / "config.json").write_text(json.dumps({"hidden_size": 1}))
    line = assert_one_error_line(run("layout", "--vocab", ds_vocab_path, "--config", tmp_path), 2)
    assert "no engram_* keys" in line


def test_import_link_info_verify_lookup(ckpt, tmp_path, tiny_vocab_file, tiny_tokenizer_path):
    path, rows = ckpt
    out = tmp_path / "t.zarr"
    result = run("import", path, out, "--link", "--vocab", tiny_vocab_file, "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["sources"]["mode"] == "link" and doc["disk_bytes"] == 0
    info = run("info", out)
    assert info.exit_code == 0 and "linked to checkpoint" in info.stdout
    assert "../ckpt/model-00002-of-00003.safetensors: " in info.stdout
    assert run("verify", out).exit_code == 0
    assert run("verify", out, "--deep").exit_code == 0
    with open_table(out) as table:
        np.testing.assert_array_equal(table.gather(4, [3, 2]), rows[4][[3, 2]])
    found = run(
        "lookup", out, "--vocab", tiny_vocab_file, "--tokenizer", tiny_tokenizer_path,
        "--text", "the cat", "--values", "3", "--json",
    )  # fmt: skip
    assert found.exit_code == 0, found.output
    report = json.loads(found.stdout)
    heads = report["layers"]["1"][0]
    assert len(heads) == 4 and len(heads[0]["values"]) == 3
    from engramctl.table.core.dtypes import decode_rows

    first = decode_rows(rows[1][[heads[0]["table_row"]]], "float8_e4m3fn", 64)[0]
    assert heads[0]["norm"] == pytest.approx(float(np.linalg.norm(first.astype(np.float64))))
    assert heads[0]["values"] == first[:3].tolist()
    text = run("lookup", out, "--vocab", tiny_vocab_file, "--tokenizer", tiny_tokenizer_path,
               "--text", "the cat")  # fmt: skip
    assert text.exit_code == 0 and "L2 norm" in text.stdout


def test_copy_export_deepseek_import_round_trip(ckpt, tmp_path, tiny_vocab_file):
    path, rows = ckpt
    copy = tmp_path / "copy.zarr"
    assert run("import", path, copy, "--vocab", tiny_vocab_file, "--chunk-rows", "8").exit_code == 0
    out = tmp_path / "exported"
    result = run("export", copy, out, "--format", "deepseek", "--max-shard-size", "2kB", "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert len(doc["shards"]) > 2 and doc["quantized"] is False
    back = tmp_path / "back.zarr"
    assert run("import", out, back, "--vocab", tiny_vocab_file, "--chunk-rows", "8").exit_code == 0
    with open_table(copy) as a, open_table(back) as b:
        for layer in (1, 4):
            ids = np.arange(a.meta.layer(layer).rows)
            np.testing.assert_array_equal(a.gather(layer, ids), b.gather(layer, ids))


def test_bad_inputs_are_one_line(ckpt, tmp_path, tiny_vocab_file):
    path, _ = ckpt
    out = tmp_path / "t.zarr"
    line = assert_one_error_line(
        run("import", path, out, "--link", "--dtype", "float32", "--vocab", tiny_vocab_file), 2
    )
    assert "cannot convert" in line
    line = assert_one_error_line(
        run("import", path, out, "--preset", "demo-v1", "--vocab", tiny_vocab_file), 2
    )
    assert "drop --preset" in line
    (path / "model-00002-of-00003.safetensors").unlink()
    line = assert_one_error_line(run("import", path, out, "--vocab", tiny_vocab_file), 1)
    assert "model-00002-of-00003.safetensors" in line and "missing" in line
    assert not out.exists()
    line = assert_one_error_line(run("import", tmp_path / "nope.safetensors", out, "--link"), 2)
    assert "--link needs a checkpoint directory" in line
    line = assert_one_error_line(run("import", path, out), 2)
    assert "pass --vocab" in line


def test_linked_source_changed_is_one_line(ckpt, tmp_path, tiny_vocab_file, tiny_tokenizer_path):
    path, _ = ckpt
    out = tmp_path / "t.zarr"
    assert run("import", path, out, "--link", "--vocab", tiny_vocab_file).exit_code == 0
    shard = path / "model-00003-of-00003.safetensors"
    with open(shard, "ab") as handle:
        handle.write(b"x")
    result = run("verify", out)
    assert result.exit_code == 1 and shard.name in result.stderr.replace("\n", "")
    lookup = ["lookup", out, "--vocab", tiny_vocab_file, "--tokenizer", tiny_tokenizer_path]
    line = assert_one_error_line(run(*lookup, "--text", "the cat"), 1)
    assert f"{shard} changed since linking" in line


def test_init_table_and_safetensors_import_take_a_config(ckpt, tmp_path, tiny_vocab_file):
    path, rows = ckpt
    lazy = tmp_path / "lazy.zarr"
    made = run("init-table", lazy, "--vocab", tiny_vocab_file, "--config", path, "--lazy", "--json")
    assert made.exit_code == 0, made.output
    doc = json.loads(made.stdout)
    assert doc["dim"] == 64 and doc["dtype"] == "float8_e4m3fn"  # the config's head dim, fp8
    linked = tmp_path / "l.zarr"
    assert run("import", path, linked, "--link", "--vocab", tiny_vocab_file).exit_code == 0
    assert open_table(lazy).layout == open_table(linked).layout
    exported = tmp_path / "t.safetensors"
    assert run("export", linked, exported).exit_code == 0
    back = tmp_path / "back.zarr"
    result = run("import", exported, back, "--vocab", tiny_vocab_file, "--config", path)
    assert result.exit_code == 0, result.output
    with open_table(back) as table:
        np.testing.assert_array_equal(table.gather(1, np.arange(len(rows[1]))), rows[1])
