"""``engramctl hash-stats``: how badly do my corpus's n-grams collide at this table size?"""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer
from rich import box
from rich.markup import escape
from rich.table import Table

from ..errors import UsageError
from .app import STATE, command, console, err_console
from .options import (
    HeadsOpt,
    LayersOpt,
    MaxNgramOpt,
    NgramVocabOpt,
    PadIdOpt,
    PresetOpt,
    SchedulerOpt,
    SeedOpt,
    VocabOpt,
    build_layout,
    load_vocab,
)


class CorpusFormat(str, Enum):
    auto = "auto"
    text = "text"
    jsonl = "jsonl"
    parquet = "parquet"
    tokens = "tokens"


class TokenDtype(str, Enum):
    uint16 = "uint16"
    uint32 = "uint32"


def _pick_layout(vocab_map, layers: str | None, **flags):
    """Layers of the preset keep the preset's primes; other layer ids define a new layout."""
    from ..layout import parse_int_list

    base = build_layout(vocab_map, layers=None, **flags)
    if not layers:
        return base, base.layers
    wanted = parse_int_list(layers, name="--layers")
    if set(wanted) <= set(base.layers):
        return base, wanted
    layout = build_layout(vocab_map, layers=layers, **flags)
    return layout, layout.layers


def _table_layout(table: str, vocab_map, layers: str | None):
    """The layout of an existing table, refusing a vocab other than the one it was made for."""
    from ..errors import EngramError
    from ..layout import parse_int_list
    from ..table.format import read_group

    meta, _ = read_group(table)
    if meta.vocab_fingerprint != vocab_map.fingerprint:
        raise EngramError(
            f"table {table} was made for vocab {meta.vocab_fingerprint} but --vocab is "
            f"{vocab_map.fingerprint}; pass the vocab the table was created with"
        )
    if not layers:
        return meta.layout, meta.layout.layers
    wanted = parse_int_list(layers, name="--layers")
    missing = sorted(set(wanted) - set(meta.layout.layers))
    if missing:
        raise UsageError(f"--layers {missing} are not layers of table {table} {meta.layout.layers}")
    return meta.layout, wanted


