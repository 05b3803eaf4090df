"""SIGKILL and Ctrl-C at random points of a series of commits, of an edit block and of a
compaction (a subprocess each): every commit is all or nothing, the visible commits are a prefix
of those made, ``verify --deep`` passes, and the table is writable again."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from engramctl.table import open_table, verify_table
from engramctl.table.commits import compact_table, table_history
from engramctl.table.edits.journal import journal_path
from engramctl.table.intobase import compact_into_base

from .test_compact import assert_reads, write_commits

WRITER = """
import sys, numpy as np
from engramctl.table import open_table
path, start = sys.argv[1], int(sys.argv[2])
with open_table(path, "r+") as table:
    print("ready", flush=True)
    for i in range(start, start + 400):
        with table.edit(str(i)) as block:  # one commit: rows of both layers carry i
            first = 5 * (i % 50)
            block.write_rows(1, np.arange(first, first + 5), np.full((5, 64), i, "f4"))
            block.write_rows(15, [i % 100], np.full((1, 64), i, "f4"))
"""

COMPACT = """
import sys
from engramctl.table.commits import compact_table
print("ready", flush=True)
compact_table(sys.argv[1])
"""

INTO_BASE = """
import sys
from engramctl.table.intobase import compact_into_base
print("ready", flush=True)
compact_into_base(sys.argv[1])
"""


def run_and_kill(code, args, sig, delay):
    proc = subprocess.Popen(
        [sys.executable, "-c", code, *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout.readline().strip() == "ready", proc.stderr.read()
    time.sleep(delay)
    proc.send_signal(sig)
    proc.wait(timeout=300)  # a loaded machine can take a while to unwind a commit
    return proc


def check_prefix(path):
    """Every visible commit is whole (its layers agree), and they are the first k made."""
    history = table_history(path)
    messages = [int(c.message) for c in history.commits]
    assert messages == list(range(len(messages)))  # a prefix, in order
    with open_table(path) as table:
        for i in messages[-3:]:  # the newest commits read whole
            assert (table.gather(1, [5 * (i % 50)]) == i).all() or i < messages[-1] - 49
            assert (table.gather(15, [i % 100]) == i).all() or i < messages[-1] - 99
    report = verify_table(path, deep=True)
    assert report.ok, report.problems
    return len(messages)


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT])
def test_a_kill_during_commits_leaves_a_prefix_and_a_writable_table(f32_table, sig):
    rng = np.random.default_rng(int(sig))
    made = 0
    for _ in range(3):
        run_and_kill(WRITER, [f32_table, made], sig, float(rng.uniform(0.05, 0.6)))
        made = check_prefix(f32_table)
    with open_table(f32_table, "r+") as table:  # writable again, orphans gone
        table.write_rows(1, [0], np.zeros((1, 64), np.float32))
    names = {s.name for c in table_history(f32_table).commits for s in c.layers.values()}
    assert {p.name for p in (f32_table / "edits" / "segments").iterdir()} == names


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT])
def test_a_kill_during_compaction_leaves_the_table_equal_and_compaction_resumes(f32_table, sig):
    run_and_kill(WRITER, [f32_table, 0], signal.SIGKILL, 1.0)
    made = check_prefix(f32_table)
    assert made > 2
    with open_table(f32_table) as table:
        want = {layer: table.gather(layer, np.arange(300)) for layer in (1, 15)}
    rng = np.random.default_rng(3)
    for _ in range(3):
        run_and_kill(COMPACT, [f32_table], sig, float(rng.uniform(0.0, 0.5)))
        with open_table(f32_table) as table:
            for layer in (1, 15):
                np.testing.assert_array_equal(table.gather(layer, np.arange(300)), want[layer])
        assert verify_table(f32_table, deep=True).ok
    compact_table(f32_table)  # resumes: whatever was left, one commit after
    assert len(table_history(f32_table).commits) == 1
    with open_table(f32_table) as table:
        for layer in (1, 15):
            np.testing.assert_array_equal(table.gather(layer, np.arange(300)), want[layer])


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT])
def test_a_kill_during_compaction_into_the_base_leaves_it_readable_and_equal(f32_table, sig):
    rng = np.random.default_rng(int(sig) + 7)
    for trial in range(2 if sig == signal.SIGKILL else 1):
        want = write_commits(f32_table, n_commits=3, seed=trial)
        before = len(table_history(f32_table).commits)
        run_and_kill(INTO_BASE, [f32_table], sig, float(rng.uniform(0.0, 0.4)))
        assert_reads(f32_table, want)  # a reader, before any writer finishes it
        cut_short = journal_path(f32_table).exists()
        with open_table(f32_table, "r+"):  # finishes it (journal) or drops what was staged
            pass
        assert not journal_path(f32_table).exists()
        assert len(table_history(f32_table).commits) in ((0,) if cut_short else (0, before))
        assert_reads(f32_table, want)
        report = verify_table(f32_table, deep=True)
        assert report.ok, report.problems
    compact_into_base(f32_table)  # whatever was left, folded
    assert not table_history(f32_table).commits
    assert_reads(f32_table, want)
