"""``engramctl train`` and ``engramctl eval``: the reference model, its baseline, paged eval."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table
from rich.text import Text

from .app import STATE, command, console, err_console
from .options import Device, JsonFlag, ModelFlags, OverwriteOpt, finite_number
from .progress import progress
from .train_resume import given_on_command_line, print_trained, resume_run

DeviceOpt = ModelFlags.Device
TokenizerOpt = ModelFlags.Tokenizer


def open_table_for(path: Path, mode: str = "r", *, vocab=None):
    """``engramctl.table.sources.table.open_table`` (imported lazily; tests may replace this
    function)."""
    from ..table.sources.table import open_table

    return open_table(path, mode=mode, vocab=vocab)


@contextlib.contextmanager
def model_table(model: Path, table: Path | None, *, strict: bool = False, advice: str = ""):
    """``--table`` opened for the checkpoint ``--model`` (None when not given), closed on exit;
    a table whose rows changed since the checkpoint gets a warning (``strict``: an error).
    :func:`engramctl.model.serve.opening.open_model_table` with :func:`open_table_for`."""
    from ..model.serve.opening import open_model_table

    # open_table_for: looked up at call time (tests route it to table doubles)
    with open_model_table(model, table, strict=strict, open_table=open_table_for) as opened:
        if opened.problem is not None:
            err_console.print(f"warning: {opened.problem}{advice}")
        yield opened.table


class TrainFlags:
    """The options of ``engramctl train``, declared once (as ``train --help`` shows them)."""

    Corpus = Annotated[
        Path | None, typer.Option("--corpus", help="Training corpus (.jsonl/.txt or a dir).")
    ]
    Out = Annotated[Path | None, typer.Option("--out", "-o", help="Checkpoint directory to write.")]
    Table = Annotated[
        Path | None, typer.Option("--table", help="Engram table (zarr); rows are trained in place.")
    ]
    Vocab = Annotated[
        Path | None, typer.Option("--vocab", help="Canonical vocab the table was built for.")
    ]
    Heldout = Annotated[
        Path | None, typer.Option("--heldout", help="Held-out corpus for the periodic loss.")
    ]
    Engram = Annotated[
        bool,
        typer.Option("--engram/--no-engram", help="--no-engram: the same backbone, no Engram."),
    ]
    ShortConv = Annotated[
        bool,
        typer.Option(
            "--short-conv/--no-short-conv",
            help="The Engram module's short convolution (DeepSeek-V4.1 removed it).",
        ),
    ]
    Steps = Annotated[int, typer.Option("--steps", help="Optimizer steps.")]
    SeqLen = Annotated[int, typer.Option("--seq-len", help="Tokens per window.")]
    Batch = Annotated[int, typer.Option("--batch", help="Windows per step.")]
    Lr = Annotated[
        float,
        typer.Option("--lr", help="Backbone peak learning rate (AdamW).", callback=finite_number),
    ]
    TableLr = Annotated[
        float,
        typer.Option(
            "--table-lr",
            help="Table rows' peak learning rate (sparse Adam).",
            callback=finite_number,
        ),
    ]
    TableWeightDecay = Annotated[
        float,
        typer.Option(
            "--table-weight-decay",
            help="Decay of the rows a step touches.",
            callback=finite_number,
        ),
    ]
    Depth = Annotated[int, typer.Option("--depth", help="Transformer blocks.")]
    Width = Annotated[int, typer.Option("--width", help="Hidden size.")]
    AttnHeads = Annotated[int, typer.Option("--attn-heads", help="Attention heads.")]
    MinCount = Annotated[
        int, typer.Option("--min-count", help="Predict only ids seen this often (others: unknown).")
    ]
    EvalEvery = Annotated[
        int,
        typer.Option("--eval-every", help="Steps between held-out losses (0: only at the end)."),
    ]
    Seed = Annotated[int, typer.Option("--seed", help="Model init and data order.")]
    Threads = Annotated[
        int,
        typer.Option(
            "--threads",
            help="CPU threads of the model's math; results are bit-identical for a given count.",
        ),
    ]
    CompareWith = Annotated[
        Path | None,
        typer.Option("--compare-with", help="Another checkpoint whose curves join the PNG."),
    ]
    InitFrom = Annotated[
        Path | None,
        typer.Option("--init-from", help="Start from this checkpoint (its weights and vocab)."),
    ]
    FreezeBackbone = Annotated[
        bool,
        typer.Option(
            "--freeze-backbone",
            help="Table-only adaptation of --init-from: only table rows train (out of core).",
        ),
    ]
    OutOfCore = Annotated[
        bool | None,
        typer.Option(
            "--out-of-core/--in-memory",
            help="Gather rows from the table per step (default: when the table does not fit).",
        ),
    ]
    BufferRows = Annotated[
        int, typer.Option("--buffer-rows", help="Out of core: dirty rows per layer per flush.")
    ]
    CheckpointEvery = Annotated[
        int,
        typer.Option(
            "--checkpoint-every",
            help="Commit a resumable checkpoint (weights, optimizer state, rows) every N steps "
            "(0: only at the end).",
        ),
    ]
    Resume = Annotated[
        Path | None,
        typer.Option(
            "--resume",
            help="Continue the run of this checkpoint directory from its last checkpoint, with "
            "its options and inputs (flags that disagree are refused).",
        ),
    ]
    ContinueRows = Annotated[
        bool,
        typer.Option(
            "--continue", help="Train on from rows another run trained (recorded in the table)."
        ),
    ]
    OverwriteRows = Annotated[
        bool,
        typer.Option(
            "--overwrite-rows", help="Replace rows another run trained (its model loses them)."
        ),
    ]


@command("train")
def train_command(
    ctx: typer.Context,
    corpus: TrainFlags.Corpus = None,
    out: TrainFlags.Out = None,
    table: TrainFlags.Table = None,
    vocab: TrainFlags.Vocab = None,
    heldout: TrainFlags.Heldout = None,
    engram: TrainFlags.Engram = True,
    short_conv: TrainFlags.ShortConv = True,
    steps: TrainFlags.Steps = 300,
    seq_len: TrainFlags.SeqLen = 128,
    batch: TrainFlags.Batch = 16,
    lr: TrainFlags.Lr = 3e-3,
    table_lr: TrainFlags.TableLr = 1e-2,
    table_weight_decay: TrainFlags.TableWeightDecay = 0.0,
    depth: TrainFlags.Depth = 4,
    width: TrainFlags.Width = 128,
    attn_heads: TrainFlags.AttnHeads = 4,
    min_count: TrainFlags.MinCount = 5,
    eval_every: TrainFlags.EvalEvery = 50,
    seed: TrainFlags.Seed = 0,
    threads: TrainFlags.Threads = 1,
    device: DeviceOpt = Device.auto,
    tokenizer: TokenizerOpt = None,
    compare_with: TrainFlags.CompareWith = None,
    init_from: TrainFlags.InitFrom = None,
    freeze_backbone: TrainFlags.FreezeBackbone = False,
    out_of_core: TrainFlags.OutOfCore = None,
    buffer_rows: TrainFlags.BufferRows = 1 << 18,
    checkpoint_every: TrainFlags.CheckpointEvery = 0,
    resume: TrainFlags.Resume = None,
    overwrite: OverwriteOpt = False,
    continue_rows: TrainFlags.ContinueRows = False,
    overwrite_rows: TrainFlags.OverwriteRows = False,
    json_out: JsonFlag = False,
) -> None:
    """Train the reference model (and its Engram table rows), or the --no-engram baseline.

    The table records which run wrote its rows; training a table another run trained needs
    --continue or --overwrite-rows (or --init-from the model that trained it).

    With --checkpoint-every N the run commits a checkpoint every N steps (model, optimizer
    state, the rows trained so far written to the table); after Ctrl-C or a crash, --resume
    continues it and ends bit-identical to a run that never stopped.

    Example:
    engramctl train --corpus train.jsonl --table t.zarr \\
        --vocab vocab.parquet --out m --checkpoint-every 50

    After Ctrl-C or a crash, continue from the last checkpoint:
    engramctl train --resume m

    Table-only adaptation (backbone frozen, rows trained out of core):
    engramctl train --freeze-backbone --init-from m --table t.zarr --corpus new.jsonl --out m2
    """
    from ..model.train.resume import interrupts_outside_the_steps

    with interrupts_outside_the_steps(resume or out, resuming=resume is not None) as outcome:
        if resume is not None:
            resume_run(ctx, resume, open_table=open_table_for, outcome=outcome)
        else:
            from ..model.train.start import TrainOptions, train_from_options

            options = {k: v for k, v in ctx.params.items() if k not in ("resume", "json_out")}
            options["given"] = frozenset(k for k in options if given_on_command_line(ctx, k))
            detail = "loss {loss:.3f}, {tps:,.0f} tok/s"
            with progress(
                "train", enabled=not STATE["quiet"], unit="steps", detail=detail, transient=True
            ) as update:
                train_from_options(
                    TrainOptions(**{**options, "device": device.value}),
                    open_table=open_table_for,  # looked up at call time (tests use doubles)
                    on_step=lambda step, total, loss, tps: update(step, total, loss=loss, tps=tps),
                    outcome=outcome,
                )
        print_trained(outcome.result, json_out=json_out)


@command("eval")
def eval_command(
    ctx: typer.Context,
    model: Annotated[
        Path | None,
        typer.Option(
            "--model", help="Checkpoint directory (engramctl train); optional with --counts."
        ),
    ] = None,
    benchmark: Annotated[
        Path | None,
        typer.Option("--benchmark", help="Corpus (perplexity) or multiple-choice .jsonl."),
    ] = None,
    table: ModelFlags.Table = None,
    device: ModelFlags.Device = Device.auto,
    batch: Annotated[int, typer.Option("--batch", help="Sequences per forward pass.")] = 16,
    cache_rows: ModelFlags.CacheRows = ModelFlags.CACHE_ROWS,
    host_cache: ModelFlags.HostCache = None,
    host_static: ModelFlags.HostStatic = None,
    prefetch_depth: ModelFlags.PrefetchDepth = ModelFlags.PREFETCH_DEPTH,
    read_threads: ModelFlags.ReadThreads = ModelFlags.READ_THREADS,
    resident: ModelFlags.Resident = False,
    explain: Annotated[
        str | None,
        typer.Option(
            "--explain",
            help="Colour this text's tokens by Engram gate; with --counts also each token's λ "
            "and P_model, P_counts of it.",
        ),
    ] = None,
    lm_eval_tasks: Annotated[
        str | None,
        typer.Option(
            "--lm-eval-tasks",
            help="Run lm-evaluation-harness tasks: harness task names and/or one directory of "
            "task YAMLs (its include_path), comma-separated. Needs engramctl[eval].",
        ),
    ] = None,
    limit: Annotated[
        int | None,
        typer.Option("--limit", help="With --lm-eval-tasks: at most this many documents per task."),
    ] = None,
    tokenizer: ModelFlags.Tokenizer = None,
    report: Annotated[
        Path | None, typer.Option("--report", help="Also write the JSON report to this file.")
    ] = None,
    overwrite: OverwriteOpt = False,
    strict_table: Annotated[
        bool,
        typer.Option(
            "--strict-table",
            help="Refuse a table whose rows changed since the checkpoint (default: warn).",
        ),
    ] = False,
    counts: Annotated[
        Path | None,
        typer.Option(
            "--counts",
            help="Mix this count memory (engramctl build-counts) into the model per token; "
            "without --model, score the count memory alone.",
        ),
    ] = None,
    mix: Annotated[
        float | None,
        typer.Option(
            "--mix",
            help="A constant λ in [0, 1] instead of the memory's fitted gate.",
            callback=finite_number,
        ),
    ] = None,
    json_out: JsonFlag = False,
) -> None:
    """Evaluate a checkpoint on a benchmark while paging its Engram rows from the table.

    A table whose rows another run changed since the checkpoint was trained gets a warning
    (--strict-table: an error).

    Example:
    engramctl eval --model m --table t.zarr \\
        --benchmark sample_data/bench/lm_heldout.jsonl

    lm-evaluation-harness (pip install 'engramctl[eval]'), the two sample tasks:
    engramctl eval --model m --table t.zarr --lm-eval-tasks sample_data/bench

    With a count memory: P = (1 - λ) P_model + λ P_counts per token; every loss over raw ids
    (docs/counts.md):
    engramctl eval --model m --table t.zarr --counts c.zarr --benchmark held.jsonl
    """
    from ..model.serve.eval_run import EvalRequest, run_eval

    options = {k: v for k, v in ctx.params.items() if k != "json_out"}
    request = EvalRequest(**{**options, "device": device.value, "harness_output": STATE["verbose"]})
    quiet = STATE["quiet"] or json_out
    with progress("eval", enabled=not quiet, unit="steps", transient=True) as update:
        output = run_eval(
            request,
            open_table=open_table_for,  # looked up at call time (tests route it to doubles)
            on_warning=lambda problem: err_console.print(
                f"warning: {problem} (--strict-table refuses)"
            ),
            on_progress=update,
        )
    doc = output.doc
    gate_warning = (doc.get("model") or {}).get("gate_warning")
    if gate_warning and not json_out:  # with --json it is the report's model.gate_warning
        err_console.print(f"warning: {gate_warning}")
    if json_out:
        typer.echo(json.dumps(doc))
        return
    if output.harness_table is not None:
        typer.echo(output.harness_table)
        print_paging(doc.get("paging"))
    if benchmark is not None:
        _print_report(doc)
    if explain is not None:
        _print_explain(doc["explain"])


def _print_report(doc: dict) -> None:
    metrics = Table(title=f"{doc['benchmark']} ({doc['kind']})", show_header=False)
    for key, value in doc["metrics"].items():
        if value is None:
            metrics.add_row(key, "n/a")
        else:
            metrics.add_row(key, f"{value:,.4f}" if isinstance(value, float) else f"{value:,}")
    metrics.add_row("tokens/s", f"{doc['tokens_per_s']:,.0f} on {doc['device']}")
    console.print(metrics)
    print_paging(doc.get("paging"))


def print_paging(paging: dict | None) -> None:
    """The pager's counters; a resident table (no cache) says so instead of a hit rate."""
    if not paging:
        return
    if paging["mode"] == "resident":
        table = Table(title="rows resident", show_header=False)
        table.add_row("row cache", "none: every row on the device")
        table.add_row("rows requested", f"{paging['rows_requested']:,}")
        table.add_row("table rows on the device", f"{paging['cache_rows']:,}")
    else:
        table = Table(title=f"row {paging['mode']} counters", show_header=False)
        for key in ("rows_requested", "unique_rows", "cache_hits", "cache_misses", "cache_rows"):
            table.add_row(key.replace("_", " "), f"{paging[key]:,}")
        table.add_row("cache hit rate", f"{paging['hit_rate']:.1%}")
        if paging.get("host_rows"):
            table.add_row("host tier rows", f"{paging['host_rows']:,}")
            if paging.get("host_loaded_rows"):  # --host-static: read once at start
                table.add_row("static rows loaded", f"{paging['host_loaded_rows']:,}")
            table.add_row("host tier hits", f"{paging['host_hits']:,}")
            table.add_row("host tier hit rate", f"{paging['host_hit_rate']:.1%} of cache misses")
        if "storage_reads" in paging:
            table.add_row("rows read from table", f"{paging['storage_reads']:,}")
        if paging.get("prefetch_rows"):
            table.add_row("rows read ahead", f"{paging['prefetch_rows']:,}")
    table.add_row("bytes read from table", f"{paging['bytes_read']:,}")
    table.add_row("bytes copied to device", f"{paging['bytes_copied']:,}")
    table.add_row("forward waited on rows", f"{paging['wait_seconds']:.3f} s")
    console.print(table)


