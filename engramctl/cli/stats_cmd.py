"""``engramctl hash-stats``: how badly do my corpus's n-grams collide at this table size?

The command parses its flags into a :class:`engramctl.stats.job.HashStatsJob`, calls
:func:`engramctl.stats.job.run_hash_stats_job`, and renders the report (rich tables, or the JSON
document with ``--json``).
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Annotated

import typer
from rich import box
from rich.markup import escape
from rich.table import Table

from .app import STATE, command, console, err_console
from .hash_cmd import DeadIdsOpt, parse_dead_ids
from .options import (
    CorpusFormat,
    JsonFlag,
    LayoutFlags,
    SchedulerOpt,
    TokenDtype,
    VocabOpt,
    load_vocab,
    refuse_outputs_naming_inputs,
    resolve_layout_flags,
)
from .progress import progress

# The options of hash-stats alone (the shared ones are in .options).
CorpusArg = Annotated[
    list[str], typer.Argument(help="Corpus files, directories or globs ('data/**/*.jsonl').")
]
TableOpt = Annotated[
    str | None,
    typer.Option(
        "--table",
        help="Take the layout from this table (path or URL) instead of --preset/layout flags.",
        rich_help_panel="Layout",
    ),
]
TokenizerOpt = Annotated[
    str, typer.Option("--tokenizer", help="Tokenizer for text input (must match the vocab).")
]
FormatOpt = Annotated[
    CorpusFormat, typer.Option("--format", help="Input format; auto goes by file suffix.")
]
TextFieldOpt = Annotated[
    str, typer.Option("--text-field", help="JSON Lines field / Parquet column with the text.")
]
TokensFieldOpt = Annotated[
    str | None,
    typer.Option("--tokens-field", help="Read token-id lists from this field/column instead."),
]
DocSepFlag = Annotated[
    bool, typer.Option("--doc-sep", help="Plain text: blank lines separate documents.")
]
DocSepIdOpt = Annotated[
    int | None,
    typer.Option("--doc-sep-id", help="Token streams: this id (0 or more) ends a document."),
]
TokenDtypeOpt = Annotated[
    TokenDtype | None,
    typer.Option("--token-dtype", help="Flat token binaries: uint16 or uint32."),
]
SweepOpt = Annotated[
    str | None,
    typer.Option("--sweep", help="Also report these rows per head, e.g. 1M,4M,16M."),
]
LimitTokensOpt = Annotated[
    int | None, typer.Option("--limit-tokens", help="Stop after this many tokens.")
]
ReportOpt = Annotated[
    Path | None, typer.Option("--report", help="Also write the JSON report to this file.")
]
PlotOpt = Annotated[Path | None, typer.Option("--plot", help="Write a PNG plot here.")]
MaxMemoryOpt = Annotated[
    str | None,
    typer.Option("--max-memory", help="Refuse above this, e.g. 8G or 50% (default: 75% of RAM)."),
]
ThreadsOpt = Annotated[
    int | None,
    typer.Option("--threads", help="Threads (default: CPU cores); results never depend on it."),
]
BatchTokensOpt = Annotated[int, typer.Option("--batch-tokens", help="Tokens per counting batch.")]
OverwriteOpt = Annotated[
    bool, typer.Option("--overwrite", help="Replace existing --report/--plot files.")
]
PartitionsOpt = Annotated[
    int | None,
    typer.Option(
        "--partitions",
        help="Count exactly in K key-space partitions (~1/K the memory; K passes without "
        "--scheduler). Default: 1, or the smallest K that fits --max-memory.",
    ),
]
EstimateFlag = Annotated[
    bool,
    typer.Option(
        "--estimate",
        help="Estimate distinct n-grams with HyperLogLog sketches (constant memory) and every "
        "figure from the ideal-hash formulas; no row-load histograms.",
    ),
]
ExtrapolateOpt = Annotated[
    str | None,
    typer.Option(
        "--extrapolate",
        metavar="TOKENS",
        help="Also predict the figures at a corpus of TOKENS tokens (e.g. 1e12, 500B) from "
        "Heaps' law fitted during the pass, with a check of the fit on the first 25%.",
    ),
]
SpillDirOpt = Annotated[
    Path | None,
    typer.Option(
        "--spill-dir", help="Where --partitions keeps each partition's n-grams (default: TMPDIR)."
    ),
]


@command("hash-stats")
def hash_stats_command(
    ctx: typer.Context,
    corpus: CorpusArg,
    vocab: VocabOpt,
    preset: LayoutFlags.Preset = None,
    ngram_vocab: LayoutFlags.NgramVocab = None,
    max_ngram: LayoutFlags.MaxNgram = None,
    heads: LayoutFlags.Heads = None,
    layers: LayoutFlags.Layers = None,
    seed: LayoutFlags.Seed = None,
    pad_id: LayoutFlags.PadId = None,
    config: LayoutFlags.Config = None,
    table: TableOpt = None,
    tokenizer: TokenizerOpt = "deepseek-v4",
    corpus_format: FormatOpt = CorpusFormat.auto,
    text_field: TextFieldOpt = "text",
    tokens_field: TokensFieldOpt = None,
    doc_sep: DocSepFlag = False,
    doc_sep_id: DocSepIdOpt = None,
    dead_ids: DeadIdsOpt = None,
    token_dtype: TokenDtypeOpt = None,
    sweep: SweepOpt = None,
    limit_tokens: LimitTokensOpt = None,
    json_out: JsonFlag = False,
    report_path: ReportOpt = None,
    plot: PlotOpt = None,
    max_memory: MaxMemoryOpt = None,
    threads: ThreadsOpt = None,
    batch_tokens: BatchTokensOpt = 1 << 20,
    overwrite: OverwriteOpt = False,
    scheduler: SchedulerOpt = None,
    partitions: PartitionsOpt = None,
    estimate: EstimateFlag = False,
    extrapolate: ExtrapolateOpt = None,
    spill_dir: SpillDirOpt = None,
) -> None:
    """Stream a corpus through the multi-head hashing; report collisions and occupancy.

    With --scheduler the files are cut into shards counted on Dask workers and the exact counts
    are merged in a tree: the report is the same as without it (see docs/scale-out.md).
    --partitions K splits the n-grams by a hash of the key into K partitions counted one after
    another (or on the workers): the same report in about 1/K of the memory.

    --estimate answers in constant memory from HyperLogLog sketches (ideal-hash figures), and
    --extrapolate 1e12 predicts the figures at 10^12 tokens from Heaps' law (docs/hash-stats.md).

    Example:
    engramctl hash-stats train.jsonl --vocab vocab.parquet \\
        --sweep 100k,1M --report stats.json --plot stats.png
    """
    from .._system import parse_memory
    from ..corpus.files import CorpusOptions
    from ..layout import parse_int_list
    from ..stats.extrapolate import parse_tokens
    from ..stats.job import HashStatsJob, run_hash_stats_job

    job = HashStatsJob(
        inputs=tuple(corpus), tokenizer=tokenizer,
        corpus=CorpusOptions(
            format=corpus_format.value, text_field=text_field, tokens_field=tokens_field,
            doc_sep=doc_sep, doc_sep_id=doc_sep_id, dead_rule=parse_dead_ids(dead_ids),
            token_dtype=token_dtype.value if token_dtype else None, batch_tokens=batch_tokens,
        ),
        sweep=parse_int_list(sweep, name="--sweep") if sweep else (), limit_tokens=limit_tokens,
        max_memory=parse_memory(max_memory), threads=threads, partitions=partitions,
        spill_dir=str(spill_dir) if spill_dir else None, estimate=estimate,
        extrapolate=parse_tokens(extrapolate) if extrapolate else None,
        report=report_path, plot=plot, overwrite=overwrite, scheduler=scheduler,
    )  # fmt: skip
    refuse_outputs_naming_inputs(
        {"--report": report_path, "--plot": plot}, [*corpus, vocab, table, config, tokenizer]
    )
    vocab_map = load_vocab(vocab)
    resolved = resolve_layout_flags(ctx.params, vocab_map, table=table, pick_layers=True)
    with _display(note=err_console.print if json_out else console.print, job=job) as hooks:
        outcome = run_hash_stats_job(job=job, vocab=vocab_map, layout=resolved, **hooks)
    _show(outcome, json_out=json_out)


@contextlib.contextmanager
def _display(*, note, job):
    """The hooks of a run: the ``on_plan`` note, then the ``progress`` bar (none with ``-q``),
    taken down ``before_saving`` the files."""
    import time

    quiet = STATE["quiet"]
    started, bar = time.perf_counter(), None
    detail = "{docs:,} docs, {rate:,.0f} tok/s"
    with contextlib.ExitStack() as stack:

        def on_plan(plan):
            nonlocal started, bar
            if not quiet:
                _note_plan(plan, note, on_workers=bool(job.scheduler))
            started = time.perf_counter()  # the bar and its rate start with the pass
            bar = stack.enter_context(
                progress("hash-stats", enabled=not quiet, detail=detail, transient=True)
            )

        def on_progress(done, total, docs, tokens):
            rate = tokens / max(time.perf_counter() - started, 1e-9)
            bar(done, total, docs=docs, rate=rate)

        yield {
            "on_plan": on_plan,
            "progress": on_progress,
            "before_saving": lambda report: bar.close(),  # no bar while the files are written
        }


def _note_plan(plan, note, *, on_workers: bool) -> None:
    """What the pass will read and the memory it may take, before it starts."""
    from .._system import format_bytes

    per = f" per partition ({plan.partitions} in all)" if plan.partitions else ""
    kind = "sketches need" if plan.estimate else "accumulators need up to"
    note(
        f"{len(plan.files)} file(s), {format_bytes(plan.bytes_total)}; {kind} "
        f"{format_bytes(plan.memory_estimate)}{per} for ~{plan.tokens_estimate:,} tokens "
        f"(--max-memory {format_bytes(plan.max_memory)})"
    )
    if plan.partitions_chosen:
        note(
            f"the single pass would not fit --max-memory {format_bytes(plan.max_memory)}: "
            f"counting in {plan.partitions} partitions (--partitions {plan.partitions}, "
            f"{'on the workers' if on_workers else f'{plan.partitions} passes over the input'})"
        )


def _show(outcome, *, json_out: bool) -> None:
    """The report (tables or JSON), the files written, then the exit code of a failure."""
    report = outcome.report
    if json_out:
        typer.echo(report.to_json())
    else:
        _render(report)
        for item in outcome.saved:
            if item.failure is None:
                console.print(f"wrote {item.path}")
    for item in outcome.saved:
        if item.failure is not None:
            err_console.print(f"{item.failure}; wrote it to {item.path} instead")
    if outcome.failed:
        raise typer.Exit(1)
    if report.stopped_reason == "interrupted":
        err_console.print("interrupted: the figures cover what was read (partial)")
        raise typer.Exit(130)


def _pct(value: float) -> str:
    return f"{100 * value:.3g}%"


def _render(report) -> None:
    head_line = (
        f"[bold]{report.tokens:,}[/] tokens, {report.documents:,} documents in "
        f"{report.seconds:.1f}s ({report.tokens_per_second:,.0f} tokens/s)"
    )
    if report.partial:
        head_line += f" [yellow]partial ({report.stopped_reason})[/]"
    if report.estimated:
        head_line += (
            f" [cyan]estimated[/] (distinct n-grams +-{100 * report.relative_standard_error:.2g}% "
            "relative standard error; per-head figures of ideal hashing)"
        )
    if report.partitions_counted:
        head_line += f" [yellow]figures of the first {report.partitions_counted} partition(s)[/]"
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
    if report.extrapolation:
        _render_extrapolation(report.extrapolation)


def _render_extrapolation(section: dict) -> None:
    if "error" in section:
        console.print(f"[yellow]no extrapolation[/]: {escape(section['error'])}")
        return
    table = Table(
        title=f"extrapolated to {section['tokens']:,.0f} tokens (Heaps' law, distinct = k T^beta, "
        f"fitted on {section['fitted_on_tokens']:,} tokens)",
        box=box.SIMPLE_HEAD,
    )
    for name in ("order", "k", "beta", "predicted distinct", "check: fit on first 25%",
                 "predicts", "found", "error"):  # fmt: skip
        table.add_column(name, justify="right")
    for order, entry in section["orders"].items():
        check = entry.get("check")
        cells = ["-", "-", "-", "-"]
        if check:
            cells = [
                f"{check['fitted_on_tokens']:,} tok",
                f"{check['predicted_distinct']:,}",
                f"{check['actual_distinct']:,}",
                f"{100 * check['relative_error']:+.1f}%",
            ]
        table.add_row(order, f"{entry['k']:.3g}", f"{entry['beta']:.3f}",
                      f"{entry['distinct']:,}", *cells)  # fmt: skip
    console.print(table)
    sizes = [
        (section["layers"], None),
        *((p["layers"], p["ngram_vocab"]) for p in section["sweep"]),
    ]
    summary = Table(title="predicted, mean over heads (ideal hashing)", box=box.SIMPLE_HEAD)
    for name in ("rows per head", "order", "occupancy", "colliding distinct", "all heads"):
        summary.add_column(name, justify="right")
    for layers, vocab in sizes:
        layer = next(iter(layers.values()))
        for order, stats in layer["orders"].items():
            heads = stats["heads"]
            rows = f"{heads[0]['rows']:,}" if vocab is None else f"{vocab[0]:,}"
            summary.add_row(
                rows, order, _pct(sum(h["occupancy"] for h in heads) / len(heads)),
                _pct(sum(h["colliding_distinct_fraction"] for h in heads) / len(heads)),
                _pct(stats["all_heads_colliding_occurrence_fraction"]),
            )  # fmt: skip
        summary.add_section()
    console.print(summary)


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
