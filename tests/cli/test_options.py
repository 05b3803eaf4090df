"""The shared option bundles of engramctl/cli/options.py: ``layout_flags`` puts the LayoutFlags
options into a command's signature (and --help) at one place, and keeps them out of its call."""

from __future__ import annotations

import inspect
from typing import Annotated

import pytest
import typer
from typer.testing import CliRunner

from engramctl.cli.options import LayoutFlags, layout_flags

NAMES = [*LayoutFlags.NAMES, *LayoutFlags.SOURCES]


def make_app(seen: dict):
    app = typer.Typer()

    @app.command()
    @layout_flags(after="first")
    def demo(
        ctx: typer.Context,
        first: Annotated[str, typer.Argument()],
        last: Annotated[int, typer.Option("--last")] = 0,
    ) -> None:
        seen.update(first=first, last=last, params=dict(getattr(ctx, "params", {})))

    return app, demo


def test_the_flags_stand_after_the_named_parameter_and_reach_ctx_params_only():
    seen: dict = {}
    app, demo = make_app(seen)
    assert list(inspect.signature(demo).parameters) == ["ctx", "first", *NAMES, "last"]
    result = CliRunner().invoke(app, ["x", "--heads", "3", "--layers", "1,15", "--last", "5"])
    assert result.exit_code == 0, result.output
    assert (seen["first"], seen["last"]) == ("x", 5)
    flags = {name: seen["params"][name] for name in NAMES}
    assert flags == {**dict.fromkeys(NAMES), "heads": 3, "layers": "1,15"}
    result = CliRunner().invoke(app, ["--help"])
    assert result.exit_code == 0
    for flag in ("--preset", "--ngram-vocab", "--max-ngram", "--pad-id", "--config"):
        assert flag in result.output


def test_a_direct_call_binds_positional_arguments_too():
    seen: dict = {}
    _, demo = make_app(seen)
    demo(None, "y", None, None, None, None, None, None, None, None, 7)
    assert (seen["first"], seen["last"]) == ("y", 7)


def test_an_unknown_anchor_is_a_bug_at_import_time():
    with pytest.raises(ValueError):
        layout_flags(after="nope")(lambda vocab: None)
