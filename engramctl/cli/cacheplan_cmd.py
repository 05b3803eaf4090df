"""``engramctl cache-plan``: how much fast memory serving a workload needs.

The command parses its flags into a :class:`engramctl.cacheplan.job.CachePlanJob`, calls
:func:`engramctl.cacheplan.job.run_cache_plan_job`, and renders the plan (rich tables, or the
JSON document with ``--json``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich import box
from rich.table import Table

from .app import STATE, command, console
from .options import (
    Dtype,
    JsonFlag,
    LayoutFlags,
    ModelFlags,
    VocabOpt,
    finite_number,
    load_vocab,
    refuse_outputs_naming_inputs,
    resolve_layout_flags,
)
from .progress import progress

# The options of cache-plan alone (the shared ones are in .options).
WorkloadArg = Annotated[
    list[str],
    typer.Argument(
        help="Workload files (any corpus hash-stats reads; 2-D .npy: one sequence per row)."
    ),
]
TableOpt = Annotated[
    str | None,
    typer.Option(
        "--table",
        help="Take the layout, row width and dtype from this table (path or URL).",
        rich_help_panel="Layout",
    ),
]
TokenizerOpt = Annotated[
    str, typer.Option("--tokenizer", help="Tokenizer for text (must match the vocab).")
]
BatchOpt = Annotated[int, typer.Option("--batch", help="Sequences per batch (as eval --batch).")]
SeqLenOpt = Annotated[
    int, typer.Option("--seq-len", help="Tokens per window of text (the model's length).")
]
SizesOpt = Annotated[
    str | None,
    typer.Option("--sizes", help="Cache sizes in rows per layer, e.g. 64k,1M,16M."),
]
PointsOpt = Annotated[
    int, typer.Option("--points", help="Without --sizes: this many log-spaced sizes.")
]
WarmupOpt = Annotated[
    float,
    typer.Option(
        "--warmup-fraction",
        help="First batches that warm the caches (and rank the static one), not counted.",
        callback=finite_number,
    ),
]
DtypeOpt = Annotated[
    Dtype | None,
    typer.Option("--dtype", help="Row dtype served (default: the table's or preset's)."),
]
TokensPerSOpt = Annotated[
    float | None,
    typer.Option(
        "--tokens-per-s",
        help="Target throughput: report the bandwidth each size needs.",
        callback=finite_number,
    ),
]
PolicyOpt = Annotated[
    str,
    typer.Option(
        "--policy",
        help="Policies: lru (textbook), pager (what eval's RowPager does), static "
        "(warm-up's top rows), opt (Belady's bound; one simulation per size, slower).",
    ),
]
SpillDirOpt = Annotated[
    Path | None,
    typer.Option(
        "--spill-dir",
        help="Where opt spills the trace (4 B per access and layer, 12 B while it runs; "
        "removed afterwards). Default: the system's temporary directory.",
    ),
]
ReportOpt = Annotated[
    Path | None, typer.Option("--report", help="Also write the JSON document to this file.")
]
PlotOpt = Annotated[
    Path | None, typer.Option("--plot", help="Write a PNG of hit rate against cache size.")
]
HostStaticOutOpt = Annotated[
    Path | None,
    typer.Option(
        "--host-static-out",
        metavar="ROWS.npz",
        help="With --host-cache: write each layer's warm-up top rows, as many as the host tier "
        "holds, for eval/generate --host-static (the view then shows that static tier).",
    ),
]
OverwriteOpt = Annotated[
    bool,
    typer.Option("--overwrite", help="Replace existing --report/--plot/--host-static-out files."),
]


@command("cache-plan")
def cache_plan_command(
    ctx: typer.Context,
    workload: WorkloadArg,
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
    batch: BatchOpt = 16,
    seq_len: SeqLenOpt = 128,
    sizes: SizesOpt = None,
    points: PointsOpt = 16,
    warmup_fraction: WarmupOpt = 0.1,
    dtype: DtypeOpt = None,
    tokens_per_s: TokensPerSOpt = None,
    policy: PolicyOpt = "lru,pager,static,opt",
    spill_dir: SpillDirOpt = None,
    cache_rows: ModelFlags.CacheRows = ModelFlags.CACHE_ROWS,
    host_cache: ModelFlags.HostCache = None,
    host_static: ModelFlags.HostStatic = None,
    host_static_out: HostStaticOutOpt = None,
    prefetch_depth: ModelFlags.PrefetchDepth = ModelFlags.PREFETCH_DEPTH,
    read_threads: ModelFlags.ReadThreads = ModelFlags.READ_THREADS,
    json_out: JsonFlag = False,
    report: ReportOpt = None,
    plot: PlotOpt = None,
    overwrite: OverwriteOpt = False,
) -> None:
    """Hit rate of a row cache of every size for a workload's traffic, and what misses cost.

    Per Engram layer, over the batches after the warm-up:
    lru: textbook LRU, every size from one pass (stack distances);
    pager: what eval --cache-rows does, exactly (it refuses caches below a minimum);
    static: a fixed cache of the warm-up's most looked-up rows;
    opt: Belady's optimum (slower: one simulation per size).
    Also: distinct rows per batch, bytes per token paged, bandwidth at --tokens-per-s,
    and the smallest caches reaching 50/90/99% hits.
    Memory follows the distinct rows the workload touches, not its length or the table's size.
    Sizes are rows per layer; eval --cache-rows N splits N evenly over the layers.
    With --host-cache (or --cache-rows): the two-tier view of eval --cache-rows N --host-cache
    SIZE: the share of rows the device cache, the host tier and storage serve, and the bytes per
    token each link carries (storage -> host as stored, host -> device as float32); the pager
    counts the same. --host-static-out ROWS.npz writes each layer's top rows of the warm-up
    batches, as many as --host-cache holds, for eval --host-static ROWS.npz: a static host tier,
    loaded once and never evicted; the view then shows it (as it does given --host-static).

    Example:
    engramctl cache-plan chat.jsonl --vocab vocab.parquet --preset deepseek-v4.1 \\
        --sizes 64k,1M,16M --tokens-per-s 5000 --plot plan.png

    Two tiers (device cache of 1M rows, 8 GiB of host RAM):
    engramctl cache-plan chat.jsonl --vocab vocab.parquet --preset deepseek-v4.1 \
        --cache-rows 1M --host-cache 8G

    A static host tier of the warm-up's top rows (then: eval ... --host-static rows.npz):
    engramctl cache-plan chat.jsonl --vocab vocab.parquet --preset deepseek-v4.1 \\
        --cache-rows 1M --host-cache 8G --host-static-out rows.npz
    """
    from ..cacheplan.job import CachePlanJob, run_cache_plan_job
    from ..layout import parse_int_list
    from ..rowcache.tiers import TierConfig

    tiers = TierConfig.from_options(
        cache_rows=cache_rows, host_cache=host_cache, read_threads=read_threads,
        prefetch_depth=prefetch_depth, host_static=host_static,
    )  # fmt: skip

    job = CachePlanJob(
        paths=tuple(workload), tokenizer=tokenizer, batch=batch, seq_len=seq_len,
        sizes=parse_int_list(sizes, name="--sizes") if sizes is not None else None,
        points=points, warmup_fraction=warmup_fraction,
        dtype=dtype.value if dtype is not None else None, tokens_per_s=tokens_per_s,
        policies=tuple(p.strip() for p in policy.split(",") if p.strip()), spill_dir=spill_dir,
        report=report, plot=plot, overwrite=overwrite, tiers=tiers if _asked(ctx) else None,
        host_static_out=host_static_out,
    )  # fmt: skip
    refuse_outputs_naming_inputs(
        {"--report": report, "--plot": plot, "--host-static-out": host_static_out},
        [*workload, vocab, table, config, tokenizer, host_static],
    )
    vocab_map = load_vocab(vocab)
    resolved = resolve_layout_flags(ctx.params, vocab_map, table=table, pick_layers=True)
    quiet = STATE["quiet"] or json_out
    with progress("cache-plan", enabled=not quiet, unit="steps", transient=True) as update:
        plan = run_cache_plan_job(
            job=job, vocab=vocab_map, layout=resolved,
            progress=lambda stage, done, total: update(done, total),
            before_saving=lambda plan: update.close(),  # no bar while the files are written
        )  # fmt: skip
    if json_out:
        typer.echo(plan.to_json())
        return
    _render(plan)
    for path in (report, plot, host_static_out):
        if path is not None:
            console.print(f"wrote {path}")


def _asked(ctx: typer.Context) -> bool:
    """Whether a serving option was given: then the plan adds the tiers' view."""
    from click.core import ParameterSource

    names = ("cache_rows", "host_cache", "host_static", "prefetch_depth", "read_threads")
    return any(ctx.get_parameter_source(n) is not ParameterSource.DEFAULT for n in names)


