"""Kills and Ctrl-C in ``train --checkpoint-every`` (a fault harness over real processes).

After a kill or an interrupt at any moment, either ``train --resume`` finishes the run and it is
bit-identical to a run that never stopped (weights, history, every table row), or there was no
checkpoint yet and the table is as it was; the table is never left damaged without its run
recorded as incomplete. Deterministic cases kill the process at each moment of a commit
(checkpoint written, rows half written, rows written but the checkpoint not renamed); random
cases send SIGKILL or SIGINT at a random moment after the first checkpoint or after a random
delay from the start (``HOSTILE_EXAMPLES`` sets how many: 1 per signal in ``make test``).
"""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

pytest.importorskip("torch")

from tests.conftest import SAMPLE, read_jsonl  # noqa: E402
from tests.hostile.conftest import EXAMPLES, assert_clean_process, cli  # noqa: E402
from tests.model.table_double import small_real_table  # noqa: E402

TINY = ["--depth", "2", "--width", "16", "--attn-heads", "2", "--seq-len", "16", "--batch", "2",
        "--min-count", "1", "--device", "cpu", "--eval-every", "3", "--steps", "8"]  # fmt: skip

# Runs ``engramctl ARGS`` and SIGKILLs itself (no cleanup) at a moment of the
# N-th commit: "before-rows" (checkpoint complete under its temporary name, table untouched),
# "mid-rows" (after the first segment file of the rows' commit, before its log's rename),
# "before-rename" (rows and record written).
DRIVER = r"""
import os, signal, sys
phase, nth = sys.argv[1], int(sys.argv[2])
from engramctl.model.train import finish
from engramctl.table.edits import session
seen = {"commits": 0, "in_commit": False}
real_commit, real_segment = finish.commit_rows, session.write_segment
def commit(*a, **k):
    seen["commits"] += 1
    if seen["commits"] == nth:
        if phase == "before-rows":
            os.kill(os.getpid(), signal.SIGKILL)
        seen["in_commit"] = True
    real_commit(*a, **k)
    if seen["commits"] == nth and phase == "before-rename":
        os.kill(os.getpid(), signal.SIGKILL)
def segment(path, *a, **k):
    done = real_segment(path, *a, **k)
    table = path.parents[2].name  # <table>/edits/segments/<file>
    if seen["in_commit"] and phase == "mid-rows":
        os.kill(os.getpid(), signal.SIGKILL)
    return done
finish.commit_rows, session.write_segment = commit, segment
from engramctl.cli import app
app(sys.argv[3:], prog_name="engramctl")
"""


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("train_corpus")
    docs = read_jsonl(SAMPLE / "train.jsonl")
    (root / "docs.jsonl").write_text("\n".join(json.dumps(d) for d in docs[:3]) + "\n")
    held = read_jsonl(SAMPLE / "heldout.jsonl")[0]
    held["text"] = held["text"][:1500]
    (root / "heldout.jsonl").write_text(json.dumps(held) + "\n")
    return root


def args_for(corpus, table, vocab_path, out, *extra):
    return ["train", "--corpus", corpus / "docs.jsonl", "--heldout", corpus / "heldout.jsonl",
            "--table", table, "--vocab", vocab_path, "--out", out, *TINY, *extra]  # fmt: skip


def table_rows(path) -> dict:
    """Every row, and the side columns (Adam moments, master copies) the commits carry."""
    from engramctl.table.sources.table import open_table

    with open_table(path) as table:
        out = {}
        for layer in table.layout.layers:
            ids = np.arange(table.layout.layer_rows(layer))
            out[layer] = table.gather(layer, ids)
            for name in ("adam", "master"):
                out[(layer, name)] = table.side_rows(layer, name, ids)
        return out


@pytest.fixture(scope="module")
def reference(tmp_path_factory, corpus, ds_vocab, ds_vocab_path):
    """An uninterrupted run per mode: its weights, history and rows."""
    refs = {}
    for mode in ("--in-memory", "--out-of-core"):
        root = tmp_path_factory.mktemp("train_reference")
        table = small_real_table(root / "t.zarr", ds_vocab)
        done = cli(*args_for(corpus, table, ds_vocab_path, root / "m", mode))
        assert done.exit_code == 0, done.output
        refs[mode] = {
            "weights": (root / "m" / "model.safetensors").read_bytes(),
            "history": (root / "m" / "history.json").read_bytes(),
            "rows": table_rows(table),
        }
    return refs


