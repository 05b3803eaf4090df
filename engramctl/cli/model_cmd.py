"""``engramctl train`` and ``engramctl eval``: the reference model, its baseline, paged eval."""

from __future__ import annotations

import contextlib
import json
from dataclasses import replace
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table
from rich.text import Text

from .._files import read_json_file
from .app import STATE, command, console, err_console
from .options import Device, JsonFlag, ModelFlags, OverwriteOpt
from .progress import progress
from .train_resume import print_trained, resume_run, run_inputs

DeviceOpt = ModelFlags.Device
TokenizerOpt = ModelFlags.Tokenizer


def open_table_for(path: Path, mode: str = "r", *, vocab=None):
    """``engramctl.table.sources.table.open_table`` (imported lazily; tests may replace this
    function)."""
    from ..table.sources.table import open_table

    return open_table(path, mode=mode, vocab=vocab)


def close_table(table) -> None:
    """Flush and release a table opened by a command (writer lock included)."""
    close = getattr(table, "close", None)
    if close is not None:
        close()


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


@command("train")
def train_command(
    ctx: typer.Context,
    corpus: Annotated[
        Path | None, typer.Option("--corpus", help="Training corpus (.jsonl/.txt or a dir).")
    ] = None,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Checkpoint directory to write.")
    ] = None,
    table: Annotated[
        Path | None, typer.Option("--table", help="Engram table (zarr); rows are trained in place.")
    ] = None,
    vocab: Annotated[
        Path | None, typer.Option("--vocab", help="Canonical vocab the table was built for.")
    ] = None,
    heldout: Annotated[
        Path | None, typer.Option("--heldout", help="Held-out corpus for the periodic loss.")
    ] = None,
    engram: Annotated[
        bool,
        typer.Option("--engram/--no-engram", help="--no-engram: the same backbone, no Engram."),
    ] = True,
    short_conv: Annotated[
        bool,
        typer.Option(
            "--short-conv/--no-short-conv",
            help="The Engram module's short convolution (DeepSeek-V4.1 removed it).",
        ),
    ] = True,
    steps: Annotated[int, typer.Option("--steps", help="Optimizer steps.")] = 300,
    seq_len: Annotated[int, typer.Option("--seq-len", help="Tokens per window.")] = 128,
    batch: Annotated[int, typer.Option("--batch", help="Windows per step.")] = 16,
    lr: Annotated[float, typer.Option("--lr", help="Backbone peak learning rate (AdamW).")] = 3e-3,
    table_lr: Annotated[
        float, typer.Option("--table-lr", help="Table rows' peak learning rate (sparse Adam).")
    ] = 1e-2,
    table_weight_decay: Annotated[
        float, typer.Option("--table-weight-decay", help="Decay of the rows a step touches.")
    ] = 0.0,
    depth: Annotated[int, typer.Option("--depth", help="Transformer blocks.")] = 4,
    width: Annotated[int, typer.Option("--width", help="Hidden size.")] = 128,
    attn_heads: Annotated[int, typer.Option("--attn-heads", help="Attention heads.")] = 4,
    min_count: Annotated[
        int, typer.Option("--min-count", help="Predict only ids seen this often (others: unknown).")
    ] = 5,
    eval_every: Annotated[
        int,
        typer.Option("--eval-every", help="Steps between held-out losses (0: only at the end)."),
    ] = 50,
    seed: Annotated[int, typer.Option("--seed", help="Model init and data order.")] = 0,
    threads: Annotated[
        int,
        typer.Option(
            "--threads",
            help="CPU threads of the model's math; results are bit-identical for a given count.",
        ),
    ] = 1,
    device: DeviceOpt = Device.auto,
    tokenizer: TokenizerOpt = None,
    compare_with: Annotated[
        Path | None,
        typer.Option("--compare-with", help="Another checkpoint whose curves join the PNG."),
    ] = None,
    init_from: Annotated[
        Path | None,
        typer.Option("--init-from", help="Start from this checkpoint (its weights and vocab)."),
    ] = None,
    freeze_backbone: Annotated[
        bool,
        typer.Option(
            "--freeze-backbone",
            help="Table-only adaptation of --init-from: only table rows train (out of core).",
        ),
    ] = False,
    out_of_core: Annotated[
        bool | None,
        typer.Option(
            "--out-of-core/--in-memory",
            help="Gather rows from the table per step (default: when the table does not fit).",
        ),
    ] = None,
    moments: Annotated[
        Path | None,
        typer.Option("--moments", help="Out of core: sparse Adam moment store (t.adam.zarr)."),
    ] = None,
    buffer_rows: Annotated[
        int, typer.Option("--buffer-rows", help="Out of core: dirty rows per layer per flush.")
    ] = 1 << 18,
    checkpoint_every: Annotated[
        int,
        typer.Option(
            "--checkpoint-every",
            help="Commit a resumable checkpoint (weights, optimizer state, rows) every N steps "
            "(0: only at the end).",
        ),
    ] = 0,
    resume: Annotated[
        Path | None,
        typer.Option(
            "--resume",
            help="Continue the run of this checkpoint directory from its last checkpoint, with "
            "its options and inputs (flags that disagree are refused).",
        ),
    ] = None,
    overwrite: OverwriteOpt = False,
    continue_rows: Annotated[
        bool,
        typer.Option(
            "--continue", help="Train on from rows another run trained (recorded in the table)."
        ),
    ] = False,
    overwrite_rows: Annotated[
        bool,
        typer.Option(
            "--overwrite-rows", help="Replace rows another run trained (its model loses them)."
        ),
    ] = False,
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
    from .._outputs import probe_writable
    from ..errors import EngramError, UsageError
    from ..model.checkpoint import check_checkpoint_target
    from ..model.serve.paging import resolve_device
    from ..model.train.loop import (
        TrainConfig,
        load_base,
        prepare_training_data,
        table_fits_in_memory,
        train_model,
    )

    if resume is not None:
        result = resume_run(ctx, resume, open_table=open_table_for)
        print_trained(result, json_out=json_out)
        return
    if corpus is None or out is None:
        raise UsageError("train needs --corpus and --out (or --resume MODEL_DIR)")
    if continue_rows and overwrite_rows:
        raise UsageError("--continue and --overwrite-rows exclude each other; pick one")
    prior_runs = "continue" if continue_rows else "overwrite" if overwrite_rows else "refuse"
    if freeze_backbone and init_from is None:
        raise UsageError("--freeze-backbone needs --init-from MODEL_DIR (the model to adapt)")
    if freeze_backbone and not engram:
        raise UsageError("--freeze-backbone trains table rows only; it cannot go with --no-engram")
    check_checkpoint_target(out, overwrite=overwrite)
    probe_writable(out)  # a read-only or full target fails now, not after the run
    vocab_map = table_handle = None
    if engram:
        if table is None or (vocab is None and init_from is None):
            raise UsageError("training with Engram needs --table and --vocab (or pass --no-engram)")
        if vocab is not None:
            from .options import load_vocab

            vocab_map = load_vocab(vocab)
    compare = None
    if compare_with is not None:
        history_path = compare_with / "history.json"
        if not history_path.exists():
            raise EngramError(f"--compare-with: {history_path} not found (give a checkpoint dir)")
        compare = {compare_with.name: read_json_file(history_path)}
    config = TrainConfig(
        steps=steps,
        seq_len=seq_len,
        batch=batch,
        lr=lr,
        table_lr=table_lr,
        table_weight_decay=table_weight_decay,
        seed=seed,
        eval_every=eval_every,
        engram=engram,
        short_conv=short_conv,
        threads=threads,
        freeze_backbone=freeze_backbone,
        buffer_rows=buffer_rows,
        checkpoint_every=checkpoint_every,
        depth=depth,
        width=width,
        attn_heads=attn_heads,
        device=str(resolve_device(device.value)),
    )
    config.validate()  # before reading the corpus: bad numbers fail at once
    if engram:  # refuses a table made for another vocab (when --vocab is given)
        table_handle = open_table_for(table, mode="r+", vocab=vocab_map)
    try:
        base = None
        if init_from is not None:
            base = load_base(init_from, table=table_handle, vocab=vocab_map, device=config.device)
            vocab_map = vocab_map or base.vocab
            config = replace(
                config,
                depth=base.model.config.n_layer,
                width=base.model.config.n_embd,
                attn_heads=base.model.config.n_head,
                seq_len=min(seq_len, base.model.config.block_size),
                short_conv=base.model.config.short_conv,
            )
        if engram:  # cheap refusals before the corpus is read
            from ..model.provenance import check_prior_runs

            check_prior_runs(
                table_handle, prior_runs, base_meta=base.meta if base is not None else None
            )
            if out_of_core is None:
                out_of_core = freeze_backbone or not table_fits_in_memory(table_handle)
            config = replace(config, out_of_core=out_of_core)
        data = prepare_training_data(
            corpus=corpus,
            heldout=heldout,
            vocab=vocab_map,
            tokenizer_source=tokenizer,
            seq_len=config.seq_len,
            min_count=min_count,
            model_vocab=base.model_vocab if base is not None else None,
        )
        if engram and table_handle.info.vocab_fingerprint != vocab_map.fingerprint:
            raise EngramError(
                f"the table was built for vocab {table_handle.info.vocab_fingerprint}, but "
                f"the model's vocab is {vocab_map.fingerprint}; give the table it was trained with"
            )
        detail = "loss {loss:.3f}, {tps:,.0f} tok/s"
        with progress(
            "train", enabled=not STATE["quiet"], unit="steps", detail=detail, transient=True
        ) as update:
            result = train_model(
                windows=data.windows,
                heldout=data.heldout,
                model_vocab=data.model_vocab,
                config=config,
                out_dir=out,
                table=table_handle,
                vocab=vocab_map,
                overwrite=overwrite,
                on_step=lambda step, total, loss, tps: update(step, total, loss=loss, tps=tps),
                extra_meta=data.meta,
                compare=compare,
                base=base,
                moments=moments,
                prior_runs=prior_runs,
                inputs=run_inputs(
                    corpus=corpus, heldout=heldout, table=table if engram else None, vocab=vocab,
                    tokenizer=tokenizer, min_count=min_count, init_from=init_from,
                    moments=moments, compare_with=compare_with, prior_runs=prior_runs,
                    out_of_core=config.out_of_core,
                ),
            )  # fmt: skip
    finally:
        close_table(table_handle)
    print_trained(result, json_out=json_out)