def _progress_bar(total_bytes: int):
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(
        TextColumn("[bold]hash-stats"),
        BarColumn(),
        DownloadColumn(),
        TextColumn("{task.fields[docs]} docs, {task.fields[rate]} tok/s"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=err_console,
        transient=True,
    )


@command("hash-stats")
def hash_stats_command(
    corpus: Annotated[
        list[str], typer.Argument(help="Corpus files, directories or globs ('data/**/*.jsonl').")
    ],
    vocab: VocabOpt,
    preset: PresetOpt = None,
    ngram_vocab: NgramVocabOpt = None,
    max_ngram: MaxNgramOpt = None,
    heads: HeadsOpt = None,
    layers: LayersOpt = None,
    seed: SeedOpt = None,
    pad_id: PadIdOpt = None,
    table: Annotated[
        str | None,
        typer.Option(
            "--table",
            help="Take the layout from this table (path or URL) instead of --preset/layout flags.",
        ),
    ] = None,
    tokenizer: Annotated[
        str, typer.Option("--tokenizer", help="Tokenizer for text input (must match the vocab).")
    ] = "deepseek-v4",
    corpus_format: Annotated[
        CorpusFormat, typer.Option("--format", help="Input format; auto goes by file suffix.")
    ] = CorpusFormat.auto,
    text_field: Annotated[
        str, typer.Option("--text-field", help="JSON Lines field / Parquet column with the text.")
    ] = "text",
    tokens_field: Annotated[
        str | None,
        typer.Option("--tokens-field", help="Read token-id lists from this field/column instead."),
    ] = None,
    doc_sep: Annotated[
        bool, typer.Option("--doc-sep", help="Plain text: blank lines separate documents.")
    ] = False,
    doc_sep_id: Annotated[
        int | None, typer.Option("--doc-sep-id", help="Token streams: this id ends a document.")
    ] = None,
    token_dtype: Annotated[
        TokenDtype | None,
        typer.Option("--token-dtype", help="Flat token binaries: uint16 or uint32."),
    ] = None,
    sweep: Annotated[
        str | None,
        typer.Option("--sweep", help="Also report these rows per head, e.g. 1M,4M,16M."),
    ] = None,
    limit_tokens: Annotated[
        int | None, typer.Option("--limit-tokens", help="Stop after this many tokens.")
    ] = None,
    json_path: Annotated[
        Path | None,
        typer.Option("--json", help="Write the report as JSON to this file ('-': stdout)."),
    ] = None,
    plot: Annotated[Path | None, typer.Option("--plot", help="Write a PNG plot here.")] = None,
    max_memory: Annotated[
        str | None,
        typer.Option(
            "--max-memory", help="Refuse above this, e.g. 8G or 50% (default: 75% of RAM)."
        ),
    ] = None,
    threads: Annotated[
        int | None,
        typer.Option("--threads", help="Threads (default: CPU cores); results never depend on it."),
    ] = None,
    batch_tokens: Annotated[
        int, typer.Option("--batch-tokens", help="Tokens per counting batch.")
    ] = 1 << 20,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace existing --json/--plot files.")
    ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar or notes.")] = False,
    scheduler: SchedulerOpt = None,
) -> None:
    """Stream a corpus through the multi-head hashing; report collisions and occupancy.

    With --scheduler the files are cut into shards counted on Dask workers and the exact counts
    are merged in a tree: the report is the same as without it (see docs/scale-out.md).

    Example: engramctl hash-stats train.jsonl --vocab vocab.parquet --sweep 100k,1M --plot s.png
    """
    from .._files import atomic_write
    from .._outputs import check_output_target, save_with_fallback
    from ..corpus.readers import CorpusOptions
    from ..layout import parse_int_list
    from ..stats.run import (
        load_matching_tokenizer,
        parse_memory,
        plan_hash_stats,
        run_hash_stats,
    )

    quiet = quiet or STATE["quiet"]
    to_stdout = json_path is not None and str(json_path) == "-"
    for target in (None if to_stdout else json_path, plot):
        if target is not None:
            check_output_target(target, overwrite=overwrite)  # before the pass, not after
    vocab_map = load_vocab(vocab)
    if table is not None:
        flags = (preset, ngram_vocab, max_ngram, heads, seed, pad_id)
        if any(flag is not None for flag in flags):
            raise UsageError("--table fixes the layout; drop --preset and the layout flags")
        layout, layer_ids = _table_layout(table, vocab_map, layers)
    else:
        layout, layer_ids = _pick_layout(
            vocab_map, layers, preset=preset, ngram_vocab=ngram_vocab, max_ngram=max_ngram,
            heads=heads, seed=seed, pad_id=pad_id,
        )  # fmt: skip
    options = CorpusOptions(
        format=corpus_format.value, text_field=text_field, tokens_field=tokens_field,
        doc_sep=doc_sep, doc_sep_id=doc_sep_id,
        token_dtype=token_dtype.value if token_dtype else None, batch_tokens=batch_tokens,
    )  # fmt: skip
    plan = plan_hash_stats(
        corpus, layout=layout, layer_ids=layer_ids, options=options,
        sweep=parse_int_list(sweep, name="--sweep") if sweep else (),
        limit_tokens=limit_tokens, max_memory=parse_memory(max_memory), threads=threads,
    )  # fmt: skip
    text_tokenizer = load_matching_tokenizer(tokenizer, vocab_map) if plan.needs_tokenizer else None
    note = err_console.print if to_stdout else console.print
    if not quiet:
        from ..table.dtypes import format_bytes

        note(
            f"{len(plan.files)} file(s), {format_bytes(plan.bytes_total)}; accumulators need up to "
            f"{format_bytes(plan.memory_estimate)} for ~{plan.tokens_estimate:,} tokens "
            f"(--max-memory {format_bytes(plan.max_memory)})"
        )
    run = run_hash_stats
    if scheduler:
        from functools import partial

        from ..stats.run_dask import run_hash_stats_dask

        run = partial(run_hash_stats_dask, scheduler=scheduler)
    report = _run_with_progress(plan, vocab_map, text_tokenizer, quiet, run)
    saved = []  # a target that fails now (disk full) does not lose the pass: a fallback file
    if json_path is not None:
        if to_stdout:
            typer.echo(report.to_json())
        else:

            def write_json(path):
                with atomic_write(path, "w") as handle:
                    handle.write(report.to_json())

            saved.append(save_with_fallback(json_path, write_json))
    if plot is not None:
        from ..stats.plot import plot_report

        saved.append(save_with_fallback(plot, lambda path: plot_report(report, path)))
    if not to_stdout:
        _render(report)
        for item in saved:
            if item.failure is None:
                console.print(f"wrote {item.path}")
    for item in saved:
        if item.failure is not None:
            err_console.print(f"{item.failure}; wrote it to {item.path} instead")
    if any(item.failure is not None for item in saved):
        raise typer.Exit(1)
    if report.stopped_reason == "interrupted":
        err_console.print("interrupted: the figures cover what was read (partial)")
        raise typer.Exit(130)


def _run_with_progress(plan, vocab_map, text_tokenizer, quiet, run):
    import time

    if quiet:
        return run(plan, vocab=vocab_map, tokenizer=text_tokenizer)
    started = time.perf_counter()
    with _progress_bar(plan.bytes_total) as bar:
        task = bar.add_task("hash-stats", total=plan.bytes_total, docs=0, rate="-")

        def progress(done, total, docs, tokens):
            rate = tokens / max(time.perf_counter() - started, 1e-9)
            bar.update(task, completed=done, docs=f"{docs:,}", rate=f"{rate:,.0f}")

        return run(plan, vocab=vocab_map, tokenizer=text_tokenizer, progress=progress)


def _pct(value: float) -> str:
    return f"{100 * value:.3g}%"


def _render(report) -> None:
    head_line = (
        f"[bold]{report.tokens:,}[/] tokens, {report.documents:,} documents in "
        f"{report.seconds:.1f}s ({report.tokens_per_second:,.0f} tokens/s)"
    )
    if report.partial:
        head_line += f" [yellow]partial ({report.stopped_reason})[/]"
    console.print(head_line)
    for kind, entry in report.warnings.items():
        where = escape(str(entry["first"]))
        console.print(f"[yellow]warning[/]: {kind} x{entry['count']:,} (first: {where})")
    for layer, orders in report.layers.items():
        table = Table(
            title=f"layer {layer}: per head (ideal uniform hash in brackets)",
            box=box.SIMPLE_HEAD,
        )
        for name in ("n/head", "rows", "occupied", "collided rows", "colliding distinct",
                     "colliding occ.", "max load"):  # fmt: skip
            table.add_column(name, justify="right")
        for order, stats in orders.items():
            for h, head in enumerate(stats.heads):
                table.add_row(
                    f"{order}/{h}", f"{head.rows:,}",
                    f"{_pct(head.occupancy)} [{_pct(head.expected_occupied_rows / head.rows)}]",
                    f"{head.collided_rows:,} [{head.expected_collided_rows:,.0f}]",
                    f"{_pct(head.colliding_distinct_fraction)} "
                    f"[{_pct(head.expected_colliding_distinct_fraction)}]",
                    _pct(head.colliding_occurrence_fraction), str(head.max_row_load),
                )  # fmt: skip
            table.add_section()
        console.print(table)
        summary = Table(title=f"layer {layer}: per n-gram order", box=box.SIMPLE_HEAD)
        for name in ("order", "occurrences", "distinct", "all-heads colliding occ. (ideal)"):
            summary.add_column(name, justify="right")
        for order, stats in orders.items():
            summary.add_row(
                str(order), f"{stats.occurrences:,}", f"{stats.distinct:,}",
                f"{_pct(stats.all_heads_colliding_occurrence_fraction)} "
                f"({_pct(stats.expected_all_heads_colliding_occurrence_fraction)})",
            )  # fmt: skip
        console.print(summary)
    if report.sweep:
        _render_sweep(report)


def _render_sweep(report) -> None:
    layer = next(iter(report.layers))
    table = Table(
        title=f"sweep, layer {layer}: mean over heads (all-heads colliding occ.)",
        box=box.SIMPLE_HEAD,
    )
    table.add_column("rows per head", justify="right")
    orders = list(report.layers[layer])
    for order in orders:
        table.add_column(f"{order}-gram occupancy / colliding / all heads", justify="right")
    points = [(report.layout["ngram_vocab"], report.layers), *(
        (p.ngram_vocab, p.layers) for p in report.sweep)]  # fmt: skip
    for sizes, layers in sorted(points, key=lambda p: p[0][0]):
        cells = []
        for order in orders:
            s = layers[layer][order]
            cells.append(
                f"{_pct(s.mean_occupancy)} / {_pct(s.mean_colliding_distinct_fraction)} / "
                f"{_pct(s.all_heads_colliding_occurrence_fraction)}"
            )
        label = f"{sizes[0]:,}" if len(set(sizes)) == 1 else "/".join(f"{v:,}" for v in sizes)
        table.add_row(label, *cells)
    console.print(table)