def check_outcome(tmp_path, table, out, before: dict, want: dict) -> str:
    """Resume if there is a checkpoint, and compare with the uninterrupted run; otherwise the
    table must be as it was. Returns what happened."""
    # rows, moments and master copies are commits: whatever the kill, the table's commits are
    # whole (the last one intact or absent) and verify passes
    verify = cli("verify", "--deep", table)
    assert verify.exit_code == 0, verify.output
    checkpoints = [out, *tmp_path.glob(f".{out.name}.tmp-*")]
    if not any((p / "resume" / "state.json").exists() for p in checkpoints):
        if not out.exists():  # no checkpoint: nothing of the run may be in the table
            rows = table_rows(table)
            for key, values in before.items():
                np.testing.assert_array_equal(rows[key], values)
            return "no checkpoint; table intact"
    resumed = cli("train", "--resume", out)
    if resumed.exit_code == 1 and "already finished" in resumed.stderr:
        outcome = "finished before the kill"
    else:
        assert resumed.exit_code == 0, resumed.output
        outcome = "resumed"
    assert (out / "model.safetensors").read_bytes() == want["weights"]
    assert (out / "history.json").read_bytes() == want["history"]
    rows = table_rows(table)
    for key, values in want["rows"].items():
        np.testing.assert_array_equal(rows[key], values)
    assert cli("verify", "--deep", table).exit_code == 0
    assert list(tmp_path.glob(f".{out.name}.*")) == []  # no temporary checkpoint left
    return outcome


@pytest.mark.slow
@pytest.mark.parametrize(
    ("phase", "mode"),
    [("before-rows", "--in-memory"), ("mid-rows", "--in-memory"),
     ("before-rename", "--in-memory"), ("mid-rows", "--out-of-core"),
     ("before-rename", "--out-of-core")],
)  # fmt: skip
def test_kill_at_each_moment_of_a_commit(
    phase, mode, tmp_path, corpus, ds_vocab, ds_vocab_path, reference
):
    table = small_real_table(tmp_path / "t.zarr", ds_vocab)
    before, out = table_rows(table), tmp_path / "m"
    args = args_for(corpus, table, ds_vocab_path, out, mode, "--checkpoint-every", "3")
    killed = subprocess.run(
        [sys.executable, "-c", DRIVER, phase, "2", *map(str, args)], capture_output=True, text=True
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    outcome = check_outcome(tmp_path, table, out, before, reference[mode])
    assert outcome == "resumed"


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(max(1, min(EXAMPLES // 8, 10))))
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT])
def test_kill_or_ctrl_c_at_a_random_moment(
    seed, sig, tmp_path, corpus, ds_vocab, ds_vocab_path, reference
):
    mode = ("--in-memory", "--out-of-core")[seed % 2]
    table = small_real_table(tmp_path / "t.zarr", ds_vocab)
    before, out = table_rows(table), tmp_path / "m"
    args = args_for(corpus, table, ds_vocab_path, out, mode, "--checkpoint-every", "2")
    proc = subprocess.Popen(
        [sys.executable, "-m", "engramctl", *map(str, args)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    rng = random.Random(seed * 7 + sig)
    if seed % 4 < 2:  # after the first checkpoint, at a random moment of the steps and commits
        deadline = time.monotonic() + 60
        while not out.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 1.5))
    else:  # any moment: start-up, the first steps, or later
        time.sleep(rng.uniform(1.0, 8.0))
    if proc.poll() is None:
        proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    done = subprocess.CompletedProcess(proc.args, proc.returncode, "", err)
    if sig == signal.SIGINT and done.returncode == 130:
        errors = [line for line in err.splitlines() if not line.startswith("train ")]
        assert len(errors) == 1 and errors[0].startswith("error: interrupted"), err
        said = ("--resume", "nothing was saved", "the run had finished")  # (and progress lines)
        assert any(words in errors[0] for words in said), err
        assert "Traceback" not in err
    elif done.returncode not in (-signal.SIGKILL, -signal.SIGINT):
        assert_clean_process(done)
    check_outcome(tmp_path, table, out, before, reference[mode])
