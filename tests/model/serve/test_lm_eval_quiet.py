"""``eval --lm-eval-tasks`` keeps the harness quiet unless ``-v``: none of its WARNING lines
(task metric defaults), no progress bars of lm-eval or ``datasets`` (issue 24 §3)."""

from __future__ import annotations

import logging

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("lm_eval")

from tests.model import test_train_eval as base  # noqa: E402
from tests.model.serve.test_lm_eval import BENCH, offline_datasets  # noqa: E402, F401

corpus, small_layout, tables, trained = base.corpus, base.small_layout, base.tables, base.trained

BARS = ("it/s]", "examples/s]", "%|")


def harness_run(model, *flags):
    return base.run(
        *flags, "eval", "--model", model, "--table", "t.zarr", "--device", "cpu",
        "--lm-eval-tasks", BENCH, "--limit", 2,
    )  # fmt: skip


def harness_warnings(caplog) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name.startswith("lm_eval") and r.levelno == logging.WARNING
    ]


def test_the_harness_is_quiet_by_default(trained, caplog):
    model, _, _ = trained
    caplog.set_level(logging.DEBUG)  # whatever reaches the loggers is recorded here
    result = harness_run(model)
    assert result.exit_code == 0, result.output
    assert harness_warnings(caplog) == []
    assert not any(bar in result.stderr for bar in BARS), result.stderr
    assert "engramctl_mc_next_line" in result.stdout  # the harness's table is still printed
    assert logging.getLogger("lm_eval").level == logging.NOTSET  # restored afterwards


def test_the_harness_speaks_with_verbose(trained, caplog):
    model, _, _ = trained
    caplog.set_level(logging.DEBUG)
    result = harness_run(model, "-v")
    assert result.exit_code == 0, result.output
    assert any("is defined, but" in message for message in harness_warnings(caplog))
