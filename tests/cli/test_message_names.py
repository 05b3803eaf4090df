"""Refusals name the option the user gave (issue 24 §3): ``init-table --init-seed -1`` is about
``--init-seed``, not the layout's ``--seed``."""

from __future__ import annotations

from typer.testing import CliRunner

from engramctl.cli import app


def test_init_table_bad_init_seed_names_init_seed(tmp_path, ds_vocab_path):
    out = tmp_path / "t.zarr"
    result = CliRunner().invoke(
        app,
        ["init-table", str(out), "--vocab", str(ds_vocab_path), "--ngram-vocab", "1009,1013",
         "--heads", "2", "--layers", "1", "--dim", "8", "--init-seed", "-1"],
    )  # fmt: skip
    assert result.exit_code == 2, result.output
    assert "--init-seed must be in [0, 2**63), got -1" in result.output
    assert " --seed" not in result.output and "Traceback" not in result.output
    assert not out.exists()