def _pct(value) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _render(plan) -> None:
    console.print(
        f"[bold]{plan.tokens:,}[/] tokens, {plan.cut}; {plan.batches:,} batches of "
        f"{plan.batch} ({plan.warmup_batches:,} warm-up, not counted); rows of {plan.dim} "
        f"{plan.dtype} = {plan.row_bytes} B; {plan.seconds:.1f}s"
    )
    policies = plan.policies
    for layer, lp in plan.layers.items():
        title = (
            f"layer {layer}: {lp.distinct_rows:,} of {lp.table_rows:,} rows touched; "
            f"{lp.unique_rows_per_batch_mean:,.0f} distinct rows per batch "
            f"(p99 {lp.unique_rows_per_batch_p99:,.0f}); lookups / distinct {lp.dedup_ratio:.2f}; "
            f"{lp.rows_per_token:.1f} rows per token at 0% hits"
        )
        caption = "hit rates; B/token: bytes paged per token by the lru cache"
        if plan.tokens_per_s:
            caption += f"; MiB/s: at {plan.tokens_per_s:,.0f} tokens/s"
        table = Table(
            title=title, caption=caption, box=box.SIMPLE_HEAD, title_justify="left",
            caption_justify="left",
        )  # fmt: skip
        for name in ("cache rows", *policies, "B/token", "MiB/s" if plan.tokens_per_s else None):
            if name is not None:
                table.add_column(name, justify="right", no_wrap=True)
        lru = lp.curves.get("lru")
        for i, size in enumerate(plan.sizes):
            cells = [f"{size:,}"] + [_pct(lp.curves[p][i].hit_rate) for p in policies]
            point = lru[i] if lru else None
            cells.append(f"{point.bytes_per_token:,.0f}" if point else "-")
            if plan.tokens_per_s:
                cells.append(f"{point.bandwidth / 2**20:,.1f}" if point else "-")
            table.add_row(*cells)
        console.print(table)
        for name, reach in lp.reach.items():
            found = " / ".join("-" if rows is None else f"{rows:,}" for rows in reach.values())
            console.print(f"  smallest {name} cache for {'/'.join(reach)} hits: {found}")
        if "pager" in policies:
            console.print(
                f"  the pager (eval --cache-rows) needs {lp.pager_min_rows:,}+ rows per layer "
                "(a batch's rows and those of the batches in flight)"
            )
        if lp.tiers is not None:
            _render_tiers(f"layer {layer}", lp.tiers)
    if plan.tiers is not None:
        config = plan.tiers["config"]
        static = config["host_static"] or (
            "(the warm-up's top rows)" if plan.tiers["all_layers"]["host_mode"] == "static" else ""
        )
        console.print(
            f"serving tiers: --cache-rows {config['device_rows']:,} --host-cache "
            f"{config['host_bytes']:,} B{' --host-static ' + static if static else ''} "
            f"--read-threads {config['read_threads']} --prefetch-depth {config['prefetch_depth']}"
        )
        _render_tiers("all layers", plan.tiers["all_layers"])


def _render_tiers(name: str, view: dict) -> None:
    """One line per tier: rows held, share of the rows served, bytes per token on its link."""
    if view["refused"]:
        console.print(f"  {name}, two tiers: eval would refuse this: {view['refused']}")
        return
    console.print(
        f"  {name}, two tiers: device {view['device_rows']:,} rows serves "
        f"{_pct(view['device_fraction'])}, host ({view['host_mode']}) {view['host_rows']:,} rows "
        f"serves "
        f"{_pct(view['host_fraction'])}, storage {_pct(view['storage_fraction'])}; per token "
        f"storage->host {view['storage_to_host_bytes_per_token']:,.0f} B, host->device "
        f"{view['host_to_device_bytes_per_token']:,.0f} B"
    )
