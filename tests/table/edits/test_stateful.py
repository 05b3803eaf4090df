"""A hypothesis state machine (as icechunk's ``test_stateful_repo_ops.py``): any sequence of
writes, edit blocks (committed or aborted), reverts, compactions and reopenings reads equal to
a plain dict-of-rows model of it; a reader opened earlier keeps reading its snapshot."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from engramctl.table import open_table, verify_table
from engramctl.table.commits import compact_table, revert_table, table_history
from tests.conftest import make_layout
from tests.table.conftest import make

LAYOUT = make_layout((40, 40), layers=(1, 15), vocab_size=100)
IDS = st.lists(st.integers(0, 150), min_size=1, max_size=12)
LAYER = st.sampled_from([1, 15])


class CommitsMachine(RuleBasedStateMachine):
    @initialize()
    def create(self):
        self.dir = Path(tempfile.mkdtemp(prefix="engram-stateful-"))
        self.path = make(self.dir / "t.zarr", LAYOUT, dim=8, chunk_rows=50, lazy=True).path
        with open_table(self.path) as table:
            self.rows = {layer: table.meta.layer(layer).rows for layer in table.layers}
            self.base = {layer: table.gather(layer, np.arange(n)) for layer, n in self.rows.items()}
        self.states: list[dict] = [{}]  # state after each visible commit; [0] = the base
        self.ids: list[str | None] = [None]
        self.counter = 0
        self.reader = None  # (an open table, the state it opened)

    def teardown(self):
        if getattr(self, "reader", None) is not None:
            self.reader[0].close()
        if hasattr(self, "dir"):
            try:
                report = verify_table(self.path, deep=True)
                assert report.ok, report.problems
            finally:
                shutil.rmtree(self.dir, ignore_errors=True)

    def _values(self, n):
        self.counter += 1
        return np.arange(n * 8, dtype=np.float32).reshape(n, 8) + self.counter * 1000

    def _after(self, writes):
        state = dict(self.states[-1])
        for layer, ids, values in writes:
            for i, v in zip(ids, values, strict=True):
                state[(layer, i)] = v
        return state

    def _note_commit(self, state):
        self.states.append(state)
        self.ids.append(table_history(self.path).commits[-1].id)

    @rule(layer=LAYER, ids=IDS)
    def write(self, layer, ids):
        ids = [i % self.rows[layer] for i in ids]
        values = self._values(len(ids))
        with open_table(self.path, "r+") as table:
            table.write_rows(layer, ids, values)
        self._note_commit(self._after([(layer, ids, values)]))

    @rule(writes=st.lists(st.tuples(LAYER, IDS), min_size=1, max_size=3), abort=st.booleans())
    def edit_block(self, writes, abort):
        done = []
        with open_table(self.path, "r+") as table:
            try:
                with table.edit("block") as block:
                    for layer, ids in writes:
                        ids = [i % self.rows[layer] for i in ids]
                        values = self._values(len(ids))
                        block.write_rows(layer, ids, values)
                        done.append((layer, ids, values))
                    if abort:
                        raise ValueError("abort")
            except ValueError:
                return
        self._note_commit(self._after(done))

    @precondition(lambda self: len(self.states) > 1)
    @rule(data=st.data())
    def revert(self, data):
        keep = data.draw(st.integers(0, len(self.states) - 1))
        revert_table(self.path, self.ids[keep] or "base")
        del self.states[keep + 1 :], self.ids[keep + 1 :]

    @rule()
    def compact(self):
        compact_table(self.path)
        if len(self.states) > 1:
            self.states, self.ids = [self.states[0], self.states[-1]], [None, None]
            self.ids[1] = table_history(self.path).commits[-1].id

    @rule()
    def open_reader(self):
        if self.reader is not None:
            self.reader[0].close()
        self.reader = (open_table(self.path), self.states[-1])

    def _check(self, table, state):
        for layer, n in self.rows.items():
            want = self.base[layer].copy()
            for (lay, i), v in state.items():
                if lay == layer:
                    want[i] = v
            got = table.gather(layer, np.arange(n))
            np.testing.assert_array_equal(got, want)
            np.testing.assert_array_equal(table.rows(layer, 0, n), want)

    @invariant()
    def reads_equal_the_model(self):
        if not hasattr(self, "path"):
            return
        with open_table(self.path) as table:
            self._check(table, self.states[-1])
        if self.reader is not None:
            self._check(*self.reader)


CommitsMachine.TestCase.settings = settings(max_examples=12, stateful_step_count=10, deadline=None)
TestCommits = CommitsMachine.TestCase
