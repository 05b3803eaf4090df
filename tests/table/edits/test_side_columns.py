"""Side columns of commits (a trainer's moments and master copy): written with rows, read back as
the newest commit holding each row has them, absent (NaN) after a plain write, kept by compact."""

from __future__ import annotations

import numpy as np
import pytest

from engramctl.errors import EngramError
from engramctl.table import open_table
from engramctl.table.commits import compact_table, revert_table, table_history


def floats(value, n, width):
    return np.full((n, width), value, np.float32)


def test_side_columns_follow_the_newest_commit_of_each_row(f32_table):
    ids = np.array([3, 9, 40])
    with open_table(f32_table, mode="r+") as table:
        assert table.side_rows(1, "adam", ids) is None  # no commit carries it yet
        table.write_rows(1, ids, floats(1, 3, 64), side={"adam": floats(7, 3, 5)})
        table.write_rows(1, [9], floats(2, 1, 64))  # a plain write: row 9 has no moments now
        table.write_rows(1, [40, 41], floats(3, 2, 64), side={"adam": floats(8, 2, 5)})
    with open_table(f32_table) as table:
        got = table.side_rows(1, "adam", np.array([3, 9, 40, 41, 100]))
        assert got.shape == (5, 5) and got.dtype == np.float32
        assert (got[0] == 7).all() and np.isnan(got[1]).all()
        assert (got[2] == 8).all() and (got[3] == 8).all() and np.isnan(got[4]).all()
        assert table.side_rows(1, "master", ids) is None
        assert (table.gather(1, [3, 9, 40])[:, 0] == [1, 2, 3]).all()
    before = table_history(f32_table)
    assert len(before.commits) == 3
    compact_table(f32_table)
    with open_table(f32_table) as table:
        again = table.side_rows(1, "adam", np.array([3, 9, 40, 41, 100]))
        np.testing.assert_array_equal(again, got)  # NaN where NaN, values where values
        assert len(table.commits) == 1


def test_staged_side_columns_read_before_the_commit_and_last_write_wins(f32_table):
    with open_table(f32_table, mode="r+") as table:
        table.write_rows(1, [5, 5, 6], floats(1, 3, 64), side={"m": np.array([1.0, 2.0, 3.0])},
                         flush=False)  # fmt: skip
        table.write_rows(1, [6], floats(1, 1, 64), flush=False)
        staged = table.side_rows(1, "m", np.array([5, 6, 7]))
        assert staged[0, 0] == 2.0 and np.isnan(staged[1:]).all()
    with open_table(f32_table) as table:
        committed = table.side_rows(1, "m", np.array([5, 6, 7]))
        np.testing.assert_array_equal(committed, staged)
        assert len(table.commits) == 1  # one commit for the two staged writes


def test_revert_drops_side_columns_with_their_commit(f32_table):
    with open_table(f32_table, mode="r+") as table:
        table.write_rows(1, [1], floats(1, 1, 64), side={"adam": floats(1, 1, 3)})
        first = table.commits[-1].id
        table.write_rows(1, [1], floats(2, 1, 64), side={"adam": floats(2, 1, 3)})
    revert_table(f32_table, first)
    with open_table(f32_table) as table:
        assert (table.side_rows(1, "adam", np.array([1])) == 1).all()


@pytest.mark.parametrize(
    "side",
    [{"adam": np.zeros((2, 3), np.int32)}, {"adam": np.zeros((3, 3))}, {"rows": np.zeros(2)}],
)
def test_bad_side_columns_are_refused_and_nothing_is_committed(f32_table, side):
    with open_table(f32_table, mode="r+") as table:
        with pytest.raises(EngramError, match="side column"):
            table.write_rows(1, [1, 2], floats(1, 2, 64), side=side)
        assert not table.commits
