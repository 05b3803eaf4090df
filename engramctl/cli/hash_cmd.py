"""``engramctl hash``: which table rows does my text (or id array) touch?"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import numpy as np
import typer
from rich.table import Table

from .app import command, console
from .options import (
    JsonFlag,
    LayoutFlags,
    OverwriteOpt,
    VocabOpt,
    load_vocab,
    resolve_layout_flags,
)

DeadIdsOpt = Annotated[
    str | None,
    typer.Option(
        "--dead-ids",
        help="Raw ids that are dead (image) positions, besides negative ids: ID,...,>=ID, or "
        "v4.1-vision (SGLang's rule: 129264,>=1000000).",
    ),
]


def parse_dead_ids(text: str | None):
    """``--dead-ids`` as a :class:`~engramctl.dead.DeadRule` (``None`` when not given)."""
    from ..dead import DeadRule
    from ..errors import EngramError, UsageError

    if text is None:
        return None
    try:
        return DeadRule.parse(text)
    except EngramError as exc:
        raise UsageError(f"--dead-ids: {exc}") from None


@command("hash")
def hash_command(
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
    text: Annotated[str | None, typer.Option("--text", help="Text to tokenize and hash.")] = None,
    ids_file: Annotated[
        Path | None,
        typer.Option(
            "--ids-file",
            help=".npy of int64 raw token ids, [T] or [B, T]; a negative id is a dead position.",
        ),
    ] = None,
    dead_spans: Annotated[
        str | None,
        typer.Option(
            "--dead-spans",
            help="Dead (image) positions START:STOP,... (STOP exclusive), in every sequence: "
            "no n-gram crosses them.",
        ),
    ] = None,
    dead_ids: DeadIdsOpt = None,
    tokenizer: Annotated[
        str, typer.Option("--tokenizer", help="Tokenizer for --text (must match the vocab).")
    ] = "deepseek-v4",
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Write layer_<id> arrays to this .npz.")
    ] = None,
    table_rows: Annotated[
        bool, typer.Option("--table-rows", help="Add head offsets: rows of the whole layer table.")
    ] = False,
    overwrite: OverwriteOpt = False,
    json_out: JsonFlag = False,
) -> None:
    """Hash text or token ids to the row id of every head of every Engram layer.

    Example:
    engramctl hash --vocab vocab.parquet --preset demo-v1 --text "Hello world"
    """
    from .._files import atomic_write, check_not_an_input, check_writable_target
    from ..dead import parse_spans, spans_mask
    from ..errors import EngramError, UsageError
    from ..hashing import NgramHasher
    from ..tokenizer import encode_text
    from ..vocab import read_ids_file

    if (text is None) == (ids_file is None):
        raise UsageError("give exactly one of --text or --ids-file")
    if out is not None:
        check_not_an_input(out, [ids_file, vocab], what=f"--out {out}")
        check_writable_target(out, overwrite=overwrite)
    vocab_map = load_vocab(vocab)
    layout = resolve_layout_flags(ctx.params, vocab_map).layout
    if text is not None:
        ids, pieces = encode_text(text, tokenizer, vocab_map)
    else:
        ids = read_ids_file(ids_file)
        pieces = vocab_map.pieces(ids.reshape(-1, ids.shape[-1])[0])  # the first sequence
    rule = parse_dead_ids(dead_ids)
    dead = None
    if dead_spans is not None:
        try:
            mask = spans_mask(parse_spans(dead_spans), ids.shape[-1])
        except EngramError as exc:
            raise UsageError(f"--dead-spans: {exc}") from None
        dead = np.broadcast_to(mask, ids.shape)
    hasher = NgramHasher(layout, vocab_map, dead_rule=rule)
    hashes = hasher.hash(ids, table_rows=table_rows, dead=dead)
    canonical = hasher.canonical(ids, dead=dead)
    if out is not None:
        with atomic_write(out) as handle:
            np.savez(handle, **{f"layer_{layer}": rows for layer, rows in hashes.items()})
    if json_out:
        doc = {
            "ids": ids.tolist(),
            "canonical_ids": canonical.tolist(),
            "layers": {str(layer): rows.tolist() for layer, rows in hashes.items()},
            "layout": layout.to_dict(),
        }
        if text is not None:
            doc["tokens"] = pieces
        if out is not None:
            doc["out"] = str(out)
        typer.echo(json.dumps(doc))
        return
    if out is not None:
        shapes = ", ".join(f"layer_{k} {list(v.shape)}" for k, v in hashes.items())
        console.print(f"wrote {out}: {shapes}")
        return
    _print_rows(ids, canonical, pieces, layout, hashes)


def _print_rows(ids, canonical, pieces, layout, hashes) -> None:
    from .vocab_cmd import show_token

    flat_ids = ids.reshape(-1, ids.shape[-1])
    if flat_ids.shape[0] > 1:
        console.print(f"showing the first of {flat_ids.shape[0]} sequences")
    flat_ids = flat_ids[0]
    canonical = canonical.reshape(-1, canonical.shape[-1])[0]
    limit = 200
    for layer_id, rows in hashes.items():
        rows = rows.reshape(-1, *rows.shape[-2:])[0]
        table = Table(title=f"layer {layer_id}: row id per head (heads of one order together)")
        table.add_column("pos", justify="right")
        table.add_column("token")
        table.add_column("id", justify="right")
        table.add_column("canon", justify="right")
        for n in range(2, layout.max_ngram + 1):
            table.add_column(f"{n}-gram heads")
        for t in range(min(len(flat_ids), limit)):
            token = show_token(pieces[t]) if pieces else ""
            token = "(dead)" if canonical[t] < 0 else token
            cells = []
            for n in range(2, layout.max_ngram + 1):
                part = rows[t, (n - 2) * layout.heads : (n - 1) * layout.heads]
                cells.append(" ".join(str(int(r)) for r in part))
            canon = "dead" if canonical[t] < 0 else str(int(canonical[t]))
            table.add_row(str(t), token, str(int(flat_ids[t])), canon, *cells)
        console.print(table)
    if len(flat_ids) > limit:
        console.print(f"(first {limit} of {len(flat_ids)} positions shown; use --out or --json)")
