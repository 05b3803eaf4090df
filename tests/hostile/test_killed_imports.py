"""Killed copy imports and inits: an incomplete table is incomplete everywhere (issue 24 §2).

A copy ``import`` (or an ``init-table``) stopped midway leaves a table of status
``initializing``. Readers refuse it naming the command that resumes it, ``verify`` exits 1 and
names it too, ``export`` refuses; the resumed import leaves no temporary chunk files; an import
killed before its metadata arrived (an unborn slot) says so instead of "not an engramctl table";
two imports to one new path: the loser gets the writer-lock message.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from engramctl.errors import EngramError
from engramctl.table.build.create import create_table
from engramctl.table.core.lock import LOCK_NAME, WriterLock
from engramctl.table.formats.checkpoint_import import import_checkpoint
from engramctl.table.sources.table import open_table
from engramctl.table.verify import verify_table
from tests.hostile.conftest import assert_one_error, cli
from tests.table.ckpt_util import small_layout, write_checkpoint

DEAD_PID = 2**22 + 12345  # above the default pid_max: no such process


def stop_after(n: int):
    calls = []

    def progress(*_):
        calls.append(1)
        if len(calls) == n:
            raise KeyboardInterrupt

    return progress


@pytest.fixture
def ckpt(tmp_path, tiny_vocab):
    layout = small_layout(tiny_vocab)
    rows = write_checkpoint(tmp_path / "ckpt", layout, dim=64)
    return tmp_path / "ckpt", rows


@pytest.fixture
def killed_import(ckpt, tmp_path, tiny_vocab):
    """A copy import stopped after a few chunks (as a kill leaves it)."""
    path, _ = ckpt
    out = tmp_path / "t.zarr"
    with pytest.raises(KeyboardInterrupt):
        import_checkpoint(path, out, vocab=tiny_vocab, chunk_rows=7, progress=stop_after(3))
    return out


@pytest.fixture
def killed_init(tmp_path, tiny_vocab):
    out = tmp_path / "i.zarr"
    layout = small_layout(tiny_vocab)
    with pytest.raises(KeyboardInterrupt):
        create_table(out, layout=layout, vocab_fingerprint=tiny_vocab.fingerprint, dim=32,
                     chunk_rows=7, workers=1, progress=stop_after(3))  # fmt: skip
    return out


def test_readers_refuse_a_killed_import_naming_import(killed_import, vocab_path):
    with pytest.raises(EngramError, match="unfinished import") as err:
        open_table(killed_import)
    assert "engramctl import" in str(err.value) and "resume" in str(err.value)
    result = cli("lookup", killed_import, "--vocab", vocab_path, "--text", "the")
    line = assert_one_error(result, "import")
    assert "unfinished" in line


def test_readers_refuse_a_killed_init_naming_init_table(killed_init):
    with pytest.raises(EngramError, match="unfinished init") as err:
        open_table(killed_init)
    assert "engramctl init-table" in str(err.value)


def test_verify_exits_1_and_names_the_command_that_resumes(killed_import, killed_init):
    report = verify_table(killed_import)
    assert not report.ok
    assert any("engramctl import" in p and "resume" in p for p in report.problems), report
    assert not any("init-table" in text for text in report.problems + report.warnings), report
    result = cli("verify", killed_import)
    assert result.exit_code == 1, result.output
    report = verify_table(killed_init)
    assert not report.ok and any("engramctl init-table" in p for p in report.problems), report


def test_export_refuses_a_killed_import(killed_import, tmp_path):
    out = tmp_path / "x.safetensors"
    assert_one_error(cli("export", killed_import, out), "unfinished import")
    assert not out.exists()


def test_info_still_shows_an_unfinished_table(killed_import):
    result = cli("info", killed_import, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["status"] == "initializing"


def test_resumed_import_leaves_no_temporary_files(killed_import, ckpt, tiny_vocab):
    path, rows = ckpt
    chunk_dir = killed_import / "layer_1" / "c" / "0"
    chunk_dir.mkdir(parents=True, exist_ok=True)
    stale = chunk_dir / f".0.tmp-{DEAD_PID}"
    stale.write_bytes(b"half a chunk")  # a killed copy thread's file
    result = import_checkpoint(path, killed_import, vocab=tiny_vocab, chunk_rows=7)
    assert result.resumed
    assert [p for p in killed_import.rglob("*") if ".tmp-" in p.name] == []
    with open_table(killed_import) as table:
        got = table.gather(1, np.arange(table.meta.layer(1).rows))
    np.testing.assert_array_equal(got, rows[1])
    assert verify_table(killed_import, deep=True).ok


def test_an_unborn_slot_says_what_happened(tmp_path):
    slot = tmp_path / "t.zarr"
    slot.mkdir()
    (slot / LOCK_NAME).write_text("")  # an import killed before its table was swapped in
    with pytest.raises(EngramError) as err:
        open_table(slot)
    message = str(err.value)
    assert "not an engramctl table" not in message and "interrupted" in message, message
    line = assert_one_error(cli("verify", slot), "interrupted")
    assert "import" in line


def test_two_imports_to_one_new_path_the_loser_gets_the_lock_message(ckpt, tmp_path, tiny_vocab):
    path, _ = ckpt
    out = tmp_path / "t.zarr"
    out.mkdir()  # the winner's slot: its directory and its lock, nothing else yet
    with WriterLock(out):
        with pytest.raises(EngramError, match="is being written by"):
            import_checkpoint(path, out, vocab=tiny_vocab, chunk_rows=7)


def test_import_into_a_slot_left_by_a_killed_import(ckpt, tmp_path, tiny_vocab):
    path, rows = ckpt
    out = tmp_path / "t.zarr"
    out.mkdir()
    (out / LOCK_NAME).write_text(f"pid {DEAD_PID} on here\n")
    import_checkpoint(path, out, vocab=tiny_vocab, chunk_rows=7)
    with open_table(out) as table:
        np.testing.assert_array_equal(table.gather(4, np.arange(table.meta.layer(4).rows)), rows[4])


def test_a_reader_during_an_import_is_told_to_wait(killed_import):
    with WriterLock(killed_import):  # the import resumed and at work
        with pytest.raises(EngramError, match="is writing it now; wait"):
            open_table(killed_import)
        with pytest.raises(EngramError, match="verify again when it has finished"):
            verify_table(killed_import)
