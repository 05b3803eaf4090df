"""``engramctl lookup``: what a table holds for a phrase (row per head, its norm and values)."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.table import Table

from .app import command, console
from .options import CommitsDirOpt, JsonFlag, StorageOpt, VocabOpt, load_vocab, storage_options_of


@command("lookup")
def lookup_command(
    table: Annotated[str, typer.Argument(help="Table directory (copied, linked or lazy).")],
    text: Annotated[str, typer.Option("--text", help="Text to tokenize and look up.")],
    vocab: VocabOpt,
    tokenizer: Annotated[
        str, typer.Option("--tokenizer", help="Tokenizer for --text (must match the vocab).")
    ] = "deepseek-v4",
    values: Annotated[
        int, typer.Option("--values", help="Also show each row's first K dequantized values.")
    ] = 0,
    commits_dir: CommitsDirOpt = None,
    storage_option: StorageOpt = None,
    json_out: JsonFlag = False,
) -> None:
    """Per token of a text, each head's row id and that row's dequantized L2 norm.

    The text is hashed with the table's own layout (the vocab must be the table's); rows are
    read from the table as the engines decode them (e4m3 * 2**(e - 127) for fp8).

    Example:
    engramctl lookup v41.zarr --vocab vocab.parquet --text "the Great" --values 4
    """
    from ..table.lookup import lookup_rows
    from ..table.sources.table import open_table
    from ..tokenizer import encode_text

    vocab_map = load_vocab(vocab)
    options = storage_options_of(storage_option)
    with open_table(
        table, vocab=vocab_map, storage_options=options, commits_dir=commits_dir
    ) as opened:
        ids, pieces = encode_text(text, tokenizer, vocab_map)
        report = lookup_rows(opened, ids, vocab_map, values=values, tokens=pieces)
    if json_out:
        typer.echo(json.dumps(report.to_dict()))
        return
    from .vocab_cmd import show_token

    for layer_id, positions in report.layers.items():
        grid = Table(title=f"layer {layer_id}: rows per head")
        for name in ("pos", "token", "head", "order", "row id", "table row", "L2 norm"):
            grid.add_column(name, justify="left" if name == "token" else "right")
        if values:
            grid.add_column(f"first {values} values")
        for t, heads in enumerate(positions):
            for h in heads:
                cells = [
                    str(t) if h.head == 0 else "",
                    show_token(pieces[t]) if h.head == 0 else "",
                    str(h.head),
                    str(h.order),
                    f"{h.row_id:,}",
                    f"{h.table_row:,}",
                    f"{h.norm:.4g}",
                ]
                if values:
                    cells.append(" ".join(f"{v:.3g}" for v in h.values))
                grid.add_row(*cells)
        console.print(grid)
