"""Issue 14 items 6 and 10: the table records which run wrote its rows, checkpoints pin it,
eval notices a table trained since, and a failed checkpoint leaves the table untouched."""

from __future__ import annotations

import errno
import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from typer.testing import CliRunner  # noqa: E402

from engramctl.cli import app  # noqa: E402
from tests.conftest import SAMPLE, read_jsonl  # noqa: E402
from tests.model.table_double import small_real_table  # noqa: E402

TINY = ["--depth", "2", "--width", "16", "--attn-heads", "2", "--seq-len", "16", "--batch", "2"]
TINY += ["--min-count", "1", "--device", "cpu", "--steps", "3", "--in-memory"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    docs = read_jsonl(SAMPLE / "train.jsonl")
    (root / "docs.jsonl").write_text("\n".join(json.dumps(d) for d in docs[:2]) + "\n")
    return root / "docs.jsonl"


def run(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def said(result) -> str:
    """stderr as one line (rich wraps long lines in the runner)."""
    return " ".join(result.stderr.split())


def train(corpus, table, vocab_path, out, *extra):
    return run(
        "train", "--corpus", corpus, "--table", table, "--vocab", vocab_path, "--out", out,
        *TINY, *extra,
    )  # fmt: skip


def table_facts(path):
    from engramctl.table.sources.table import open_table

    with open_table(path) as table:
        return table.runs, table.state, table.gather(1, np.arange(table.layout.layer_rows(1)))


def evaluate(model, table, *extra):
    return run(
        "eval", "--model", model, "--table", table, "--benchmark", SAMPLE / "heldout.jsonl",
        "--device", "cpu", "--json", *extra,
    )  # fmt: skip


def test_runs_are_recorded_pinned_and_guarded(tmp_path, corpus, ds_vocab, ds_vocab_path):
    table = small_real_table(tmp_path / "t.zarr", ds_vocab)
    result = train(corpus, table, ds_vocab_path, tmp_path / "m1")
    assert result.exit_code == 0, result.output
    (run1,), state, rows1 = table_facts(table)
    assert run1["checkpoint"] == str((tmp_path / "m1").resolve()) and run1["state"] == state
    assert run1["mode"] == "new" and run1["steps"] == 3
    pin = json.loads((tmp_path / "m1" / "config.json").read_text())["table_state"]
    assert pin == {"path": str(table), "run_id": run1["run_id"]}
    ok = evaluate(tmp_path / "m1", table)
    assert ok.exit_code == 0 and "warning" not in said(ok), ok.output

    # another model on the same table would silently change m1's rows: refused
    refused = train(corpus, table, ds_vocab_path, tmp_path / "m2")
    assert refused.exit_code == 1 and "--continue" in said(refused)
    assert f"run {run1['run_id']}" in said(refused) and not (tmp_path / "m2").exists()
    assert table_facts(table)[1] == state
    both = train(corpus, table, ds_vocab_path, tmp_path / "m2", "--continue", "--overwrite-rows")
    assert both.exit_code == 2

    result = train(corpus, table, ds_vocab_path, tmp_path / "m2", "--continue")
    assert result.exit_code == 0, result.output
    runs, state2, rows2 = table_facts(table)
    assert [r["mode"] for r in runs] == ["new", "continue"] and state2 != state
    assert np.any(rows1 != rows2)

    stale = evaluate(tmp_path / "m1", table)
    assert stale.exit_code == 0 and "trained again after this checkpoint" in said(stale)
    strict = evaluate(tmp_path / "m1", table, "--strict-table")
    assert strict.exit_code == 1 and "trained again" in said(strict)
    assert "warning" not in said(evaluate(tmp_path / "m2", table))

    result = train(corpus, table, ds_vocab_path, tmp_path / "m3", "--overwrite-rows")
    assert result.exit_code == 0 and table_facts(table)[0][-1]["mode"] == "overwrite-rows"


def test_rows_changed_outside_a_run_are_noticed(tmp_path, corpus, ds_vocab, ds_vocab_path):
    from engramctl.table.sources.table import open_table

    table = small_real_table(tmp_path / "t.zarr", ds_vocab)
    assert train(corpus, table, ds_vocab_path, tmp_path / "m").exit_code == 0
    with open_table(table, mode="r+") as handle:  # a library user writes rows, no run record
        handle.write_rows(1, [0], np.ones((1, 8), np.float32))
    stale = evaluate(tmp_path / "m", table)
    assert "changed after this checkpoint's run wrote them" in said(stale)


def test_full_disk_at_the_checkpoint_leaves_the_table_untouched(
    tmp_path, corpus, ds_vocab, ds_vocab_path, monkeypatch
):
    """Item 10: the checkpoint is written (temporary name) before the rows."""
    import engramctl.model.curves as curves

    table = small_real_table(tmp_path / "t.zarr", ds_vocab)
    before = table_facts(table)

    def full(*args, **kw):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(curves, "save_loss_curve", full)
    result = train(corpus, table, ds_vocab_path, tmp_path / "m")
    assert result.exit_code != 0 and not (tmp_path / "m").exists()
    after = table_facts(table)
    assert after[0] == before[0] == () and after[1] == before[1]
    np.testing.assert_array_equal(after[2], before[2])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.zarr"]


def test_interrupted_out_of_core_run_is_on_record(
    tmp_path, corpus, ds_vocab, ds_vocab_path, monkeypatch
):
    """Out of core, rows reach the table during the run: a run stopped half way is recorded as
    incomplete, so the rows it left are never taken for a checkpoint's."""
    import engramctl.model.train.loop as train_module

    table = small_real_table(tmp_path / "t.zarr", ds_vocab)
    assert train(corpus, table, ds_vocab_path, tmp_path / "m1").exit_code == 0
    calls = {"n": 0}
    real = train_module.train_step

    def stop_at_third(*args, **kw):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*args, **kw)

    monkeypatch.setattr(train_module, "train_step", stop_at_third)
    result = train(
        corpus, table, ds_vocab_path, tmp_path / "m2", "--continue", "--out-of-core",
        "--buffer-rows", "4",
    )  # fmt: skip
    assert result.exit_code != 0 and not (tmp_path / "m2").exists()
    runs, _, _ = table_facts(table)
    assert len(runs) == 2 and runs[-1]["incomplete"] is True
    stale = evaluate(tmp_path / "m1", table)
    assert "trained again after this checkpoint" in said(stale), stale.output
