"""history, revert, compact, info and verify of commits, and export of base + commits, through
typer's CliRunner."""

from __future__ import annotations

import json

import numpy as np
from safetensors.numpy import load_file
from typer.testing import CliRunner

from engramctl.cli import app
from engramctl.table import open_table
from engramctl.table.edits.log import segments_path

runner = CliRunner()


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def commit_twice(path):
    with open_table(path, "r+") as table:
        table.write_rows(1, [1, 2], np.full((2, 64), 1.0, np.float32))
        with table.edit("second") as block:
            block.write_rows(1, [2], np.full((1, 64), 2.0, np.float32))
            block.write_rows(15, [3], np.full((1, 64), 3.0, np.float32))


def test_history_info_verify_and_revert(f32_table):
    assert "no commits" in run("history", f32_table).stdout
    commit_twice(f32_table)
    doc = json.loads(run("history", f32_table, "--json").stdout)
    first, second = doc["commits"]
    assert first["rows"] == {"1": 2} and second["rows"] == {"1": 1, "15": 1}
    assert second["made_by"] == {"kind": "edit"} and second["message"] == "second"
    assert "second" in run("history", f32_table).stdout
    info = json.loads(run("info", f32_table, "--json").stdout)
    assert info["commits"]["count"] == 2 and info["commits"]["rows"] == 4
    assert "commits: 2 over the base" in run("info", f32_table).stdout
    report = json.loads(run("verify", f32_table, "--deep", "--json").stdout)
    assert report["ok"] and report["segments_checked"] == 3
    result = run("revert", f32_table, "--to", "nope")
    assert result.exit_code == 1 and "'nope' is not a commit of this table" in result.output
    assert len(result.output.strip().splitlines()) == 1
    result = run("revert", f32_table, "--to", first["id"], "--json")
    assert result.exit_code == 0 and json.loads(result.stdout)["dropped"] == [second["id"]]
    with open_table(f32_table) as table:
        assert table.gather(1, [2])[0, 0] == 1.0 and table.gather(15, [3])[0, 0] != 3.0


def test_compact_and_export_read_base_plus_commits(f32_table, tmp_path):
    commit_twice(f32_table)
    result = run("compact", f32_table)
    assert result.exit_code == 0 and "2 commits merged into one" in result.stdout
    assert len(list(segments_path(f32_table).iterdir())) == 2  # one per layer
    assert "nothing to compact" in run("compact", f32_table).stdout
    out = tmp_path / "t.safetensors"
    assert run("export", f32_table, out).exit_code == 0
    tensors = load_file(out)
    with open_table(f32_table) as table:
        for layer in (1, 15):
            want = table.gather(layer, np.arange(table.meta.layer(layer).rows))
            np.testing.assert_array_equal(tensors[f"layer_{layer}"], want)
    assert tensors["layer_1"][2, 0] == 2.0 and tensors["layer_15"][3, 0] == 3.0


def test_a_damaged_segment_fails_verify_with_what_to_do(f32_table):
    commit_twice(f32_table)
    victim = sorted(segments_path(f32_table).iterdir())[0]
    victim.write_bytes(victim.read_bytes()[:-5])
    result = run("verify", f32_table)
    assert result.exit_code == 1 and "revert --to" in result.output and victim.name in result.output


def test_compact_into_base_through_the_cli(f32_table):
    commit_twice(f32_table)
    reader = open_table(f32_table)
    result = run("compact", f32_table, "--into-base")
    assert result.exit_code == 1 and "1 reader(s) have the table open" in result.output
    assert len(result.output.strip().splitlines()) == 1
    reader.close()
    result = run("compact", f32_table, "--into-base")
    assert result.exit_code == 0, result.output
    assert "2 commits folded into the base (layer 1: 1, layer 15: 1 chunks" in result.stdout
    # history wraps at the terminal's width, which a long temporary path reaches
    history = " ".join(run("history", f32_table).stdout.split())
    assert "into the base (2 chunks rewritten)" in history
    with open_table(f32_table) as table:
        assert not table.commits
        assert table.gather(1, [1, 2])[:, 0].tolist() == [1.0, 2.0]
        assert table.gather(15, [3])[0, 0] == 3.0
    doc = json.loads(run("compact", f32_table, "--into-base", "--json").stdout)
    assert doc["commits_merged"] == 0 and doc["into_base"]
