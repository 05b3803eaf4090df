"""Resumable training: ``train --checkpoint-every N`` then Ctrl-C, ``train --resume`` ends
bit-identical to a run that never stopped (weights, history, every table row, the moments and
master copies the table's commits carry).
"""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from typer.testing import CliRunner  # noqa: E402

from engramctl.cli import app  # noqa: E402
from engramctl.model.train import loop as train_module  # noqa: E402
from tests.model.table_double import small_real_table  # noqa: E402
from tests.model.train import test_adapt as adapt  # noqa: E402

# The tiny model options and the adaptation corpus (docs/other/heldout), as in test_adapt.py.
TINY, corpus = adapt.TINY, adapt.corpus
STEPS = 7


def run(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def all_rows(path) -> dict:
    from engramctl.table.sources.table import open_table

    with open_table(path) as table:
        out = {}
        for layer in table.layout.layers:
            ids = np.arange(table.layout.layer_rows(layer))
            out[layer] = table.gather(layer, ids)
            for name in ("adam", "master"):  # side columns of out-of-core training commits
                out[(layer, name)] = table.side_rows(layer, name, ids)
        return out


def train_args(corpus, table, vocab_path, out, *extra, corpus_file="docs.jsonl"):
    engram = ["--table", table, "--vocab", vocab_path] if table is not None else ["--no-engram"]
    return ["train", "--corpus", corpus / corpus_file, "--heldout", corpus / "heldout.jsonl",
            *engram, "--out", out, "--steps", STEPS, *TINY, *extra]  # fmt: skip


def error_lines(stderr: str) -> list[str]:
    """stderr without the plain progress lines drawn off a terminal every few seconds."""
    return [line for line in stderr.strip().splitlines() if not line.startswith("train ")]


def interrupted_at(monkeypatch, step: int):
    """Ctrl-C in the training step ``step`` (1-based) of this process."""
    real, calls = train_module.train_step, []

    def step_or_interrupt(*args, **kwargs):
        calls.append(1)
        if len(calls) == step:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(train_module, "train_step", step_or_interrupt)


def assert_same_run(a, b, tables=()):
    assert (a / "model.safetensors").read_bytes() == (b / "model.safetensors").read_bytes()
    assert (a / "history.json").read_bytes() == (b / "history.json").read_bytes()
    history_a = json.loads((a / "history.json").read_text())
    assert len(history_a["train_loss"]) == STEPS
    for x, y in tables:
        rows_x, rows_y = all_rows(x), all_rows(y)
        for key in rows_x:
            np.testing.assert_array_equal(rows_x[key], rows_y[key])
    assert not (b / "resume").exists()  # a finished run keeps no training state


def straight_and_resumed(tmp_path, corpus, vocab_path, make_table, monkeypatch, *extra,
                         stop=5, every=2, early=None, **kw):  # fmt: skip
    """A straight run and one interrupted at step ``stop`` then resumed; their paths."""
    ta, tb = (make_table(tmp_path / n) if make_table else None for n in ("a.zarr", "b.zarr"))
    a, b = tmp_path / "a", tmp_path / "b"
    done = run(*train_args(corpus, ta, vocab_path, a, *extra, **kw))
    assert done.exit_code == 0, done.output
    interrupted_at(monkeypatch, stop)
    cut = run(*train_args(corpus, tb, vocab_path, b, *extra, "--checkpoint-every", every, **kw))
    monkeypatch.undo()
    assert cut.exit_code == 130, cut.output
    last = json.loads((b / "resume" / "state.json").read_text())["step"]
    if early is None:
        assert last == (stop - 1) // every * every
    else:  # an out-of-core run also commits when its write buffer is full
        assert last >= early
    assert f"checkpoint of step {last}" in cut.stderr and f"--resume {b}" in cut.stderr
    assert len(error_lines(cut.stderr)) == 1
    meta = json.loads((b / "config.json").read_text())
    assert meta["result"]["steps"] == last
    resumed = run("train", "--resume", b)
    assert resumed.exit_code == 0, resumed.output
    assert f"resumed at step {last}" in resumed.output
    results = [json.loads((p / "config.json").read_text())["result"] for p in (a, b)]
    assert results[0]["rows_written"] == results[1]["rows_written"]  # counted across the resume
    return a, b, ta, tb


def test_in_memory_resume_is_bit_identical(tmp_path, corpus, ds_vocab, ds_vocab_path, monkeypatch):
    a, b, ta, tb = straight_and_resumed(
        tmp_path, corpus, ds_vocab_path, lambda p: small_real_table(p, ds_vocab), monkeypatch,
        "--in-memory",
    )  # fmt: skip
    assert_same_run(a, b, [(ta, tb)])
    # the checkpoint pins the table: eval finds it unchanged
    check = run("eval", "--model", b, "--table", tb, "--benchmark", corpus / "heldout.jsonl",
                "--strict-table", "--device", "cpu")  # fmt: skip
    assert check.exit_code == 0, check.output


def test_rounded_table_resume_is_bit_identical(
    tmp_path, corpus, ds_vocab, ds_vocab_path, monkeypatch
):
    """bf16 rows are rounded in the table at each checkpoint; the checkpoint keeps the float32
    master rows, so the resumed run goes on from exactly what the uninterrupted run held."""
    a, b, ta, tb = straight_and_resumed(
        tmp_path, corpus, ds_vocab_path,
        lambda p: small_real_table(p, ds_vocab, dtype="bfloat16"), monkeypatch, "--in-memory",
        stop=4, every=3,
    )  # fmt: skip
    assert_same_run(a, b, [(ta, tb)])


def test_out_of_core_resume_is_bit_identical(
    tmp_path, corpus, ds_vocab, ds_vocab_path, monkeypatch
):
    """bf16 out of core: rows, moments and float32 master copies are commits of the table; the
    resumed run reads them back and ends where the straight one does."""
    # a 40-row write buffer makes the run commit early checkpoints when it is full
    a, b, ta, tb = straight_and_resumed(
        tmp_path, corpus, ds_vocab_path,
        lambda p: small_real_table(p, ds_vocab, dtype="bfloat16"), monkeypatch,
        "--out-of-core", "--buffer-rows", 40, every=3, early=3,
    )  # fmt: skip
    assert_same_run(a, b, [(ta, tb)])
    from engramctl.table.commits import table_history

    commits = table_history(tb).commits  # one commit per checkpoint, named by its step
    steps = [c.made_by.get("step") for c in commits]
    assert steps == sorted(steps) and steps[-1] == STEPS and len(steps) >= 3
    assert all(c.made_by.get("kind") == "train" for c in commits)
    rows = all_rows(tb)
    assert not np.isnan(rows[(1, "master")]).all() and not np.isnan(rows[(1, "adam")]).all()
    verify = run("verify", "--deep", tb)
    assert verify.exit_code == 0, verify.output


def test_no_engram_resume_is_bit_identical(tmp_path, corpus, ds_vocab_path, monkeypatch):
    a, b, _, _ = straight_and_resumed(tmp_path, corpus, ds_vocab_path, None, monkeypatch)
    assert_same_run(a, b)


def test_table_only_adaptation_resumes_where_it_stopped(
    tmp_path, corpus, ds_vocab, ds_vocab_path, monkeypatch
):
    """Issue 13: an interrupted adaptation (--freeze-backbone --init-from) resumes."""
    tables = {}
    for name in ("a", "b"):
        tables[name] = small_real_table(tmp_path / f"{name}.zarr", ds_vocab)
        base = run(*train_args(corpus, tables[name], ds_vocab_path, tmp_path / f"base_{name}"))
        assert base.exit_code == 0, base.output
    adapt = ["--freeze-backbone", "--corpus", corpus / "other.jsonl"]
    a, b = tmp_path / "a", tmp_path / "b"
    for name, out, extra in (("a", a, []), ("b", b, ["--checkpoint-every", 2])):
        if extra:
            interrupted_at(monkeypatch, 4)
        done = run("train", "--init-from", tmp_path / f"base_{name}", "--table", tables[name],
                   "--out", out, "--steps", STEPS, "--heldout", corpus / "heldout.jsonl",
                   *adapt, *TINY, *extra)  # fmt: skip
        monkeypatch.undo()
        assert done.exit_code == (130 if extra else 0), done.output
    resumed = run("train", "--resume", b)
    assert resumed.exit_code == 0, resumed.output
    assert_same_run(a, b, [(tables["a"], tables["b"])])
    assert (b / "model.safetensors").read_bytes() == (
        tmp_path / "base_b" / "model.safetensors"
    ).read_bytes()


def test_resume_refusals(tmp_path, corpus, ds_vocab, ds_vocab_path, monkeypatch):
    table = small_real_table(tmp_path / "t.zarr", ds_vocab)
    out = tmp_path / "m"
    interrupted_at(monkeypatch, 4)
    cut = run(*train_args(corpus, table, ds_vocab_path, out, "--checkpoint-every", 2))
    monkeypatch.undo()
    assert cut.exit_code == 130, cut.output
    fresh = run(*train_args(corpus, table, ds_vocab_path, tmp_path / "other"))
    assert fresh.exit_code == 1 and f"train --resume {out}" in fresh.stderr, fresh.output
    # flags that contradict the run name both values
    bad = run("train", "--resume", out, "--steps", 9, "--lr", 0.5)
    assert bad.exit_code == 2, bad.output
    assert "--steps 9, the run has 7" in bad.stderr and "--lr 0.5, the run has" in bad.stderr
    state = out / "resume" / "state.json"
    kept = state.read_bytes()
    for damage in (b"{not json", b"[" * 100_000, b"\xff\xfe"):
        state.write_bytes(damage)
        broken = run("train", "--resume", out)
        assert broken.exit_code == 1 and "the run cannot resume from it" in broken.stderr
        assert len(error_lines(broken.stderr)) == 1 and "internal error" not in broken.stderr
    old = json.loads(kept)  # a run from before moments moved into the table's commits
    old["inputs"]["moments"] = str(tmp_path / "t.adam.zarr")
    state.write_text(json.dumps(old))
    refused = run("train", "--resume", out)
    assert refused.exit_code == 1 and "separate store" in refused.stderr, refused.output
    assert len(error_lines(refused.stderr)) == 1
    state.write_bytes(kept)
    other = run("train", "--resume", out, "--out", tmp_path / "elsewhere")
    assert other.exit_code == 2 and "--out" in other.stderr
    same = run("train", "--resume", out, "--steps", STEPS, "--table", table)  # agreeing: fine
    assert same.exit_code == 0, same.output
    again = run("train", "--resume", out)
    assert again.exit_code == 1 and f"already finished at step {STEPS}" in again.stderr
    for target in (tmp_path / "missing", corpus):
        nope = run("train", "--resume", target)
        assert nope.exit_code == 1 and "checkpoint" in nope.stderr, nope.output
        assert len(error_lines(nope.stderr)) == 1
    negative = run(*train_args(corpus, table, ds_vocab_path, tmp_path / "n",
                               "--checkpoint-every", -1))  # fmt: skip
    assert negative.exit_code == 2 and "--checkpoint-every must be >= 0" in negative.stderr


def test_resume_refuses_a_table_changed_since_the_checkpoint(
    tmp_path, corpus, ds_vocab, ds_vocab_path, monkeypatch
):
    table = small_real_table(tmp_path / "t.zarr", ds_vocab)
    out = tmp_path / "m"
    interrupted_at(monkeypatch, 4)
    cut = run(*train_args(corpus, table, ds_vocab_path, out, "--checkpoint-every", 2))
    monkeypatch.undo()
    assert cut.exit_code == 130, cut.output
    from engramctl.table.sources.table import open_table

    with open_table(table, mode="r+") as handle:  # someone edits a row
        handle.write_rows(1, np.array([3]), np.ones((1, handle.dim), dtype=np.float32))
    refused = run("train", "--resume", out)
    assert refused.exit_code == 1
    assert "changed after the checkpoint of step 2" in refused.stderr, refused.output
    assert len(error_lines(refused.stderr)) == 1


def test_resume_refuses_a_changed_corpus(tmp_path, corpus, ds_vocab, ds_vocab_path, monkeypatch):
    text = tmp_path / "c.jsonl"
    text.write_text((corpus / "docs.jsonl").read_text())
    (tmp_path / "heldout.jsonl").write_text((corpus / "heldout.jsonl").read_text())
    out = tmp_path / "m"
    interrupted_at(monkeypatch, 4)
    cut = run(*train_args(tmp_path, None, ds_vocab_path, out, "--checkpoint-every", 2,
                          corpus_file="c.jsonl"))  # fmt: skip
    monkeypatch.undo()
    assert cut.exit_code == 130, cut.output
    text.write_text((corpus / "other.jsonl").read_text())
    refused = run("train", "--resume", out)
    assert refused.exit_code == 1 and "corpus is not the one" in refused.stderr, refused.output


def test_ctrl_c_without_checkpoints_says_nothing_was_saved(tmp_path, corpus, monkeypatch):
    interrupted_at(monkeypatch, 3)
    cut = run(*train_args(corpus, None, None, tmp_path / "m"))
    assert cut.exit_code == 130
    assert "nothing was saved" in cut.stderr and "--checkpoint-every" in cut.stderr
    assert not (tmp_path / "m").exists()


def test_unwritable_out_fails_before_training(tmp_path, corpus, monkeypatch):
    """A file in the way or a read-only directory: refused before the first step."""
    calls = []
    monkeypatch.setattr(train_module, "train_step", lambda *a, **k: calls.append(1) or 1.0)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    in_file = run(*train_args(corpus, None, None, blocker / "m"))
    assert in_file.exit_code == 1, in_file.output
    locked = tmp_path / "ro"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        ro = run(*train_args(corpus, None, None, locked / "m"))
    finally:
        locked.chmod(0o700)
    if ro.exit_code == 0:  # running as root: permissions do not bind
        pytest.skip("permissions are not enforced for this user")
    assert ro.exit_code == 1 and "cannot write" in ro.stderr, ro.output
    assert calls == []


def test_read_only_file_system_fails_before_training(tmp_path, corpus, monkeypatch):
    """What a read-only mount answers (EROFS, even to root): refused before the first step."""
    import errno
    import os

    calls, real_open = [], os.open

    def read_only(path, *args, **kwargs):
        if ".probe-" in str(path):
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(train_module, "train_step", lambda *a, **k: calls.append(1) or 1.0)
    monkeypatch.setattr(os, "open", read_only)  # the probe of --out opens through os.open
    result = run(*train_args(corpus, None, None, tmp_path / "m"))
    assert result.exit_code == 1, result.output
    assert "Read-only file system (checked before starting)" in result.stderr
    assert calls == [] and not (tmp_path / "m").exists()


@pytest.mark.parametrize("moment", ["preparing", "finished"])
def test_ctrl_c_outside_the_steps_says_what_was_kept(
    moment, tmp_path, corpus, ds_vocab, ds_vocab_path, monkeypatch
):
    """A Ctrl-C while the corpus is read, or once the run is done (the summary printed), is one
    sentence that says what was kept: never a bare "interrupted"."""
    import engramctl.cli.model_cmd as model_cmd
    import engramctl.model.train.inputs as inputs_module

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    table, out = small_real_table(tmp_path / "t.zarr", ds_vocab), tmp_path / "m"
    if moment == "preparing":
        monkeypatch.setattr(inputs_module, "prepare_training_data", interrupt)
    else:
        monkeypatch.setattr(model_cmd, "print_trained", interrupt)
    done = run(*train_args(corpus, table, ds_vocab_path, out, "--in-memory"))
    assert done.exit_code == 130, done.output
    [line] = error_lines(done.stderr)
    if moment == "preparing":
        assert line == "error: interrupted before the first step: nothing was saved"
        assert not out.exists()
    else:
        assert line == f"error: interrupted; the run had finished: checkpoint {out}"
        assert (out / "model.safetensors").is_file()
