"""``--help`` reads whole in an 80-column terminal and when piped: no option name, type or help
word is cut with an ellipsis, and square brackets in help text (``pip install
'engramctl[eval]'``) are shown, not taken for rich markup."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
from typer.main import get_command
from typer.testing import CliRunner

from engramctl.cli import app

GROUP = get_command(app)
COMMANDS = sorted(GROUP.commands)


def option_names(name: str) -> list[str]:
    command = GROUP.commands[name]
    return [opt for p in command.params for opt in (*p.opts, *p.secondary_opts) if "--" in opt]


@pytest.mark.parametrize("name", COMMANDS)
def test_help_at_80_columns_cuts_nothing(name):
    result = CliRunner().invoke(app, [name, "--help"], env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    assert "…" not in result.stdout, result.stdout
    assert max(len(line) for line in result.stdout.splitlines()) <= 80
    words = set(re.findall(r"--[\w-]+", result.stdout))
    for option in option_names(name):
        assert option in words, f"{option} is not shown whole in `engramctl {name} --help`"


def test_piped_help_cuts_no_option_name():
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "TERMINAL_WIDTH")}
    done = subprocess.run(
        [sys.executable, "-m", "engramctl", "train", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    assert "…" not in done.stdout
    for option in ("--checkpoint-every", "--table-weight-decay"):
        assert option in done.stdout


def bracketed_words(text: str) -> set[str]:
    """``name[extra]`` spellings (what rich markup would take for a tag)."""
    return set(re.findall(r"[\w'-]+\[[a-z][\w,-]*\]", text or ""))


@pytest.mark.parametrize("name", COMMANDS)
def test_square_brackets_in_help_are_shown(name):
    command = GROUP.commands[name]
    expected = bracketed_words(command.help)
    for param in command.params:
        expected |= bracketed_words(getattr(param, "help", None))
    shown = CliRunner().invoke(app, [name, "--help"], env={"COLUMNS": "200"}).stdout
    for word in expected:
        assert word in shown, f"{word!r} lost in `engramctl {name} --help`"


def test_eval_help_names_the_eval_extra():
    shown = CliRunner().invoke(app, ["eval", "--help"], env={"COLUMNS": "200"}).stdout
    assert "pip install 'engramctl[eval]'" in shown
