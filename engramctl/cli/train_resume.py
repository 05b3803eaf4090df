"""What ``engramctl train`` adds for resumable runs: ``--resume`` itself (:func:`resume_run`: flags
given on the command line must agree with the run; the record of a run's inputs is
:func:`engramctl.model.train.resume_run.run_inputs`), and the summary both print
(:func:`print_trained`)."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from .app import STATE, console
from .progress import progress


def resume_run(ctx: typer.Context, model_dir: Path, *, open_table, outcome=None):
    """``train --resume``: the run's own options; flags given too must agree with them."""
    from ..model.train.resume_run import check_resume_flags, plan_resume, resume_training

    plan = plan_resume(model_dir)
    given = {
        name: value
        for name, value in ctx.params.items()
        if name not in ("resume", "json_out", "overwrite", "continue_rows", "overwrite_rows")
        and given_on_command_line(ctx, name)
    }
    for flag, policy in (("continue_rows", "continue"), ("overwrite_rows", "overwrite")):
        if given_on_command_line(ctx, flag) and ctx.params[flag]:
            given["prior_runs"] = policy
    check_resume_flags(plan, given)
    detail = "loss {loss:.3f}, {tps:,.0f} tok/s"
    with progress(
        "train", enabled=not STATE["quiet"], unit="steps", detail=detail, transient=True
    ) as update:
        return resume_training(
            plan,
            open_table=lambda path, mode: open_table(path, mode=mode),
            on_step=lambda step, total, loss, tps: update(step, total, loss=loss, tps=tps),
            outcome=outcome,
        )


def given_on_command_line(ctx: typer.Context, name: str) -> bool:
    """Whether the user gave option ``name`` (not its default); by the source's name, as typer
    may bring its own click."""
    source = ctx.get_parameter_source(name)
    return getattr(source, "name", None) in ("COMMANDLINE", "ENVIRONMENT")


def print_trained(result, *, json_out: bool) -> None:
    """What ``train`` prints of its result (or one JSON document)."""
    if json_out:
        typer.echo(json.dumps(result.to_dict()))
        return
    held = f"{result.final_heldout_loss:.4f}" if result.final_heldout_loss is not None else "n/a"
    engram, out = result.table is not None, result.out_dir
    console.print(
        f"trained {'engram' if engram else 'baseline (--no-engram)'} model: {result.steps} steps, "
        f"{result.tokens:,} tokens ({result.passes:.2f} passes) in {result.seconds:.0f}s; "
        f"train loss {result.final_train_loss:.4f}, held-out loss {held}"
    )
    if engram:
        console.print(f"wrote {result.rows_written:,} trained rows back to {result.table}")
    if result.write_seconds:
        rate = result.rows_written / result.write_seconds
        console.print(
            f"out of core: {result.write_seconds:.1f}s writing rows ({rate:,.0f} rows/s) with "
            "their Adam moments, as commits of the table (engramctl history)"
        )
    if result.checkpoints:
        console.print(
            f"{result.checkpoints} periodic checkpoint(s) in {result.checkpoint_seconds:.1f}s"
            + (f" (resumed at step {result.resumed_from})" if result.resumed_from else "")
        )
    console.print(f"checkpoint {out}/ (loss curve {out}/loss_curve.png)")
