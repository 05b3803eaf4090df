"""Every command documents an example, and the CLI starts without importing torch."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from typer.main import get_command
from typer.testing import CliRunner

from engramctl.cli import app


def command_paths(group, prefix=()):
    """Every command under a click group, sub-groups (``add_typer``) included, as name tuples."""
    for name, command in sorted(group.commands.items()):
        yield (*prefix, name)
        if hasattr(command, "commands"):
            yield from command_paths(command, (*prefix, name))


# Every registered command, so commands added later are covered without touching this file.
COMMANDS = [" ".join(path) for path in command_paths(get_command(app))]


def test_the_foundation_commands_are_registered():
    assert {"build-vocab", "layout", "hash"} <= set(COMMANDS)


@pytest.mark.parametrize("command", ["", *COMMANDS])
def test_help_has_an_example(command):
    result = CliRunner().invoke(app, [*command.split(), "--help"])
    assert result.exit_code == 0, result.output
    assert "Example" in result.stdout


LIGHT_START = """
import json, sys
from typer.testing import CliRunner
import engramctl.cli
seen = {"import engramctl.cli": "torch" in sys.modules}
runner = CliRunner()
for command in json.loads(sys.argv[1]):
    result = runner.invoke(engramctl.cli.app, [*command.split(), "--help"])
    assert result.exit_code == 0, result.output
    seen[f"engramctl {command} --help"] = "torch" in sys.modules
print(json.dumps(seen))
"""


def test_cli_help_does_not_import_torch():
    done = subprocess.run(
        [sys.executable, "-c", LIGHT_START, json.dumps(["", *COMMANDS])],
        capture_output=True,
        text=True,
        timeout=120,
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
