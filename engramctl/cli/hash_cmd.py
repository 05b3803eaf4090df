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
    load_vocab,
)


def read_ids_file(path: Path) -> np.ndarray:
    """A ``.npy`` of integer token ids, ``[T]`` or ``[B, T]``."""
    from ..errors import EngramError
    from ..vocab import as_int64_ids

    if not path.exists():
        raise EngramError(f"ids file not found: {path}")
    try:
        ids = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        if "pickle" in str(exc):  # numpy's guess for a file without the .npy magic
            raise EngramError(f"{path} is not a .npy file (save the ids with numpy.save)") from None
        raise EngramError(f"{path} is not a readable .npy array ({exc})") from exc
    if not isinstance(ids, np.ndarray):
        ids.close()  # an .npz archive
        raise EngramError(f"{path} holds several arrays; give a single .npy array")
    if ids.dtype.kind not in "iu":
        raise EngramError(f"{path}: token ids must be integers (int64), got dtype {ids.dtype}")
    if ids.ndim not in (1, 2):
        raise EngramError(f"{path}: token ids must be [T] or [B, T], got shape {list(ids.shape)}")
    if ids.size == 0:
        raise EngramError(f"{path} holds no token ids")
    try:
        return as_int64_ids(ids)
    except EngramError as exc:
        raise EngramError(f"{path}: {exc}") from None


def encode_text(text: str, tokenizer_source: str, vocab) -> tuple[np.ndarray, list[str]]:
    """Token ids (no special tokens) and their decoded pieces, refusing a foreign tokenizer."""
    from ..errors import EngramError
    from ..tokenizer import load_tokenizer

    if not text:
        raise EngramError("--text is empty; give some text to hash")
    tokenizer, info = load_tokenizer(tokenizer_source)
    if vocab.source_sha256 and vocab.source_sha256 != info.sha256:
        raise EngramError(
            f"the vocab was built from another tokenizer (sha256 {vocab.source_sha256[:12]}) than "
            f"{info.path} ({info.sha256[:12]}); pass the matching --tokenizer"
        )
    ids = tokenizer.encode(text, add_special_tokens=False).ids
    if not ids:
        raise EngramError("the text encodes to no tokens")
    pieces = [tokenizer.decode([i], skip_special_tokens=False) for i in ids]
    return np.array(ids, dtype=np.int64), pieces


@command("hash")
def hash_command(
    vocab: VocabOpt,
    preset: PresetOpt = None,
    ngram_vocab: NgramVocabOpt = None,
    max_ngram: MaxNgramOpt = None,
    heads: HeadsOpt = None,
    layers: LayersOpt = None,
    seed: SeedOpt = None,
    pad_id: PadIdOpt = None,
    config: ConfigOpt = None,
    text: Annotated[str | None, typer.Option("--text", help="Text to tokenize and hash.")] = None,
    ids_file: Annotated[
        Path | None, typer.Option("--ids-file", help=".npy of int64 raw token ids, [T] or [B, T].")
    ] = None,
    tokenizer: Annotated[
        str, typer.Option("--tokenizer", help="Tokenizer for --text (must match the vocab).")
    ] = "deepseek-v4",
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Write layer_<id> arrays to this .npz.")
    ] = None,
    table_rows: Annotated[
        bool, typer.Option("--table-rows", help="Add head offsets: rows of the whole layer table.")
    ] = False,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace an existing --out.")
    ] = False,
    json_out: JsonFlag = False,
) -> None:
    """Hash text or token ids to the row id of every head of every Engram layer.

    Example: engramctl hash --vocab vocab.parquet --preset demo-v1 --text "Hello world"
    """
    from .._files import atomic_write, check_writable_target
    from ..errors import UsageError
    from ..hashing import NgramHasher

    if (text is None) == (ids_file is None):
        raise UsageError("give exactly one of --text or --ids-file")
    if out is not None:
        check_writable_target(out, overwrite=overwrite)
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
    if text is not None:
        ids, pieces = encode_text(text, tokenizer, vocab_map)
    else:
        ids, pieces = read_ids_file(ids_file), None
    hashes = NgramHasher(layout, vocab_map).hash(ids, table_rows=table_rows)
    if out is not None:
        with atomic_write(out) as handle:
            np.savez(handle, **{f"layer_{layer}": rows for layer, rows in hashes.items()})
    if json_out:
        doc = {
            "ids": ids.tolist(),
            "canonical_ids": vocab_map.apply(ids).tolist(),
            "layers": {str(layer): rows.tolist() for layer, rows in hashes.items()},
            "layout": layout.to_dict(),
        }
        if pieces is not None:
            doc["tokens"] = pieces
        if out is not None:
            doc["out"] = str(out)
        typer.echo(json.dumps(doc))
        return
    if out is not None:
        shapes = ", ".join(f"layer_{k} {list(v.shape)}" for k, v in hashes.items())
        console.print(f"wrote {out}: {shapes}")
        return
    _print_rows(ids, pieces, vocab_map, layout, hashes)


def _print_rows(ids, pieces, vocab, layout, hashes) -> None:
    from .vocab_cmd import show_token

    flat_ids = ids.reshape(-1, ids.shape[-1])
    if flat_ids.shape[0] > 1:
        console.print(f"showing the first of {flat_ids.shape[0]} sequences")
    flat_ids = flat_ids[0]
    canonical = vocab.apply(flat_ids)
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
            cells = []
            for n in range(2, layout.max_ngram + 1):
                part = rows[t, (n - 2) * layout.heads : (n - 1) * layout.heads]
                cells.append(" ".join(str(int(r)) for r in part))
            table.add_row(str(t), token, str(int(flat_ids[t])), str(int(canonical[t])), *cells)
        console.print(table)
    if len(flat_ids) > limit:
        console.print(f"(first {limit} of {len(flat_ids)} positions shown; use --out or --json)")
