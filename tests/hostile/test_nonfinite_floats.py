"""NaN and infinities: every float option of every command refuses them in one line (issue 24
§2: ``train --lr nan`` and ``generate --temperature nan`` ended in internal errors)."""

from __future__ import annotations

import pytest
import typer

from engramctl.cli import app
from engramctl.cli.options import finite_number
from tests.hostile.conftest import SMALL, assert_one_error, cli

NON_FINITE = ["nan", "inf", "-inf", "NaN", "Infinity"]


def float_options() -> list[tuple[str, object]]:
    """``(command, option)`` for every option of every command that parses a float."""
    found, groups = [], [("", typer.main.get_command(app))]
    while groups:
        prefix, group = groups.pop()
        for name, command in group.commands.items():
            if hasattr(command, "commands"):
                groups.append((f"{prefix}{name} ", command))
                continue
            for param in command.params:
                descriptor = getattr(param, "type_descriptor", None)
                if descriptor is not None and descriptor.annotation is float:
                    found.append((prefix + name, param))
    return found


def test_every_float_option_has_the_shared_validator():
    options = float_options()
    assert len(options) >= 7, options  # train (3), generate, init-table, cache-plan (2)
    unchecked = [
        f"{name} {param.opts[0]}"
        for name, param in options
        if getattr(param.callback, "__name__", None) != finite_number.__name__
    ]
    assert unchecked == [], unchecked


@pytest.mark.parametrize("value", NON_FINITE)
def test_train_lr(value, tmp_path):
    result = cli("train", "--corpus", tmp_path / "c.jsonl", "--out", tmp_path / "m", "--no-engram",
                 "--lr", value)  # fmt: skip
    assert_one_error(result, "--lr", "finite")
    assert result.exit_code == 2


@pytest.mark.parametrize(
    "args",
    [
        ("generate", "--model", "m", "--prompt", "x", "--temperature", "nan"),
        ("train", "--corpus", "c", "--out", "o", "--table-lr", "inf"),
        ("train", "--corpus", "c", "--out", "o", "--table-weight-decay", "-inf"),
        ("cache-plan", "w.jsonl", "--vocab", "v", "--warmup-fraction", "nan"),
        ("cache-plan", "w.jsonl", "--vocab", "v", "--tokens-per-s", "inf"),
    ],
)
def test_other_float_options(args):
    flag = args[-2]
    result = cli(*args)
    assert_one_error(result, flag, "finite")


def test_init_table_std(tmp_path, vocab_path):
    out = tmp_path / "t.zarr"
    result = cli("init-table", out, "--vocab", vocab_path, *SMALL, "--std", "nan")
    assert_one_error(result, "--std", "finite")
    assert not out.exists()


def test_the_validator_passes_finite_numbers():
    assert finite_number(0.5) == 0.5 and finite_number(None) is None
    with pytest.raises(typer.BadParameter):
        finite_number(float("nan"))


@pytest.mark.parametrize("value", ["nan", "inf", "nanG", "infGB", "nan%"])
def test_sizes_given_as_text(value, tmp_path, small_table):
    result = cli("hash-stats", tmp_path / "c.jsonl", "--vocab", "v", "--max-memory", value)
    assert_one_error(result, "--max-memory")
    result = cli("export", small_table, tmp_path / "ck", "--format", "deepseek",
                 "--max-shard-size", value)  # fmt: skip
    assert_one_error(result, "--max-shard-size")
