"""``engramctl history | revert | compact``: a table's commits (rows written over its base).

Each command calls one library function of :mod:`engramctl.table.commits` and renders it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table as RichTable

from .app import STATE, command, console
from .options import JsonFlag

TableArg = Annotated[Path, typer.Argument(help="Table directory (a zarr v3 group).")]


def _made_by(made_by: dict) -> str:
    kind = made_by.get("kind", "?")
    if kind == "train" and made_by.get("run_id"):
        return f"train run {made_by['run_id']}"
    if kind == "compact":
        return f"compaction of {len(made_by.get('merged') or [])} commits"
    extra = ", ".join(f"{k} {v}" for k, v in made_by.items() if k != "kind")
    return f"{kind} ({extra})" if extra else kind


@command("history")
def history_command(table: TableArg, json_out: JsonFlag = False) -> None:
    """The commits of a table, oldest first: id, time, rows per layer, bytes, what made it.

    Example:
    engramctl history table.zarr --json
    """
    from .._system import format_bytes
    from ..table.commits import table_history

    history = table_history(table)
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
            what = (
                f"revert to {event.get('to')} (dropped {len(event.get('dropped') or [])} commits)"
                if event.get("kind") == "revert"
                else f"compaction of {len(event.get('merged') or [])} commits"
            )
            console.print(f"  {event.get('time')}: {what}", markup=False)


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
    json_out: JsonFlag = False,
) -> None:
    """Make a table read as it was at a commit; the later commits are dropped (refused while a
    writer holds the table; readers open before keep their snapshot).

    Example:
    engramctl revert table.zarr --to base
    """
    from ..table.commits import revert_table

    result = revert_table(table, to)
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
def compact_command(table: TableArg, json_out: JsonFlag = False) -> None:
    """Merge a table's commits into one (one segment per layer); it reads the same after.

    Kill-safe and resumable: run it again after an interruption.

    Example:
    engramctl compact table.zarr
    """
    from .._system import format_bytes
    from ..table.commits import compact_table

    result = compact_table(table)
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