@command("eval")
def eval_command(
    model: ModelFlags.Model,
    benchmark: Annotated[
        Path | None,
        typer.Option("--benchmark", help="Corpus (perplexity) or multiple-choice .jsonl."),
    ] = None,
    table: ModelFlags.Table = None,
    device: ModelFlags.Device = Device.auto,
    batch: Annotated[int, typer.Option("--batch", help="Sequences per forward pass.")] = 16,
    cache_rows: ModelFlags.CacheRows = ModelFlags.CACHE_ROWS,
    resident: ModelFlags.Resident = False,
    explain: Annotated[
        str | None, typer.Option("--explain", help="Colour this text's tokens by Engram gate.")
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
    """
    from .._files import atomic_write, check_writable_target
    from ..errors import UsageError
    from ..model.serve.evaluate import evaluate, explain_gates

    if lm_eval_tasks is not None and (benchmark is not None or explain is not None):
        raise UsageError("--lm-eval-tasks runs on its own: drop --benchmark/--explain")
    if limit is not None and lm_eval_tasks is None:
        raise UsageError("--limit applies to --lm-eval-tasks only")
    if benchmark is None and explain is None and lm_eval_tasks is None:
        raise UsageError("give --benchmark FILE, --explain TEXT (or both), or --lm-eval-tasks")
    if report is not None:
        check_writable_target(report, overwrite=overwrite)
    from ..model.serve.opening import ModelSpec

    doc = {}
    advice = " (--strict-table refuses)"
    with model_table(model, table, strict=strict_table, advice=advice) as table_handle:
        spec = ModelSpec(model, table_handle, device.value, cache_rows, resident, tokenizer)
        if lm_eval_tasks is not None:
            from ..model.serve.lm_eval_adapter import run_lm_eval

            doc = run_lm_eval(model=spec, tasks=lm_eval_tasks, limit=limit, batch=batch)
        if benchmark is not None:
            quiet = STATE["quiet"] or json_out
            with progress("eval", enabled=not quiet, unit="steps", transient=True) as update:
                result = evaluate(model=spec, benchmark=benchmark, batch=batch, on_progress=update)
            doc = result.to_dict()
        if explain is not None:
            doc["explain"] = explain_gates(model=spec, text=explain)
    harness_table = doc.pop("table", None)
    if report is not None:
        with atomic_write(report, "w") as handle:
            handle.write(json.dumps(doc, indent=2))
    if json_out:
        typer.echo(json.dumps(doc))
        return
    if harness_table is not None:
        typer.echo(harness_table)
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
    if paging:
        table = Table(title=f"row {paging['mode']} counters", show_header=False)
        for key in ("rows_requested", "unique_rows", "cache_hits", "cache_misses", "cache_rows"):
            table.add_row(key.replace("_", " "), f"{paging[key]:,}")
        table.add_row("cache hit rate", f"{paging['hit_rate']:.1%}")
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
