"""Run records live in the commits log: a training flush makes its rows and its record visible
by one rename; old tables' records in zarr.json are still read; compactions keep a record's
state matching the (unchanged) rows; history shows them."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
from typer.testing import CliRunner

from engramctl.cli import app
from engramctl.table import open_table
from engramctl.table.commits import compact_table, table_history
from engramctl.table.core.manifest import read_group, write_group_attrs
from engramctl.table.edits import log as log_module
from engramctl.table.edits.log import read_log
from engramctl.table.intobase import compact_into_base

RUN = {"run_id": "r1", "checkpoint": "/ck", "steps": 10, "mode": "new"}


def test_a_record_and_its_rows_are_one_rename_of_the_log(f32_table, monkeypatch):
    renames = []
    real = log_module.write_log
    monkeypatch.setattr(log_module, "write_log", lambda *a: (renames.append(1), real(*a)))
    monkeypatch.setattr("engramctl.table.edits.session.write_log", log_module.write_log)
    monkeypatch.setattr("engramctl.table.sources.table.write_log", log_module.write_log)
    with open_table(f32_table, "r+") as table:
        table.record_run({**RUN, "incomplete": True})  # nothing staged: written at flush
        table.flush()
        assert len(renames) == 1
        table.write_rows(1, [4, 5], np.ones((2, 64), np.float32), flush=False)
        record = table.record_run({**RUN, "checkpoint_step": 10})
        assert len(renames) == 2  # the rows' commit and the record: one rename
        table.flush()
        assert len(renames) == 2 and record["state"] == table.state
    meta, _ = read_group(f32_table)
    assert meta.runs == ()  # zarr.json is not written
    edit_log = read_log(open_table(f32_table).store)
    assert [r["run_id"] for r in edit_log.runs] == ["r1"] and "incomplete" not in edit_log.runs[0]
    (commit,) = edit_log.commits
    assert commit.made_by == {"kind": "train", "run_id": "r1", "mode": "new", "steps": 10,
                              "checkpoint": "/ck"}  # fmt: skip
    with open_table(f32_table) as table:
        assert table.runs[-1]["state"] == table.state


def test_old_records_in_zarr_json_are_read_and_a_newer_record_shadows_them(f32_table):
    meta, manifest = read_group(f32_table)
    old = ({"run_id": "r0", "state": "x"}, {"run_id": "r1", "state": "y"})
    write_group_attrs(f32_table, dataclasses.replace(meta, runs=old), manifest)
    with open_table(f32_table, "r+") as table:
        assert [r["run_id"] for r in table.runs] == ["r0", "r1"]
        table.write_rows(1, [1], np.ones((1, 64), np.float32), flush=False)
        table.record_run(RUN)
    with open_table(f32_table) as table:
        assert [(r["run_id"], r["state"] == table.state) for r in table.runs] == [
            ("r0", False),
            ("r1", True),
        ]


def test_compactions_keep_a_record_matching_and_history_shows_it(f32_table):
    with open_table(f32_table, "r+") as table:
        for step in (5, 10):
            table.write_rows(1, [step], np.full((1, 64), step, np.float32), flush=False)
            table.record_run({**RUN, "checkpoint_step": step})
    compact_table(f32_table)
    with open_table(f32_table) as table:
        assert len(table.commits) == 1 and table.runs[-1]["state"] == table.state
    compact_into_base(f32_table)
    with open_table(f32_table) as table:
        assert not table.commits and table.runs[-1]["state"] == table.state
    assert table_history(f32_table).runs[-1]["checkpoint_step"] == 10
    result = CliRunner().invoke(app, ["history", str(f32_table)])
    assert "run r1: new, step 10 of 10, checkpoint /ck" in result.stdout
    doc = json.loads(CliRunner().invoke(app, ["history", str(f32_table), "--json"]).stdout)
    assert doc["runs"][-1]["run_id"] == "r1"
