"""Compaction: streaming ``compact`` (one segment per layer, written by id range in bounded
memory, bit for bit what the in-RAM merge writes) and ``compact --into-base`` (the commits
folded into the base's chunks, each chunk rewritten once, through a journal)."""

from __future__ import annotations

import numpy as np

from engramctl.table import open_table, verify_table
from engramctl.table.commits import compact_table, table_history
from engramctl.table.edits import segment as segment_module
from engramctl.table.edits.log import segments_path
from engramctl.table.edits.segment import write_segment


def write_commits(path, n_commits=5, seed=0):
    """Commits of random, overlapping rows in both layers; returns the rows as read after."""
    rng = np.random.default_rng(seed)
    with open_table(path, "r+") as table:
        for i in range(n_commits):
            with table.edit(f"c{i}") as block:
                for layer in table.layers:
                    n = table.meta.layer(layer).rows
                    ids = rng.choice(n, size=int(rng.integers(20, 300)), replace=False)
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
