"""Interrupts and kills at random moments (a fault harness over real processes).

- SIGINT in the first half second (before or while the CLI is set up): one line, exit 130 (or the
  command finished), never a traceback.
- SIGKILL at a random moment of ``init-table`` and ``import``: rerunning the same command finishes
  the job and the table is bit-identical to one made without interruption.
"""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from engramctl.table.build.replace import is_unborn
from engramctl.table.sources.table import open_table
from tests.hostile.conftest import EXAMPLES, SMALL, assert_clean_process

ENGRAMCTL = [sys.executable, "-m", "engramctl"]


def start(*args, cwd=None) -> subprocess.Popen:
    return subprocess.Popen(
        [*ENGRAMCTL, *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=cwd,
    )


def interrupt_after(proc: subprocess.Popen, delay: float, sig: int) -> subprocess.CompletedProcess:
    time.sleep(delay)
    if proc.poll() is None:
        proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


# What the console script does; "python is up" once the entry module is imported (the few
# milliseconds before ``main`` runs are Python's, out of any program's reach).
STARTUP = (
    "import sys; from engramctl._entry import main; print('python is up', flush=True); "
    "sys.argv = ['engramctl', *sys.argv[1:]]; main()"
)


@pytest.mark.parametrize("delay", [0.03 + 0.05 * i for i in range(min(EXAMPLES, 10))])
def test_ctrl_c_during_start_up(delay, tmp_path, vocab_path):
    """The interrupt lands while engramctl imports and sets up its CLI, or while it runs."""
    proc = subprocess.Popen(
        [sys.executable, "-c", STARTUP, "layout", "--vocab", str(vocab_path), "--ngram-vocab",
         "500,500"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
    )  # fmt: skip
    assert proc.stdout.readline() == "python is up\n"
    done = interrupt_after(proc, delay, signal.SIGINT)
    assert "Traceback" not in done.stderr, done.stderr
    if done.returncode != 0:
        assert done.returncode in (130, -signal.SIGINT), done.stderr
        lines = done.stderr.strip().splitlines()
        if done.returncode == 130:  # the CLI handled it: always its one line (typer's own
            assert lines == ["error: interrupted"], (done.stdout, done.stderr)  # silent 130 too)
        else:  # died of SIGINT: during start-up (the line) or Python's shutdown (nothing)
            assert lines in ([], ["error: interrupted"]), (done.stdout, done.stderr)


def table_rows(path) -> dict:
    with open_table(path) as table:
        return {
            layer: table.gather(layer, np.arange(table.meta.layers[layer].rows))
            for layer in table.meta.layers
        }


@pytest.fixture(scope="module")
def reference_rows(small_table):
    return table_rows(small_table)


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(max(1, EXAMPLES // 10)))
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT])
def test_killed_init_resumes_to_the_same_table(seed, sig, tmp_path, vocab_path, reference_rows):
    out = tmp_path / "t.zarr"
    args = ("init-table", out, "--vocab", vocab_path, *SMALL, "--workers", "1")
    delay = random.Random(seed).uniform(0.3, 4.0)
    done = interrupt_after(start(*args), delay, sig)
    assert "Traceback" not in done.stderr and "internal error" not in done.stderr, done.stderr
    again = subprocess.run([*ENGRAMCTL, *map(str, args)], capture_output=True, text=True)
    assert_clean_process(again)
    assert again.returncode == 0, again.stderr  # resumed, or "already complete"
    rows = table_rows(out)
    for layer, want in reference_rows.items():
        np.testing.assert_array_equal(rows[layer], want)
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != "t.zarr"]
    assert leftovers == [], leftovers
    stray = [p for p in out.rglob("*") if ".tmp-" in p.name]
    assert stray == [], stray


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(max(1, EXAMPLES // 10)))
def test_killed_import_leaves_nothing_or_the_whole_table(
    seed, tmp_path, vocab_path, small_export, reference_rows
):
    out = tmp_path / "u.zarr"
    args = ("import", small_export, out, "--vocab", vocab_path, "--ngram-vocab", "500,500",
            "--heads", "2")  # fmt: skip
    done = interrupt_after(start(*args), random.Random(seed).uniform(0.3, 4.0), signal.SIGKILL)
    # A kill before the swap leaves the table's slot (its writer lock, no zarr.json): no table.
    if out.exists() and not is_unborn(out):
        rows = table_rows(out)
        for layer, want in reference_rows.items():
            np.testing.assert_array_equal(rows[layer], want)
    again = subprocess.run(
        [*ENGRAMCTL, *map(str, args), "--overwrite"], capture_output=True, text=True
    )
    assert_clean_process(again)
    assert again.returncode == 0, again.stderr
    assert done.returncode is not None
    leftovers = sorted(p.name for p in tmp_path.iterdir() if p.name != "u.zarr")
    assert leftovers == [], leftovers
