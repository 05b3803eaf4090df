"""Every command documents an example, and the CLI starts without importing torch."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from typer.main import get_command
from typer.testing import CliRunner

from engramctl.cli import app

# Every registered command, so commands added later are covered without touching this file.
COMMANDS = sorted(get_command(app).commands)


def test_the_foundation_commands_are_registered():
    assert {"build-vocab", "layout", "hash"} <= set(COMMANDS)


@pytest.mark.parametrize("command", [None, *COMMANDS])
def test_help_has_an_example(command):
    args = ["--help"] if command is None else [command, "--help"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "Example" in result.stdout


LIGHT_START = """
import json, sys
from typer.main import get_command
from typer.testing import CliRunner
import engramctl.cli
seen = {"import engramctl.cli": "torch" in sys.modules}
from engramctl.cli import app
runner = CliRunner()
for args in [["--help"]] + [[name, "--help"] for name in sorted(get_command(app).commands)]:
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    seen["engramctl " + " ".join(args)] = "torch" in sys.modules
print(json.dumps(seen))
"""


def test_cli_help_does_not_import_torch():
    done = subprocess.run(
        [sys.executable, "-c", LIGHT_START], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    imported = json.loads(done.stdout.strip().splitlines()[-1])
    assert imported and not any(imported.values()), imported


def test_engramctl_help_in_a_fresh_process():
    done = subprocess.run(
        [sys.executable, "-m", "engramctl", "--help"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0 and "build-vocab" in done.stdout


def test_bare_engramctl_prints_help():
    result = CliRunner().invoke(app, [])
    assert result.exit_code in (0, 2)
    assert "build-vocab" in result.output and "Traceback" not in result.output
