"""Commits over a base: write_rows and edit blocks, history, revert, compact, snapshots and pins,
verify of segments, and the bad input of issue 21."""

from __future__ import annotations

import errno
import os

import numpy as np
import pytest

from engramctl.errors import EngramError
from engramctl.table import open_table, verify_table
from engramctl.table.commits import compact_table, revert_table, table_history
from engramctl.table.edits import segment as segment_module
from engramctl.table.edits.log import live_pins, segments_path
from engramctl.table.edits.overlay import build_index, lookup

ROWS = 2056  # layer 1 of small_layout


def rows(value, n=1, dim=64):
    return np.full((n, dim), value, np.float32)


def read_all(path, layer=1):
    with open_table(path) as table:
        return table.gather(layer, np.arange(table.meta.layer(layer).rows))


# ------------------------------------------------------------------------ the index itself
def test_index_keeps_the_newest_row_of_each_id():
    old, new = np.array([1, 5, 9]), np.array([5, 7])
    index = build_index([old, new])
    assert index.ids.tolist() == [1, 5, 7, 9]
    assert index.segment.tolist() == [0, 1, 1, 0] and index.slot.tolist() == [0, 0, 1, 2]
    hits, at = lookup(index, np.array([9, 2, 5, 5]))
    assert hits.tolist() == [0, 2, 3] and at.tolist() == [3, 1, 1]


# -------------------------------------------------------------------------- write and read
def test_write_rows_is_one_commit_and_gather_rows_read_chunk_agree(fp8_table):
    base = read_all(fp8_table)
    with open_table(fp8_table, "r+") as table:
        table.write_rows(1, [5, 301, 5], np.stack([rows(1)[0], rows(2)[0], rows(3)[0]]))
        table.write_rows(1, [301], rows(4))
    with open_table(fp8_table) as table:
        assert len(table.commits) == 2 and table.info.commits == 2
        got = table.gather(1, np.arange(ROWS))
        assert (table.rows(1, 0, ROWS) == got).all()
        assert (table.read_chunk(1, 1)[1] == got[301]).all()
    changed = np.flatnonzero((got != base).any(axis=1))
    assert changed.tolist() == [5, 301]
    assert (got[5] == got[5]).all() and not (got[5] == got[301]).all()  # 3 vs 4
    assert verify_table(fp8_table, deep=True).ok


def test_an_edit_block_is_one_commit_and_an_error_commits_nothing(f32_table):
    with open_table(f32_table, "r+") as table:
        with table.edit("two layers") as block:
            block.write_rows(1, [1], rows(1.0))
            block.write_rows(15, [2], rows(2.0))
            assert block.gather(1, [1])[0, 0] == 1.0  # the block reads its own rows
        with pytest.raises(KeyboardInterrupt), table.edit() as block:
            block.write_rows(1, [3], rows(3.0))
            raise KeyboardInterrupt
        assert table.staged_rows == 0
    history = table_history(f32_table)
    assert len(history.commits) == 1 and history.commits[0].message == "two layers"
    assert set(history.commits[0].layers) == {1, 15}
    assert read_all(f32_table)[3, 0] != 3.0


def test_flush_false_stages_until_flush_and_an_exception_drops_the_staged_rows(f32_table):
    with open_table(f32_table, "r+") as table:
        table.write_rows(1, [7], rows(7.0), flush=False)
        assert table.gather(1, [7])[0, 0] == 7.0 and not table.commits
        with open_table(f32_table) as reader:
            assert reader.gather(1, [7])[0, 0] != 7.0
        table.flush()
        assert len(table.commits) == 1
    with pytest.raises(RuntimeError), open_table(f32_table, "r+") as table:
        table.write_rows(1, [8], rows(8.0), flush=False)
        raise RuntimeError("the caller failed mid-way")
    assert read_all(f32_table)[8, 0] != 8.0 and len(table_history(f32_table).commits) == 1


# ------------------------------------------------------------- history, revert, compaction
def test_revert_and_compact_read_as_they_should(fp8_table):
    states = [read_all(fp8_table)]
    with open_table(fp8_table, "r+") as table:
        for i in range(4):
            table.write_rows(1, np.arange(i, 400, 7), rows(float(i + 1), len(range(i, 400, 7))))
            states.append(table.gather(1, np.arange(ROWS)).copy())
    ids = [c.id for c in table_history(fp8_table).commits]
    result = revert_table(fp8_table, ids[1][:6])  # a unique prefix is enough
    assert result.dropped == tuple(ids[2:])
    assert (read_all(fp8_table) == states[2]).all()
    compacted = compact_table(fp8_table)
    assert compacted.commits_merged == 2 and compacted.removed_segments >= 2
    assert (read_all(fp8_table) == states[2]).all()
    assert len(table_history(fp8_table).commits) == 1
    assert sorted(p.name for p in segments_path(fp8_table).iterdir()) == sorted(
        s.name for s in table_history(fp8_table).commits[0].layers.values()
    )
    revert_table(fp8_table, "base")
    assert (read_all(fp8_table) == states[0]).all()
    assert verify_table(fp8_table, deep=True).ok


