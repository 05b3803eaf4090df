"""``engramctl history | revert | compact | edit``: a table's commits (rows written over its base).

Each command calls one library function (:mod:`engramctl.table.commits`,
:mod:`engramctl.table.edit`) and renders it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table as RichTable

from ..errors import UsageError
from ..model.learn import DEFAULT_LR, DEFAULT_STEPS
from .app import STATE, command, console, err_console
from .options import (
    CommitsDirOpt,
    Device,
    JsonFlag,
    ModelFlags,
    StorageOpt,
    finite_number,
    load_vocab,
    storage_options_of,
)

TableArg = Annotated[
    str,
    typer.Argument(
        help="Table directory (a zarr v3 group), or its URL (s3://...) with --commits-dir."
    ),
]


def _where(table: str, storage_option: list[str] | None, commits_dir: Path | None) -> dict:
    """The keyword arguments naming where a table and its commits are."""
    return {
        "storage_options": storage_options_of(storage_option),
        "commits_dir": commits_dir,
    }


def _made_by(made_by: dict) -> str:
    kind = made_by.get("kind", "?")
    if kind == "train" and made_by.get("run_id"):
        mode = f" ({made_by['mode']})" if made_by.get("mode") else ""
        return f"train run {made_by['run_id']}{mode}"
    if kind == "edit" and made_by.get("operation") == "learn":
        losses = made_by.get("losses") or {}
        took = "continues it" if made_by.get("continues") else "does not continue it yet"
        return (
            f"learn (model {made_by.get('model')}, {made_by.get('steps')} steps, fact loss "
            f"{losses.get('before', float('nan')):.3f} -> {losses.get('after', float('nan')):.3f}, "
            f"{took})"
        )
    if kind == "compact":
        return f"compaction of {len(made_by.get('merged') or [])} commits"
    extra = ", ".join(f"{k} {v}" for k, v in made_by.items() if k != "kind")
    return f"{kind} ({extra})" if extra else kind


@command("history")
def history_command(
    table: TableArg,
    commits_dir: CommitsDirOpt = None,
    storage_option: StorageOpt = None,
    json_out: JsonFlag = False,
) -> None:
    """The commits of a table, oldest first: id, time, rows per layer, bytes, what made it;
    then the reverts and compactions, and the training runs that wrote rows.

    Example:
    engramctl history table.zarr --json
    """
    from .._system import format_bytes
    from ..table.commits import table_history

    history = table_history(table, **_where(table, storage_option, commits_dir))
    if json_out:
        typer.echo(json.dumps(history.to_dict()))
        return
    if not history.commits:
        console.print(f"{table}: no commits (the table reads its base)")
    else:
        grid = RichTable(title=f"{table}: {len(history.commits)} commits over the base")
        for name in ("id", "time", "rows per layer", "bytes", "made by", "message"):
            grid.add_column(name, justify="right" if name == "bytes" else "left")
        for c in history.commits:
            rows = ", ".join(f"{k}: {v.rows:,}" for k, v in sorted(c.layers.items()))
            grid.add_row(c.id, c.time, rows, format_bytes(c.bytes), _made_by(c.made_by), c.message)
        console.print(grid)
    if history.events and not STATE["quiet"]:
        for event in history.events:
            what = f"compaction of {len(event.get('merged') or [])} commits"
            if event.get("kind") == "revert":
                dropped = len(event.get("dropped") or [])
                what = f"revert to {event.get('to')} (dropped {dropped} commits)"
            elif event.get("kind") == "compact-into-base":
                what += f" into the base ({event.get('chunks')} chunks rewritten)"
            console.print(f"  {event.get('time')}: {what}", markup=False)
    for run in history.runs if not STATE["quiet"] else ():
        steps = run.get("checkpoint_step", run.get("steps"))
        state = " (incomplete)" if run.get("incomplete") else ""
        console.print(
            f"  run {run.get('run_id')}: {run.get('mode', '?')}, step {steps} of "
            f"{run.get('steps')}, checkpoint {run.get('checkpoint')}{state}",
            markup=False,
        )


@command("revert")
def revert_command(
    table: TableArg,
    to: Annotated[
        str,
        typer.Option(
            "--to",
            help="The commit the table reads as after (an id or a unique "
            "prefix of one), or 'base' to drop every commit.",
        ),
    ],  # fmt: skip
    commits_dir: CommitsDirOpt = None,
    storage_option: StorageOpt = None,
    json_out: JsonFlag = False,
) -> None:
    """Make a table read as it was at a commit; the later commits are dropped (refused while a
    writer holds the table; readers open before keep their snapshot).

    Example:
    engramctl revert table.zarr --to base
    """
    from ..table.commits import revert_table

    result = revert_table(table, to, **_where(table, storage_option, commits_dir))
    if json_out:
        typer.echo(json.dumps(result.to_dict()))
        return
    head = result.head or "the base"
    if not result.dropped:
        console.print(f"{table}: already at {head}; nothing dropped")
    else:
        console.print(
            f"{table}: reads as at {head}; dropped {len(result.dropped)} commits "
            f"({', '.join(result.dropped[:5])}{' ...' if len(result.dropped) > 5 else ''})"
        )


@command("compact")
def compact_command(
    table: TableArg,
    into_base: Annotated[
        bool,
        typer.Option(
            "--into-base",
            help="Fold the commits into the base's chunk files (each touched chunk rewritten "
            "once) and drop them; the base must be an engramctl table (not a link) and no "
            "reader may have it open.",
        ),
    ] = False,
    commits_dir: CommitsDirOpt = None,
    storage_option: StorageOpt = None,
    json_out: JsonFlag = False,
) -> None:
    """Merge a table's commits into one (one segment per layer), or with --into-base into the
    base's chunks; it reads the same after.

    Kill-safe and resumable: run it again after an interruption.

    Example:
    engramctl compact table.zarr --into-base
    """
    from .._system import format_bytes

    where = _where(table, storage_option, commits_dir)
    if into_base and (commits_dir is not None or where["storage_options"] or "://" in table):
        from ..errors import UsageError

        raise UsageError(
            "--into-base rewrites the base's chunk files, and a base whose commits live in "
            "--commits-dir (a table at a URL) is only read; compact without --into-base"
        )
    if into_base:
        from ..table.intobase import compact_into_base

        folded = compact_into_base(table)
        if json_out:
            typer.echo(json.dumps(folded.to_dict()))
        elif not folded.commits_merged:
            console.print(f"{table}: nothing to compact (no commits)")
        else:
            chunks = ", ".join(f"layer {k}: {v:,}" for k, v in sorted(folded.chunks.items()))
            console.print(
                f"{table}: {folded.commits_merged} commits folded into the base ({chunks} chunks "
                f"rewritten, {format_bytes(folded.bytes_written)}); "
                f"{format_bytes(folded.commit_bytes)} of commits dropped"
            )
        return
    from ..table.commits import compact_table

    result = compact_table(table, **where)
    if json_out:
        typer.echo(json.dumps(result.to_dict()))
        return
    if not result.commits_merged:
        console.print(f"{table}: nothing to compact (at most one commit)")
        return
    rows = ", ".join(f"layer {k}: {v:,}" for k, v in sorted(result.rows.items()))
    console.print(
        f"{table}: {result.commits_merged} commits merged into one ({rows} rows); "
        f"{format_bytes(result.bytes_before)} -> {format_bytes(result.bytes_after)}"
    )


@command("edit")
def edit_command(
    table: TableArg,
    text: Annotated[
        str,
        typer.Option("--text", help="The phrase whose rows are edited (with --learn: the fact)."),
    ],
    vocab: Annotated[
        Path | None,
        typer.Option(
            "--vocab",
            help="Canonical vocab Parquet file (from engramctl build-vocab); --learn uses the "
            "model's.",
        ),
    ] = None,
    reset: Annotated[
        bool, typer.Option("--reset", help="Set the rows to their init values (delete).")
    ] = False,
    from_table: Annotated[
        Path | None,
        typer.Option("--from", help="Copy the rows from this table (same layout and vocab)."),
    ] = None,
    scale: Annotated[
        float | None,
        typer.Option("--scale", help="Multiply the rows by X.", callback=finite_number),
    ] = None,
    learn: Annotated[
        bool,
        typer.Option(
            "--learn",
            help="Train the rows (backbone frozen) until --model continues the fact greedily.",
        ),
    ] = False,
    model: Annotated[
        Path | None,
        typer.Option("--model", help="With --learn: the model (engramctl train --out)."),
    ] = None,
    steps: Annotated[
        int, typer.Option("--steps", help="With --learn: at most this many steps.")
    ] = DEFAULT_STEPS,
    lr: Annotated[
        float,
        typer.Option("--lr", help="With --learn: the rows' learning rate.", callback=finite_number),
    ] = DEFAULT_LR,
    prompt: Annotated[
        str | None,
        typer.Option(
            "--prompt",
            help="With --learn: how the fact starts, the part the model is given (default: its "
            "first token).",
        ),
    ] = None,
    benchmark: Annotated[
        Path | None,
        typer.Option(
            "--benchmark", help="With --learn: a held-out file measured before and after."
        ),
    ] = None,
    device: ModelFlags.Device = Device.auto,
    order: Annotated[
        int | None, typer.Option("--order", help="Only the heads of this n-gram order.")
    ] = None,
    tokenizer: Annotated[
        str, typer.Option("--tokenizer", help="Tokenizer for --text (must match the vocab).")
    ] = "deepseek-v4",
    commits_dir: CommitsDirOpt = None,
    storage_option: StorageOpt = None,
    json_out: JsonFlag = False,
) -> None:
    """Reset, copy, scale or train the rows a phrase's n-grams hash to (as lookup shows them),
    as one commit that history names and revert undoes.

    --learn writes a fact: only the fact's rows train (the model's files and every other row are
    untouched) until greedy decoding from the fact's start reproduces it, or --steps run out; it
    reports the fact's loss and greedy continuation before and after, and with --benchmark the
    held-out metrics before and after (what else moved).

    Example:
    engramctl edit t.zarr --text "The assert statement is a way" --learn --model m
    """
    if learn:
        if commits_dir is not None or storage_option:
            raise UsageError(
                "--learn trains a local table; --commits-dir and --storage-option are not taken "
                "with it yet (export the table with its commits and learn on the copy)"
            )
        _learn(table, text, vocab, model, steps, lr, prompt, benchmark, device.value, json_out,
               others=(reset, from_table, scale, order))  # fmt: skip
        return
    from ..table.edit import edit_phrase
    from ..tokenizer import encode_text

    if model is not None or benchmark is not None or prompt is not None:
        raise UsageError("--model, --benchmark and --prompt go with --learn")
    if vocab is None:
        raise UsageError("--reset, --from and --scale need --vocab (the table's vocab)")
    vocab_map = load_vocab(vocab)
    ids, _ = encode_text(text, tokenizer, vocab_map)
    result = edit_phrase(
        table, ids, vocab_map, reset=reset, from_table=from_table, scale=scale, order=order,
        text=text, **_where(table, storage_option, commits_dir),
    )  # fmt: skip
    if json_out:
        typer.echo(json.dumps(result.to_dict()))
        return
    rows = ", ".join(f"layer {k}: {v}" for k, v in sorted(result.rows.items()))
    console.print(f"{table}: commit {result.commit} ({result.operation}; rows {rows})")


def _learn(table, text, vocab, model, steps, lr, prompt, benchmark, device, json_out, *, others):
    """``edit --learn``: :func:`engramctl.model.learn.learn_fact`, rendered."""
    from ..model.learn import learn_fact
    from .progress import progress

    reset, from_table, scale, order = others
    if reset or from_table is not None or scale is not None or order is not None:
        raise UsageError("--learn goes alone: drop --reset, --from, --scale and --order")
    if model is None:
        raise UsageError("--learn needs --model MODEL_DIR (the model whose table this is)")
    vocab_map = load_vocab(vocab) if vocab is not None else None
    with progress("learn", enabled=not STATE["quiet"] and not json_out, unit="steps",
                  detail="loss {loss:.3f}", transient=True) as update:  # fmt: skip
        result = learn_fact(
            table, text, model=model, steps=steps, lr=lr, prompt=prompt, benchmark=benchmark,
            device=device, vocab=vocab_map, on_step=lambda done, total, loss: update(
                done, total, loss=loss),
        )  # fmt: skip
    if json_out:
        typer.echo(json.dumps(result.to_dict()))
        return
    b, a = result.before, result.after
    if result.commit is None:
        what = (
            "the model continues the fact already; nothing written"
            if result.stopped == "already"
            else f"no row changed in {result.steps} steps; nothing written (raise --lr)"
        )
        console.print(f"{table}: {what}", markup=False)
    else:
        rows = ", ".join(f"layer {k}: {v}" for k, v in sorted(result.rows.items()))
        console.print(
            f"{table}: commit {result.commit} (learn; {result.steps} steps; rows {rows})",
            markup=False,
        )
    console.print(f"  fact loss {b.loss:.3f} -> {a.loss:.3f} nats/token", markup=False)
    console.print(
        f"  after {result.prompt!r} the model continues {a.greedy!r} "
        f"(before: {b.greedy!r}): {'the fact' if a.continues else 'not the fact yet'}",
        markup=False,
    )
    if result.benchmark is not None:
        hb, ha = result.benchmark["before"], result.benchmark["after"]
        key = "loss" if "loss" in hb else "acc"
        console.print(
            f"  {result.benchmark['path']}: {key} {hb[key]:.4f} -> {ha[key]:.4f} "
            f"({ha[key] - hb[key]:+.4f})",
            markup=False,
        )
    if result.commit is not None and not a.continues:
        err_console.print(
            f"warning: the model does not continue the fact after {result.steps} steps; the "
            "rows are committed all the same (revert undoes them): raise --steps or --lr"
        )
