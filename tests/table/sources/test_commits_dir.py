"""Commits of a table at a URL in a local commits directory (``--commits-dir``), on a real S3
server (moto on loopback): writes read back equal, history / revert / compact / edit / verify /
info / lookup through it, the bucket's objects unchanged; refusals in one line."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("s3fs")
pytest.importorskip("moto")

from engramctl.errors import EngramError, UsageError  # noqa: E402
from engramctl.table.sources.table import open_table  # noqa: E402

from .conftest import BUCKET, SMALL, cli_options, remote_files, run  # noqa: E402


def tensor_bytes(path, name: str, rows: int) -> np.ndarray:
    """A tensor of a safetensors file as its raw bytes, one row of the table per row."""
    data = path.read_bytes()
    size = int.from_bytes(data[:8], "little")
    begin, end = json.loads(data[8 : 8 + size])[name]["data_offsets"]
    return np.frombuffer(data[8 + size + begin : 8 + size + end], np.uint8).reshape(rows, -1)


def s3_init(url, options, vocab, *extra) -> str:
    result = run("init-table", url, "--vocab", vocab, *SMALL, *extra, *cli_options(options))
    assert result.exit_code == 0, result.output
    return url


@pytest.fixture(scope="module")
def s3_tables(options, ds_vocab_path) -> tuple[str, str]:
    """Two tables in the bucket: one with written chunks, one lazy of another seed."""
    written = s3_init(f"s3://{BUCKET}/cd-written.zarr", options, ds_vocab_path)
    lazy = f"s3://{BUCKET}/cd-lazy.zarr"
    s3_init(lazy, options, ds_vocab_path, "--lazy", "--init-seed", "7")
    return written, lazy


@pytest.mark.parametrize("which", [0, 1], ids=["chunks", "lazy"])
def test_write_through_commits_dir_reads_back_bucket_unchanged(s3_tables, options, tmp_path, which):
    url = s3_tables[which]
    before = remote_files(url, options)
    commits = tmp_path / "commits"
    rng = np.random.default_rng(which)
    with open_table(url, storage_options=options) as base:
        layers = base.layers
        rows = {k: base.info.layers[k].rows for k in layers}
        width, dtype = base.row_width, base.meta.storage_dtype
    expect = {}
    with open_table(url, "r+", storage_options=options, commits_dir=commits) as table:
        for _ in range(2):
            for k in layers:
                ids = rng.choice(rows[k], size=40, replace=False)
                values = rng.integers(0, 120, size=(40, width)).astype(dtype)
                table.write_rows(k, ids, values)
                expect.update({(k, int(i)): v for i, v in zip(ids, values, strict=True)})
        assert len(table.commits) == 2 * len(layers)
    assert (commits / "base.json").is_file() and (commits / "edits" / "log.json").is_file()
    with (
        open_table(url, storage_options=options, commits_dir=commits) as edited,
        open_table(url, storage_options=options) as bare,
    ):
        for k in layers:
            ids = np.array(sorted(i for (layer, i) in expect if layer == k))
            got = edited.gather(k, ids)
            np.testing.assert_array_equal(got, np.stack([expect[(k, int(i))] for i in ids]))
            others = np.setdiff1d(np.arange(rows[k]), ids)[:200]
            np.testing.assert_array_equal(edited.gather(k, others), bare.gather(k, others))
        assert not bare.commits  # the bare base reads no commits
    assert remote_files(url, options) == before


def test_cli_history_revert_compact_info_verify(s3_tables, options, tmp_path, ds_vocab_path):
    url = s3_tables[0]
    before = remote_files(url, options)
    commits = tmp_path / "c"
    where = ["--commits-dir", commits, *cli_options(options)]
    with open_table(url, storage_options=options) as base:
        original = base.gather(1, np.arange(50))
    for scale in ("2", "3"):
        result = run("edit", url, "--vocab", ds_vocab_path, "--text", "the Great wall",
                     "--scale", scale, *where, "--json")  # fmt: skip
        assert result.exit_code == 0, result.output
    history = json.loads(run("history", url, *where, "--json").stdout)
    assert [c["made_by"]["kind"] for c in history["commits"]] == ["edit", "edit"]
    info = json.loads(run("info", url, *where, "--json").stdout)
    assert info["commits"]["count"] == 2 and info["commits"]["bytes"] > 0
    bare = json.loads(run("info", url, *cli_options(options), "--json").stdout)
    assert bare["commits"]["count"] == 0
    report = json.loads(run("verify", url, "--deep", *where, "--json").stdout)
    assert report["ok"], report
    lookup = run("lookup", url, "--vocab", ds_vocab_path, "--text", "the Great wall",
                 *where, "--json")  # fmt: skip
    assert lookup.exit_code == 0, lookup.output
    out = tmp_path / "e.safetensors"
    assert run("export", url, out, *where, "--json").exit_code == 0
    with open_table(url, storage_options=options, commits_dir=commits) as edited:
        rows = edited.info.layers[1].rows
        raw = edited.gather(1, np.arange(rows)).view(np.uint8).reshape(rows, -1)
    exported = tensor_bytes(out, "layer_1", rows)
    np.testing.assert_array_equal(exported, raw[:, : exported.shape[1]])
    assert run("export", url, tmp_path / "b.safetensors", *cli_options(options)).exit_code == 0
    assert not np.array_equal(tensor_bytes(tmp_path / "b.safetensors", "layer_1", rows), exported)
    result = run("compact", url, *where, "--json")
    assert result.exit_code == 0 and json.loads(result.stdout)["commits_merged"] == 2
    first = history["commits"][0]["id"]
    assert "is not a commit" in run("revert", url, "--to", first, *where).output  # compacted
    result = run("revert", url, "--to", "base", *where, "--json")
    assert result.exit_code == 0 and json.loads(result.stdout)["head"] is None
    with open_table(url, storage_options=options, commits_dir=commits) as table:
        assert not table.commits
        np.testing.assert_array_equal(table.gather(1, np.arange(50)), original)
    assert remote_files(url, options) == before


def test_refusals(s3_tables, options, tmp_path, ds_vocab_path):
    written, lazy = s3_tables
    with pytest.raises(EngramError, match=r"no writable place for commits.*--commits-dir DIR"):
        open_table(written, "r+", storage_options=options)
    result = run("revert", written, "--to", "base", *cli_options(options))
    assert result.exit_code != 0 and "--commits-dir DIR" in result.output
    assert "Traceback" not in result.output
    commits = tmp_path / "c"
    with open_table(written, "r+", storage_options=options, commits_dir=commits) as table:
        table.write_rows(1, [3], table.gather(1, [4]))
    record = json.loads((commits / "base.json").read_text())
    assert record["base"] == written
    with pytest.raises(EngramError, match=r"holds the commits of another base \(s3://"):
        open_table(lazy, storage_options=options, commits_dir=commits)
    result = run("history", lazy, "--commits-dir", commits, *cli_options(options))
    assert result.exit_code == 1 and "another base" in result.output
    assert len(result.output.strip().splitlines()) == 1
    result = run("compact", written, "--into-base", "--commits-dir", commits, *cli_options(options))
    assert result.exit_code != 0 and "compact without --into-base" in result.output
    result = run("compact", written, "--into-base", *cli_options(options))
    assert result.exit_code != 0 and "compact without --into-base" in result.output
    with pytest.raises(UsageError, match="holds no commits yet"):
        open_table(written, storage_options=options, commits_dir=tmp_path / "missing")
    assert not (tmp_path / "missing").exists()
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "notes.txt").write_text("mine")
    with pytest.raises(UsageError, match="not a commits directory"):
        open_table(written, "r+", storage_options=options, commits_dir=tmp_path / "junk")
    assert sorted(p.name for p in (tmp_path / "junk").iterdir()) == ["notes.txt"]
    with pytest.raises(UsageError, match="must be a local directory"):
        open_table(written, "r+", storage_options=options, commits_dir=f"s3://{BUCKET}/c")
    with open_table(written, "r+", storage_options=options, commits_dir=commits) as table:
        with pytest.raises(EngramError, match="only read, not rewritten"):
            table.write_chunk(1, 0, np.zeros((300, table.row_width), table.meta.storage_dtype),
                              source="test")  # fmt: skip


def test_local_table_with_its_own_dir_as_commits_dir(tmp_path, ds_vocab_path):
    """A local table given its own directory keeps its commits beside it, as without."""
    path = tmp_path / "t.zarr"
    assert run("init-table", path, "--vocab", ds_vocab_path, *SMALL, "--lazy").exit_code == 0
    with open_table(path, "r+", commits_dir=path) as table:
        table.write_rows(1, [5], table.gather(1, [6]))
    assert not (path / "base.json").exists()
    with open_table(path) as table:
        assert len(table.commits) == 1