def test_a_reader_keeps_its_snapshot_across_commits_and_a_compaction(f32_table):
    with open_table(f32_table, "r+") as table:
        table.write_rows(1, [1, 2], rows(1.0, 2))
    reader = open_table(f32_table)
    snapshot = reader.gather(1, np.arange(ROWS)).copy()
    assert live_pins(f32_table)  # the reader's pin
    with open_table(f32_table, "r+") as table:
        table.write_rows(1, [2, 3], rows(2.0, 2))
    compact_table(f32_table)
    reader.close()  # unmapped: a read maps the pinned segments again
    assert (reader.gather(1, np.arange(ROWS)) == snapshot).all()
    assert (read_all(f32_table)[[1, 2, 3], 0] == [1.0, 2.0, 2.0]).all()
    del reader
    with open_table(f32_table, "r+"):  # the orphaned, no longer pinned segments go
        pass
    assert not live_pins(f32_table)


def test_revert_is_refused_while_a_writer_holds_the_table(f32_table):
    with open_table(f32_table, "r+") as table:
        table.write_rows(1, [1], rows(1.0))
        with pytest.raises(EngramError, match="is being written by pid"):
            revert_table(f32_table, "base")


# ------------------------------------------------------------------------------ bad input
def test_bad_input_is_one_clear_error(f32_table):
    with open_table(f32_table) as table, pytest.raises(EngramError, match="read-only"):
        table.write_rows(1, [0], rows(0.0))
    with pytest.raises(EngramError, match="not a commit of this table.*--to base"):
        revert_table(f32_table, "0123abcd")
    with open_table(f32_table, "r+") as table:
        with pytest.raises(EngramError, match="row id 2056"):
            table.write_rows(1, [2056], rows(0.0))
        with pytest.raises(EngramError, match="values must be"):
            table.write_rows(1, [0], np.zeros((1, 63), np.float32))
    assert not table_history(f32_table).commits


def test_a_full_disk_mid_commit_leaves_the_previous_state(f32_table, monkeypatch):
    with open_table(f32_table, "r+") as table:
        table.write_rows(1, [1], rows(1.0))
    before = read_all(f32_table)
    real = segment_module.write_segment
    calls = []

    def full_disk(path, *args, **kw):
        calls.append(path)
        if len(calls) == 2:  # the second layer's segment
            path.write_bytes(b"partial")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(path, *args, **kw)

    monkeypatch.setattr("engramctl.table.edits.session.write_segment", full_disk)
    with open_table(f32_table, "r+") as table:
        with pytest.raises(EngramError, match="the disk is full; nothing was committed"):
            with table.edit() as block:
                block.write_rows(1, [5], rows(5.0))
                block.write_rows(15, [5], rows(5.0))
    monkeypatch.undo()
    assert (read_all(f32_table) == before).all() and len(table_history(f32_table).commits) == 1
    assert len(list(segments_path(f32_table).iterdir())) == 1  # what it wrote is gone
    assert verify_table(f32_table, deep=True).ok


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete"])
def test_a_damaged_segment_is_named_with_what_to_do(f32_table, damage):
    with open_table(f32_table, "r+") as table:
        table.write_rows(1, [1], rows(1.0))
        table.write_rows(1, [2], rows(2.0))
    first, second = table_history(f32_table).commits
    path = segments_path(f32_table) / second.layers[1].name
    data = bytearray(path.read_bytes())
    if damage == "truncate":
        path.write_bytes(bytes(data[:-10]))
    elif damage == "flip":
        data[-1] ^= 0xFF
        path.write_bytes(bytes(data))
    else:
        path.unlink()
    report = verify_table(f32_table, deep=True)
    assert not report.ok and second.id in report.problems[0]
    assert f"revert --to {first.id}" in report.problems[0]
    if damage != "flip":  # a cheap check sees size and presence
        assert not verify_table(f32_table).ok
    with pytest.raises(EngramError, match=f"{second.id}.*(damaged|missing).*revert --to"):
        with open_table(f32_table) as table:
            table.gather(1, [2])
    revert_table(f32_table, first.id)  # the way out: drop the damaged commit
    assert verify_table(f32_table, deep=True).ok
    assert read_all(f32_table)[1, 0] == 1.0
