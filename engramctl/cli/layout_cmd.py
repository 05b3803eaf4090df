"""``engramctl layout``: rows per head and layer, and what a table of that layout weighs."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.table import Table

from .app import command, console
from .options import (
    ConfigOpt,
    HeadsOpt,
    JsonFlag,
    LayersOpt,
    MaxNgramOpt,
    NgramVocabOpt,
    PadIdOpt,
    PresetOpt,
    SeedOpt,
    VocabOpt,
    build_layout,
    layout_defaults,
    load_vocab,
)


def layout_report(layout, *, dim: int, dtype: str) -> dict:
    """Rows, offsets and bytes per layer of a layout stored at ``dim``/``dtype``."""
    from ..table.dtypes import row_bytes

    per_row = row_bytes(dim, dtype)
    layers = {}
    for layer_id in layout.layers:
        rows = layout.layer_rows(layer_id)
        layers[str(layer_id)] = {
            "rows": rows,
            "head_rows": layout.head_rows(layer_id).tolist(),
            "head_offsets": layout.head_offsets(layer_id).tolist(),
            "multipliers": layout.multipliers(layer_id).tolist(),
            "bytes": rows * per_row,
        }
    return {
        "layout": layout.to_dict(),
        "dim": dim,
        "dtype": dtype,
        "row_bytes": per_row,
        "layers": layers,
        "total_rows": layout.total_rows,
        "total_bytes": layout.total_rows * per_row,
    }


@command("layout")
def layout_command(
    vocab: VocabOpt,
    preset: PresetOpt = None,
    ngram_vocab: NgramVocabOpt = None,
    max_ngram: MaxNgramOpt = None,
    heads: HeadsOpt = None,
    layers: LayersOpt = None,
    seed: SeedOpt = None,
    pad_id: PadIdOpt = None,
    config: ConfigOpt = None,
    dim: Annotated[
        int | None, typer.Option("--dim", help="Values per head row. [default: the preset's]")
    ] = None,
    dtype: Annotated[
        str | None,
        typer.Option(
            "--dtype",
            help="float32, bfloat16, float16 or float8_e4m3fn. [default: the preset's]",
        ),
    ] = None,
    json_out: JsonFlag = False,
) -> None:
    """Show a layout's rows per head and layer, and the size of a table stored with it.

    Example: engramctl layout --vocab vocab.parquet --preset deepseek-v4.1

    Example: engramctl layout --vocab vocab.parquet --config DeepSeek-V4.1/config.json
    """
    from ..table.dtypes import format_bytes, parse_dtype

    vocab_map = load_vocab(vocab)
    layout = build_layout(
        vocab_map,
        preset=preset,
        ngram_vocab=ngram_vocab,
        max_ngram=max_ngram,
        heads=heads,
        layers=layers,
        seed=seed,
        pad_id=pad_id,
        config=config,
    )
    default_dim, default_dtype = layout_defaults(preset, config)
    dim = dim if dim is not None else default_dim
    dtype = parse_dtype(dtype if dtype is not None else default_dtype)
    report = layout_report(layout, dim=dim, dtype=dtype)
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
