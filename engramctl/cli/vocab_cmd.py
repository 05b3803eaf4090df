"""``engramctl build-vocab``: the tokenizer canonicalization map."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from .app import STATE, command, console
from .options import JsonFlag


def show_token(text: str) -> str:
    """Make whitespace visible: ``' apple'`` -> ``'␣apple'``."""
    return text.replace(" ", "␣").replace("\n", "⏎").replace("\t", "⇥")


@command("build-vocab")
def build_vocab(
    out: Annotated[Path, typer.Option("--out", "-o", help="Parquet file to write.")] = Path(
        "vocab.parquet"
    ),
    tokenizer: Annotated[
        str,
        typer.Option(
            "--tokenizer", "-t", help="Path to a tokenizer.json, or 'deepseek-v4' (bundled)."
        ),
    ] = "deepseek-v4",
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace an existing file.")
    ] = False,
    json_out: JsonFlag = False,
) -> None:
    """Compute the canonical vocab: token ids folded by case, accents and whitespace.

    Example:
    engramctl build-vocab --tokenizer deepseek-v4 --out vocab.parquet
    """
    from .._files import check_not_an_input, check_writable_target
    from ..vocab import CanonicalVocab

    check_not_an_input(out, [tokenizer], what=f"--out {out}")
    check_writable_target(out, overwrite=overwrite)
    started = time.perf_counter()
    vocab = CanonicalVocab.from_tokenizer(tokenizer)
    vocab.save(out)
    seconds = time.perf_counter() - started
    summary = {
        "out": str(out),
        "tokenizer": tokenizer,
        "source_sha256": vocab.source_sha256,
        "source_vocab_size": vocab.source_vocab_size,
        "canonical_vocab_size": vocab.canonical_vocab_size,
        "reduction": round(vocab.reduction, 6),
        "fingerprint": vocab.fingerprint,
        "seconds": round(seconds, 3),
    }
    if json_out:
        groups = vocab.merged_groups(10)
        summary["largest_groups"] = [[vocab.texts[i] for i in group] for group in groups]
        typer.echo(json.dumps(summary))
        return
    if STATE["quiet"]:
        return
    console.print(
        f"[bold]{vocab.source_vocab_size:,}[/] token ids -> [bold]{vocab.canonical_vocab_size:,}"
        f"[/] canonical ids ([green]{vocab.reduction:.1%} fewer[/]) in {seconds:.1f}s"
    )
    console.print(f"wrote {out}  fingerprint {vocab.fingerprint}")
    table = Table(title="largest merged groups", show_lines=False)
    table.add_column("key")
    table.add_column("ids", justify="right")
    table.add_column("tokens")
    for group in vocab.merged_groups(10):
        shown = " / ".join(show_token(vocab.texts[i]) for i in group[:8])
        if len(group) > 8:
            shown += f" / ... (+{len(group) - 8})"
        table.add_row(show_token(vocab.keys[group[0]]), str(len(group)), shown)
    console.print(table)
