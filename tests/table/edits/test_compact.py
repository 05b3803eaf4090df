"""Compaction: streaming ``compact`` (one segment per layer, written by id range in bounded
memory, bit for bit what the in-RAM merge writes) and ``compact --into-base`` (the commits
folded into the base's chunks, each chunk rewritten once, through a journal)."""

from __future__ import annotations

import numpy as np
import pytest

from engramctl.errors import EngramError
from engramctl.table import intobase, open_table, verify_table
from engramctl.table.commits import compact_table, revert_table, table_history
from engramctl.table.core.blocksums import BlockSums, add_block_checksums
from engramctl.table.edits import segment as segment_module
from engramctl.table.edits.journal import finish_journal
from engramctl.table.edits.log import segments_path
from engramctl.table.edits.segment import write_segment
from engramctl.table.edits.session import make_commit
from engramctl.table.formats.checkpoint_export import export_checkpoint
from engramctl.table.formats.checkpoint_import import import_checkpoint
from engramctl.table.intobase import compact_into_base

from ..ckpt_util import small_layout as ckpt_layout
from ..ckpt_util import write_checkpoint


def write_commits(path, n_commits=5, seed=0):
    """Commits of random, overlapping rows in both layers; returns the rows as read after."""
    rng = np.random.default_rng(seed)
    with open_table(path, "r+") as table:
        for i in range(n_commits):
            with table.edit(f"c{i}") as block:
                for layer in table.layers:
                    n = table.meta.layer(layer).rows
                    ids = rng.choice(n, size=min(n // 2, int(rng.integers(20, 300))), replace=False)
                    values = rng.standard_normal((ids.size, table.dim)).astype(np.float32)
                    block.write_rows(layer, ids, values)
    with open_table(path) as table:
        return {k: table.gather(k, np.arange(table.meta.layer(k).rows)) for k in table.layers}


def test_streaming_compaction_writes_what_the_in_ram_merge_writes(fp8_table, tmp_path, monkeypatch):
    want = write_commits(fp8_table)
    reference = {}  # the in-RAM merge: every written id's newest row at once, one write_segment
    with open_table(fp8_table) as table:
        for layer in table.layers:
            ids = np.array(table.overlay.written_ids(layer))
            record = write_segment(tmp_path / f"ref-{layer}", layer, ids, table.gather(layer, ids))
            reference[layer] = (tmp_path / f"ref-{layer}").read_bytes(), record
    monkeypatch.setattr(segment_module, "WRITE_BLOCK_BYTES", 1000)  # many blocks of a few rows
    seen = []
    result = compact_table(fp8_table, progress=lambda done, total: seen.append((done, total)))
    assert result.commits_merged == 5
    (commit,) = table_history(fp8_table).commits
    for layer, (data, record) in reference.items():
        got = commit.layers[layer]
        assert (segments_path(fp8_table) / got.name).read_bytes() == data
        assert (got.rows, got.size, got.crc32) == (record.rows, record.size, record.crc32)
    total = sum(r.rows for _, r in reference.values())
    assert len(seen) > 10 and seen[-1] == (total, total)
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)
    with open_table(fp8_table) as table:
        for layer, rows in want.items():
            np.testing.assert_array_equal(table.gather(layer, np.arange(len(rows))), rows)
    assert verify_table(fp8_table, deep=True).ok


def test_streaming_compaction_carries_the_side_columns_with_nan_where_absent(f32_table):
    with open_table(f32_table, "r+") as table:
        edit_log = table.edit_log
        for i, ids in enumerate(([1, 5, 9], [5, 7])):
            ids = np.array(ids)
            rows = np.full((ids.size, 64), i, np.float32)
            side = {"m": np.full((ids.size, 3), 10 * i, np.float32) + ids[:, None]}
            if i == 0:
                side["only_old"] = np.zeros((ids.size, 1), np.int8)
            else:
                side["only_new"] = np.ones((ids.size, 2), np.float32)
            edit_log, _ = make_commit(
                table.path, edit_log, {1: (ids, rows)}, made_by={"kind": "test"}, side={1: side}
            )
    with open_table(f32_table) as table:
        want = table.side_rows(1, "only_new", np.array([1, 5, 7, 9]))
    compact_table(f32_table)
    with open_table(f32_table) as table:
        (segment,) = table.overlay.segments[1]
        # only_old: an integer column some segment lacks has no NaN to say "absent"
        assert set(segment.columns) == {"ids", "rows", "m", "only_new"}
        assert segment.ids.tolist() == [1, 5, 7, 9]
        assert segment.column("m")[:, 0].tolist() == [1, 15, 17, 9]  # newest of each id
        assert segment.rows[:, 0].tolist() == [0, 1, 1, 0]
        only_new = segment.column("only_new")
        assert np.isnan(only_new[[0, 3]]).all() and (only_new[[1, 2]] == 1).all()
        np.testing.assert_array_equal(table.side_rows(1, "only_new", np.array([1, 5, 7, 9])), want)


# ------------------------------------------------------------------- compact --into-base
def touched_chunks(path):
    with open_table(path) as table:
        per = table.meta.chunk_rows
        return {
            k: np.unique(np.asarray(table.overlay.written_ids(k)) // per).size
            for k in table.overlay.segments
        }


def read_all(path):
    with open_table(path) as table:
        return {k: table.gather(k, np.arange(table.meta.layer(k).rows)) for k in table.layers}


def assert_reads(path, want):
    got = read_all(path)
    for layer, rows in want.items():
        np.testing.assert_array_equal(got[layer], rows)


@pytest.mark.parametrize("kind", ["fp8_table", "f32_table"])
def test_into_base_rewrites_each_touched_chunk_once_and_drops_the_commits(kind, request):
    path = request.getfixturevalue(kind)
    add_block_checksums(path)
    want = write_commits(path)
    chunks = touched_chunks(path)
    result = compact_into_base(path)
    assert result.commits_merged == 5 and result.chunks == chunks
    assert_reads(path, want)
    history = table_history(path)
    assert not history.commits and history.events[-1]["kind"] == "compact-into-base"
    assert not list(segments_path(path).iterdir())  # no commit left, nothing pinned
    assert not (path / "edits" / "journal.json").exists()
    report = verify_table(path, deep=True)
    assert report.ok, report.problems
    with open_table(path) as table:  # the new chunks' block records are current
        for layer in table.layers:
            sums = BlockSums.open(table.store, table.meta, layer)
            for chunk, entry in table.manifest[layer].items():
                if entry[2] == "compact":
                    assert sums.for_chunk(chunk, entry[0]) is not None
    assert compact_into_base(path).commits_merged == 0  # nothing left to do


@pytest.mark.parametrize("stop", ["before", "renames", "manifest", "log"])
def test_into_base_cut_short_reads_equal_and_the_next_writer_finishes(f32_table, stop, monkeypatch):
    want = write_commits(f32_table)
    if stop == "before":  # staged, not decided: rolled back
        monkeypatch.setattr(intobase, "write_journal", crash)
    else:
        monkeypatch.setattr(
            intobase, "finish_journal", lambda store: finish_journal(store, stop_after=stop)
        )
    try:
        compact_into_base(f32_table)
    except Crash:
        pass
    monkeypatch.undo()
    assert_reads(f32_table, want)  # a reader of the half-done table: equal, no error
    if stop != "before":  # verify names what finishes it
        report = verify_table(f32_table)
        assert any("compact --into-base" in p for p in report.problems), report.problems
    if stop == "renames":  # a revert finishes it first, then drops what is left (nothing)
        assert revert_table(f32_table, "base").dropped == ()
    with open_table(f32_table, "r+"):  # the next writer finishes (or rolls back) it
        pass
    assert not (f32_table / "edits" / "journal.json").exists()
    assert not list((f32_table / "edits" / "staging").iterdir())
    assert len(table_history(f32_table).commits) == (5 if stop == "before" else 0)
    assert_reads(f32_table, want)
    report = verify_table(f32_table, deep=True)
    assert report.ok, report.problems


class Crash(Exception):
    pass


def crash(*args, **kwargs):
    raise Crash


def test_into_base_is_refused_with_readers_a_writer_or_a_linked_base(
    f32_table, tmp_path, tiny_vocab
):
    write_commits(f32_table, n_commits=1)
    reader = open_table(f32_table)
    with pytest.raises(EngramError, match=r"1 reader\(s\) have the table open.*engramctl compact"):
        compact_into_base(f32_table)
    reader.close()
    with open_table(f32_table, "r+"):
        with pytest.raises(EngramError, match="writ"):
            compact_into_base(f32_table)
    assert len(table_history(f32_table).commits) == 1
    write_checkpoint(tmp_path / "ckpt", ckpt_layout(tiny_vocab), dim=64)
    linked = tmp_path / "linked.zarr"
    import_checkpoint(tmp_path / "ckpt", linked, vocab=tiny_vocab, link=True, chunk_rows=11)
    with pytest.raises(EngramError, match="linked to a checkpoint.*engramctl compact"):
        compact_into_base(linked)


def test_deepseek_export_of_commits_equals_the_compacted_table_and_gather(tmp_path, tiny_vocab):
    layout = ckpt_layout(tiny_vocab)
    write_checkpoint(tmp_path / "ckpt", layout, dim=64)
    path = tmp_path / "t.zarr"
    import_checkpoint(tmp_path / "ckpt", path, vocab=tiny_vocab, chunk_rows=11)
    want = write_commits(path, n_commits=3)
    export_checkpoint(path, tmp_path / "with-commits")
    import_checkpoint(tmp_path / "with-commits", tmp_path / "back.zarr", vocab=tiny_vocab)
    assert_reads(tmp_path / "back.zarr", want)  # the export holds gather's rows, bit for bit
    compact_into_base(path)
    export_checkpoint(path, tmp_path / "compacted")
    shards = sorted(p.name for p in (tmp_path / "compacted").glob("*.safetensors"))
    assert shards == sorted(p.name for p in (tmp_path / "with-commits").glob("*.safetensors"))
    for name in shards:
        a, b = (tmp_path / d / name for d in ("with-commits", "compacted"))
        assert a.read_bytes() == b.read_bytes()
