"""``engramctl layout``: rows per head and layer, and what a table of that layout weighs."""

from __future__ import annotations

import json

import typer
from rich.table import Table

from .app import command, console
from .options import (
    DimOpt,
    DtypeOpt,
    JsonFlag,
    LayoutFlags,
    VocabOpt,
    load_vocab,
    resolve_layout_flags,
)


@command("layout")
def layout_command(
    ctx: typer.Context,
    vocab: VocabOpt,
    preset: LayoutFlags.Preset = None,
    ngram_vocab: LayoutFlags.NgramVocab = None,
    max_ngram: LayoutFlags.MaxNgram = None,
    heads: LayoutFlags.Heads = None,
    layers: LayoutFlags.Layers = None,
    seed: LayoutFlags.Seed = None,
    pad_id: LayoutFlags.PadId = None,
    config: LayoutFlags.Config = None,
    dim: DimOpt = None,
    dtype: DtypeOpt = None,
    json_out: JsonFlag = False,
) -> None:
    """Show a layout's rows per head and layer, and the size of a table stored with it.

    Example:
    engramctl layout --vocab vocab.parquet --preset deepseek-v4.1
    """
    from .._system import format_bytes
    from ..layout import layout_report
    from ..table.core.dtypes import parse_dtype, row_bytes

    resolved = resolve_layout_flags(ctx.params, load_vocab(vocab))
    dim = dim if dim is not None else resolved.dim
    dtype = parse_dtype(dtype.value if dtype is not None else resolved.dtype)
    layout = resolved.layout
    report = layout_report(layout, dim=dim, dtype=dtype, row_bytes=row_bytes(dim, dtype))
    if json_out:
        typer.echo(json.dumps(report))
        return
    lay = layout
    console.print(
        f"layout: orders 2..{lay.max_ngram}, {lay.heads} heads per order, layers "
        f"{list(lay.layers)}, ngram_vocab {list(lay.ngram_vocab)}, seed {lay.seed}, pad id "
        f"{lay.pad_id}, canonical vocab {lay.vocab_size:,}"
    )
    for layer_id in lay.layers:
        info = report["layers"][str(layer_id)]
        table = Table(
            title=f"layer {layer_id}: {info['rows']:,} rows, {format_bytes(info['bytes'])}"
        )
        table.add_column("head", justify="right")
        table.add_column("order", justify="right")
        table.add_column("rows (prime)", justify="right")
        table.add_column("offset", justify="right")
        for h, (rows, offset) in enumerate(
            zip(info["head_rows"], info["head_offsets"], strict=True)
        ):
            table.add_row(str(h), str(2 + h // lay.heads), f"{rows:,}", f"{offset:,}")
        console.print(table)
    console.print(
        f"table at dim {dim} {dtype}: {report['row_bytes']} bytes per row, "
        f"{report['total_rows']:,} rows, [bold]{format_bytes(report['total_bytes'])}[/] on disk",
        soft_wrap=True,  # one line even when piped (`| tail -1` in the README)
    )
