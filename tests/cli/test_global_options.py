"""App-wide options and output: -q/-v after a command, --version, the progress helper's plain
lines when stderr is no terminal, no wrapping when stdout is piped, no <bool> in help."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from engramctl import __version__
from engramctl.cli import app


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def test_version():
    result = invoke("--version")
    assert result.exit_code == 0 and result.stdout.strip() == f"engramctl {__version__}"


def test_quiet_and_verbose_after_the_command_name(tmp_path, tiny_tokenizer_path):
    out = tmp_path / "v.parquet"
    loud = invoke("build-vocab", "-t", tiny_tokenizer_path, "-o", out)
    assert loud.exit_code == 0 and "wrote" in loud.stdout
    quiet = invoke("build-vocab", "-t", tiny_tokenizer_path, "-o", out, "--overwrite", "-q")
    assert quiet.exit_code == 0, quiet.output
    assert quiet.stdout == ""
    verbose = invoke("build-vocab", "-t", tiny_tokenizer_path, "-o", out, "-v")
    assert verbose.exit_code == 1 and "--overwrite" in verbose.output


def test_json_is_stdout_only_and_quiet_after_command(tmp_path, ds_vocab_path):
    table = tmp_path / "t.zarr"
    result = invoke(
        "init-table", table, "--vocab", ds_vocab_path, "--ngram-vocab", "101,103",
        "--layers", "1", "--dim", "8", "--seed", "3", "--init-seed", "4", "--json", "-q",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["layout"]["seed"] == 3 and doc["init"]["seed"] == 4


def test_progress_prints_plain_lines_when_stderr_is_no_terminal(monkeypatch, capsys):
    from rich.console import Console

    from engramctl.cli import progress as progress_module

    monkeypatch.setattr(progress_module, "PLAIN_EVERY_SECONDS", 0.0)
    plain = Console(stderr=True, force_terminal=False, width=200)  # stderr as a log file sees it
    monkeypatch.setattr(progress_module, "err_console", plain)
    with progress_module.progress("copy", detail="{files} files") as update:
        update(512, 1024, files=3)
        update(1024, 1024, files=5)
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and "copy" in err[0] and "3 files" in err[0] and "5 files" in err[1]
    with progress_module.progress("copy", enabled=False) as update:
        update(1, 2)
    assert capsys.readouterr().err == ""


def test_piped_output_is_not_wrapped(ds_vocab_path):
    result = invoke("layout", "--vocab", ds_vocab_path, "--preset", "deepseek-v4.1")
    assert result.exit_code == 0
    first = result.stdout.splitlines()[0]
    assert first.startswith("layout: orders 2..4") and "canonical vocab" in first
    assert len(first) > 80


def test_flags_show_no_bool_type_in_help():
    for command in ("hash-stats", "init-table", "train"):
        result = invoke(command, "--help")
        assert result.exit_code == 0 and "<bool>" not in result.stdout