def _print_explain(explain: dict) -> None:
    """Colours on a terminal; piped (no colours) one line per token with its gate value."""
    for layer, gates in explain["gates"].items():
        if console.is_terminal:
            text = Text(f"layer {layer} gates (blue low .. red high): ")
            for piece, gate in zip(explain["tokens"], gates, strict=True):
                red, blue = int(255 * gate), int(255 * (1 - gate))
                text.append(piece, style=f"black on rgb({red},90,{blue})")
            console.print(text)
        else:
            console.print(f"layer {layer} gate per token:")
            for pos, (piece, gate) in enumerate(zip(explain["tokens"], gates, strict=True)):
                console.print(f"  {pos:>4}  {gate:.3f}  {piece!r}", markup=False)
        mean = sum(gates) / len(gates)
        console.print(f"  mean gate {mean:.3f}, min {min(gates):.3f}, max {max(gates):.3f}")
    if explain.get("counts"):
        _print_explain_counts(explain["tokens"], explain["counts"])


def _print_explain_counts(tokens: list[str], mixed: dict) -> None:
    """Per token: the count memory's λ and P_model, P_counts, P_mixed of the actual token."""
    lam = [v for v in mixed["lambda"] if v is not None]
    source = "the fitted gate" if mixed["mix"] == "gate" else f"--mix {mixed['mix']}"
    console.print(f"count memory λ per token ({source}; P of the actual token, raw ids):")
    console.print("   pos       λ   P_model  P_counts   P_mixed  token", markup=False)
    for pos, piece in enumerate(tokens):
        if mixed["lambda"][pos] is None:
            console.print(f"  {pos:>4}       -         -         -         -  {piece!r}",
                          markup=False)  # fmt: skip
            continue
        values = (mixed[k][pos] for k in ("lambda", "p_model", "p_counts", "p_mixed"))
        cells = "".join(f"  {v:8.4f}" for v in values)
        console.print(f"  {pos:>4}{cells}  {piece!r}", markup=False)
    if lam:
        console.print(f"  mean λ {sum(lam) / len(lam):.3f}, min {min(lam):.3f}, "
                      f"max {max(lam):.3f}")  # fmt: skip
