"""The documentation matches the CLI: every command is in README's command table, every --help
example is whole (not wrapped mid-command) and uses options that exist, and so does every
``engramctl`` command line in README.md, docs/*.md and scripts/demo.sh (a renamed flag left in
the docs fails here)."""

from __future__ import annotations

import re
import shlex
import sys
from pathlib import Path

import pytest
import typer
from typer.main import get_command
from typer.testing import CliRunner

from engramctl.cli import app
from engramctl.cli.app import help_text

ROOT = Path(__file__).resolve().parents[2]
GROUP = get_command(app)
COMMANDS = sorted(GROUP.commands)
_click_errors = sys.modules[typer.BadParameter.__module__]


def readme_table_commands() -> set[str]:
    """Command names in the first column of README's "Commands" table."""
    section = ROOT.joinpath("README.md").read_text().split("## Commands", 1)[1]
    names = set()
    for line in section.splitlines():
        if line.startswith("| `engramctl"):
            first_cell = line.split("|")[1]
            names |= set(re.findall(r"`(?:engramctl )?([a-z-]+)`", first_cell))
    return names


def example_lines(name: str) -> list[str]:
    """The lines of a command's help example, as its docstring gives them."""
    doc = help_text(GROUP.commands[name].callback.__doc__)
    example = [p for p in doc.split("\n\n") if p.startswith("Example")]
    assert len(example) == 1, f"{name}: expected one 'Example:' paragraph in its docstring"
    lines = example[0].removeprefix("Example:").strip().splitlines()
    return [line.strip() for line in lines]


def check_parses(argv: list[str], where: str) -> None:
    """Parse ``engramctl ARGV`` as the CLI would, without running it: unknown options, extra
    arguments and bad values fail; a missing required option does not (examples may be short)."""
    assert argv[0] == "engramctl", where
    args = [a for a in argv[1:] if a not in ("-q", "--quiet", "-v", "--verbose")]
    if args in ([], ["--help"], ["--version"], ["--install-completion"]):
        return
    name, rest = args[0], args[1:]
    assert name in GROUP.commands, f"{where}: no command {name!r}"
    try:
        GROUP.commands[name].make_context(name, rest)
    except _click_errors.MissingParameter:
        pass
    except _click_errors.UsageError as exc:
        pytest.fail(f"{where}: `{shlex.join(argv)}`: {exc.format_message()}")


def commands_in(text: str, prefix: str) -> list[list[str]]:
    """Command lines starting with ``prefix`` (continuation lines joined), split at pipes,
    redirections, ``&&`` and comments."""
    joined = re.sub(r"\\\n\s*", " ", text)
    found = []
    for line in joined.splitlines():
        line = line.strip()
        if not line.startswith(prefix):
            continue
        words, current = shlex.split("engramctl" + line[len(prefix) :], comments=True), []
        for word in [*words, "&&"]:
            if word in ("|", "&&", ">", "2>") or word.startswith(">"):
                if current and current[0] == "engramctl":
                    found.append(current)
                current = [] if word in ("|", "&&") else ["(redirect)"]
            else:
                current.append(word)
    return found


def test_every_command_is_in_the_readme_table():
    assert set(COMMANDS) <= readme_table_commands()


@pytest.mark.parametrize("name", COMMANDS)
def test_help_example_is_whole_and_parses(name):
    lines = example_lines(name)
    assert lines and lines[0].startswith(f"engramctl {name}"), lines
    result = CliRunner().invoke(app, [name, "--help"], env={"TERMINAL_WIDTH": "80"})
    assert result.exit_code == 0, result.output
    shown = [line.strip() for line in result.stdout.splitlines()]
    for line in lines:
        assert line in shown, f"the example line {line!r} wraps in `engramctl {name} --help`"
    check_parses(shlex.split(" ".join(line.rstrip("\\") for line in lines)), f"{name} --help")


DOCS = ["README.md", *sorted(str(p.relative_to(ROOT)) for p in ROOT.glob("docs/*.md"))]


@pytest.mark.parametrize("doc", DOCS)
def test_command_lines_in_the_docs_parse(doc):
    for argv in commands_in(ROOT.joinpath(doc).read_text(), "$ engramctl"):
        check_parses(argv, doc)


def test_demo_script_command_lines_parse():
    script = ROOT.joinpath("scripts/demo.sh").read_text()
    train_args = re.search(r'^TRAIN_ARGS="(.*)"$', script, re.M).group(1)
    script = script.replace("$TRAIN_ARGS", train_args)
    found = commands_in(script, "$ENGRAMCTL")
    assert len(found) >= 10, found
    for argv in found:
        check_parses(argv, "scripts/demo.sh")
