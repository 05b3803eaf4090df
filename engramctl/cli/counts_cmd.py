"""``engramctl build-counts`` and ``fit-gate``: a count memory, and its gate for a model.

``build-counts`` parses its flags into a :class:`engramctl.counts.BuildCountsJob`, calls
:func:`engramctl.counts.build_counts`, and renders its report (or ``--json``); ``fit-gate``
calls :func:`engramctl.model.serve.gate_fit.fit_counts_gate`.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from .app import STATE, command, console
from .options import (
    CorpusFormat,
    Device,
    JsonFlag,
    LayoutFlags,
    ModelFlags,
    OverwriteOpt,
    SchedulerOpt,
    VocabOpt,
    finite_number,
    load_vocab,
    resolve_layout_flags,
)
from .progress import progress
from .stats_cmd import (
    BatchTokensOpt,
    CorpusArg,
    DocSepFlag,
    DocSepIdOpt,
    FormatOpt,
    LimitTokensOpt,
    TextFieldOpt,
    TokenDtypeOpt,
    TokenizerOpt,
    TokensFieldOpt,
)

OutOpt = Annotated[
    Path, typer.Option("--out", help="The count memory to write (a directory, e.g. c.zarr).")
]
LikeOpt = Annotated[
    str | None,
    typer.Option(
        "--like",
        metavar="TABLE",
        help="Take the layout from this table instead of --preset/layout flags (--layers picks "
        "among its layers).",
        rich_help_panel="Layout",
    ),
]
TopKOpt = Annotated[
    int | None,
    typer.Option(
        "--top-k",
        help="Continuations kept per row (SpaceSaving, error <= total/K). Default: 8; with "
        "--append, the memory's.",
    ),
]
AppendFlag = Annotated[
    bool,
    typer.Option(
        "--append",
        help="Add the corpus to the count memory at --out (its layout, layers, vocab and K) as "
        "one commit; no layout flags.",
    ),
]

CountsMemoryOpt = Annotated[
    str | None,
    typer.Option(
        "--max-memory",
        help="RAM for the row summaries, e.g. 8G or 50% (default: 25% of RAM); beyond it the "
        "build spills row buckets to disk beside --out (12 B per token and column; free space "
        "checked before the pass) and counts them one after another (same memory). "
        "With --scheduler: per bucket task (default: a third of a worker's memory limit).",
    ),
]
CountsPartitionsOpt = Annotated[
    int | None,
    typer.Option(
        "--partitions",
        help="Count in N row buckets from the start (pairs spilled beside the output, each "
        "bucket counted on its own: ~1/N the RAM; the memory is the same bit for bit). With "
        "--scheduler: the buckets the workers count (default: sized from --max-memory).",
    ),
]


@command("build-counts")
def build_counts_command(
    ctx: typer.Context,
    corpus: CorpusArg,
    vocab: VocabOpt,
    out: OutOpt,
    preset: LayoutFlags.Preset = None,
    ngram_vocab: LayoutFlags.NgramVocab = None,
    max_ngram: LayoutFlags.MaxNgram = None,
    heads: LayoutFlags.Heads = None,
    layers: LayoutFlags.Layers = None,
    seed: LayoutFlags.Seed = None,
    pad_id: LayoutFlags.PadId = None,
    config: LayoutFlags.Config = None,
    like: LikeOpt = None,
    top_k: TopKOpt = None,
    tokenizer: TokenizerOpt = "deepseek-v4",
    corpus_format: FormatOpt = CorpusFormat.auto,
    text_field: TextFieldOpt = "text",
    tokens_field: TokensFieldOpt = None,
    doc_sep: DocSepFlag = False,
    doc_sep_id: DocSepIdOpt = None,
    token_dtype: TokenDtypeOpt = None,
    limit_tokens: LimitTokensOpt = None,
    batch_tokens: BatchTokensOpt = 1 << 18,
    max_memory: CountsMemoryOpt = None,
    partitions: CountsPartitionsOpt = None,
    append: AppendFlag = False,
    scheduler: SchedulerOpt = None,
    overwrite: OverwriteOpt = False,
    json_out: JsonFlag = False,
) -> None:
    """Count what follows each context of a corpus into a count memory (one streaming pass).

    Every position's context rows (the Engram hashing of the layout: each layer, order and head;
    plus the last token exactly) keep their top-K next tokens with counts; the unigram is exact.
    A gate λ is fitted on a held-out 5% and stored. Only the rows that occur are kept (RAM and
    disk grow with them, not with the layout); past --max-memory the build spills row buckets to
    disk. Use it with eval/generate --counts (docs/counts.md).

    --append adds a corpus to an existing memory: the new files are written beside the old
    and zarr.json's rename commits them (an interrupted append leaves the old memory).

    With --scheduler the corpus is cut into shards whose pairs Dask workers write into row
    buckets under --out's temporary directory (it must be on a file system every worker mounts
    at the same path), then each bucket is counted on a worker (--max-memory per bucket task):
    the same memory, bit for bit, as one process. --limit-tokens and --append are refused there.

    Example:
    engramctl build-counts code.jsonl --vocab vocab.parquet --like t.zarr \\
        --out code-counts.zarr --top-k 8
    engramctl build-counts more.jsonl --vocab vocab.parquet --append \\
        --out code-counts.zarr
    engramctl build-counts code.jsonl --vocab vocab.parquet --like t.zarr \\
        --out code-counts.zarr --scheduler local:4
    """
    from .._system import parse_memory
    from ..corpus.files import CorpusOptions
    from ..counts import BuildCountsJob, build_counts

    if partitions is not None and partitions < 1:
        from ..errors import UsageError

        raise UsageError(f"--partitions must be at least 1, got {partitions}")
    memory = _appended_memory(ctx, out) if append else None
    if top_k is None:
        top_k = memory.top_k if memory is not None else 8
    job = BuildCountsJob(
        inputs=tuple(corpus), out=out, tokenizer=tokenizer, top_k=top_k,
        limit_tokens=limit_tokens, overwrite=overwrite, append=append,
        max_memory=parse_memory(max_memory) if max_memory else None,
        partitions=0 if partitions is None else partitions, scheduler=scheduler,
        corpus=CorpusOptions(
            format=corpus_format.value, text_field=text_field, tokens_field=tokens_field,
            doc_sep=doc_sep, doc_sep_id=doc_sep_id,
            token_dtype=token_dtype.value if token_dtype else None, batch_tokens=batch_tokens,
        ),
    )  # fmt: skip
    job.check()
    vocab_map = load_vocab(vocab)
    if memory is not None:
        from ..layout import ResolvedLayout

        resolved = ResolvedLayout(memory.layout, memory.layer_ids, None, None, str(out))
    else:
        resolved = resolve_layout_flags(ctx.params, vocab_map, table=like, pick_layers=True)
    quiet = STATE["quiet"] or json_out
    started = time.perf_counter()
    detail = "{docs:,} docs, {rate:,.0f} tok/s"
    with progress("build-counts", enabled=not quiet, detail=detail, transient=True) as bar:

        def on_progress(done, total, docs, tokens):
            bar(done, total, docs=docs, rate=tokens / max(time.perf_counter() - started, 1e-9))

        report = build_counts(job=job, vocab=vocab_map, layout=resolved, progress=on_progress)
    if json_out:
        typer.echo(json.dumps(report.to_dict()))
        return
    _render(report)


LAYOUT_FLAGS = ("preset", "ngram_vocab", "max_ngram", "heads", "layers", "seed", "pad_id",
                "config", "like")  # fmt: skip


def _appended_memory(ctx, out: Path):
    """The memory ``--append`` adds to (opened: a damaged one is named); layout flags refused."""
    from ..counts import open_counts
    from ..errors import UsageError

    given = [name for name in LAYOUT_FLAGS if ctx.params.get(name) is not None]
    if given:
        flags = ", ".join("--" + name.replace("_", "-") for name in given)
        raise UsageError(f"--append takes the memory's own layout; drop {flags}")
    if not Path(out).exists():
        from ..errors import EngramError

        raise EngramError(f"--append needs a count memory at {out}; build it first")
    return open_counts(out)


def _render(report) -> None:
    from .._system import format_bytes

    table = Table(title=f"count memory {report.path}", show_header=False)
    table.add_row("tokens / documents", f"{report.tokens:,} / {report.documents:,}")
    table.add_row("pairs counted", f"{report.pairs:,} ({report.heldout_pairs:,} held out first)")
    table.add_row("rows occupied x K", f"{report.occupied_rows:,} of {report.rows:,} x "
                                        f"{report.top_k}")  # fmt: skip
    table.add_row("rows with all K slots taken", f"{report.full_rows:,}")
    table.add_row("size", f"{format_bytes(report.bytes)} "
                          f"({report.bytes / report.tokens:,.1f} B per corpus token)")  # fmt: skip
    if report.scratch_bytes:
        projected = f"; projected {format_bytes(report.disk['spill'])}" if report.disk else ""
        table.add_row("row-bucket scratch", f"{format_bytes(report.scratch_bytes)} at the "
                                            f"pass's end{projected} (removed)")  # fmt: skip
    table.add_row("discounts (unigram, 1..M)", ", ".join(f"{d:.3f}" for d in report.discounts))
    gate = report.gate
    if gate.get("fitted"):
        table.add_row(
            "gate (held-out)",
            f"mean λ {gate['mean_lambda']:.3f}; loss counts {gate['heldout_loss_counts']:.3f}, "
            f"unigram {gate['heldout_loss_unigram']:.3f}, mixed {gate['heldout_loss_mixed']:.3f}"
            " (against the unigram: fit it for a model with engramctl fit-gate)",
        )
    else:
        table.add_row("gate", f"not fitted ({gate['reason']}): constant λ 0.25")
    table.add_row("time", f"{report.seconds:,.1f} s")
    console.print(table)
    console.print(f"wrote {report.path}")


@command("fit-gate")
def fit_gate_command(
    counts: Annotated[Path, typer.Argument(help="The count memory whose gate to fit.")],
    model: ModelFlags.Model,
    benchmark: Annotated[
        list[Path],
        typer.Option(
            "--benchmark",
            help="Held-out text to fit on (any corpus eval reads); repeat it for each domain "
            "the mix will see.",
        ),
    ],
    keep: Annotated[
        list[Path] | None,
        typer.Option(
            "--keep",
            help="Held-out text of a domain the model already knows (fitted on too): the mix "
            "may cost it at most --keep-nats nats/token in sample. Repeatable.",
        ),
    ] = None,
    keep_nats: Annotated[
        float,
        typer.Option(
            "--keep-nats",
            help="What the mix may cost each --keep file in sample.",
            callback=finite_number,
        ),
    ] = 0.005,
    features: Annotated[
        str,
        typer.Option(
            "--features",
            help="What the gate reads: recent (default: the evidence and how the counts did "
            "against the model on the document so far), evidence, entropy, levels, agreement "
            "or all (docs/counts.md, The gate).",
        ),
    ] = "recent",
    table: ModelFlags.Table = None,
    batch: Annotated[int, typer.Option("--batch", help="Windows per forward pass.")] = 16,
    device: ModelFlags.Device = Device.auto,
    cache_rows: ModelFlags.CacheRows = ModelFlags.CACHE_ROWS,
    resident: ModelFlags.Resident = False,
    tokenizer: ModelFlags.Tokenizer = None,
    json_out: JsonFlag = False,
) -> None:
    """Fit a count memory's gate λ against the model it will be mixed with, and store it.

    Per held-out token the model's and the counts' probabilities (as eval computes them)
    give the weights of λ(evidence) that maximize P = (1 - λ) P_model + λ P_counts; the
    gate, the fit's figures and the model's identity replace the memory's gate in one commit
    (eval warns when it mixes with another model). build-counts' own gate is fitted against
    the unigram and leans towards the counts.

    Example:
    engramctl fit-gate code-counts.zarr --model m --table t.zarr \\
        --benchmark code-heldout.jsonl --keep docs-heldout.jsonl
    """
    from ..errors import UsageError
    from ..model.serve.gate_fit import fit_counts_gate
    from ..model.serve.opening import ModelSpec
    from . import model_cmd

    if batch < 1:
        raise UsageError(f"--batch must be at least 1, got {batch}")
    quiet = STATE["quiet"] or json_out
    with (
        model_cmd.model_table(model, table) as table_handle,
        progress("fit-gate", enabled=not quiet, unit="steps", transient=True) as update,
    ):
        gate = fit_counts_gate(
            model=ModelSpec(model, table_handle, device.value, cache_rows, resident, tokenizer),
            counts_path=counts, benchmarks=list(benchmark), batch=batch, on_progress=update,
            features=features, keep=tuple(keep or ()), keep_nats=keep_nats,
        )  # fmt: skip
    if json_out:
        typer.echo(json.dumps(gate))
        return
    console.print(
        f"gate of {counts} fitted for {model} on {gate['heldout_positions']:,} held-out tokens: "
        f"mean λ {gate['mean_lambda']:.3f}; loss model {gate['heldout_loss_model']:.4f}, counts "
        f"{gate['heldout_loss_counts']:.4f}, mixed {gate['heldout_loss_mixed']:.4f}"
    )
    kept = gate.get("keep")
    if kept:
        costs = ", ".join(f"{c:+.4f}" for c in kept["costs"])
        verdict = "met" if kept["met"] else "NOT met at the largest weight"
        console.print(f"--keep: in-sample cost {costs} nats/token (bound {kept['nats']}): "
                      f"{verdict}; kept files weigh {kept['weight']:g}x")  # fmt: skip


def is_counts_path(path: str) -> bool:
    """Is ``path`` (as ``info``/``verify`` got it) a local count memory?"""
    from ..counts import is_counts_store

    return "://" not in str(path) and is_counts_store(Path(path))


def show_counts_info(path: str, *, json_out: bool) -> None:
    """``engramctl info`` of a count memory."""
    from .._system import format_bytes
    from ..counts import describe_counts

    doc = describe_counts(Path(path))
    if json_out:
        typer.echo(json.dumps(doc))
        return
    lay, corpus, gate = doc["layout"], doc["corpus"], doc["gate"] or {}
    console.print(
        f"[bold]{path}[/]: count memory, top-{doc['top_k']} continuations per row, "
        f"{doc['occupied_rows'] or doc['rows']:,} of {doc['rows']:,} rows stored, "
        f"{format_bytes(doc['bytes'])}; vocab {doc['vocab_fingerprint']}"
    )
    console.print(
        f"layout: orders 2..{lay['max_ngram']}, {lay['heads']} heads per order, ngram_vocab "
        f"{lay['ngram_vocab']}, layers counted {doc['layers']}, seed {lay['seed']}"
    )
    console.print(
        f"corpus: {corpus.get('tokens', 0):,} tokens, {corpus.get('documents', 0):,} documents, "
        f"{corpus.get('file_count', 0)} file(s); discounts "
        + ", ".join(f"{d:.3f}" for d in doc["discounts"])
    )
    if gate.get("fitted"):
        against = (gate.get("model") or {}).get("path") or "the unigram (build time)"
        console.print(
            f"gate: fitted against {against} on {gate['heldout_positions']:,} held-out "
            f"positions, mean λ {gate['mean_lambda']:.3f}; weights "
            + ", ".join(
                f"{name} {w:.3f}"
                for name, w in zip(gate.get("features") or [], gate["weights"], strict=False)
            )  # fmt: skip
        )
        if gate.get("keep"):
            k = gate["keep"]
            costs = ", ".join(f"{c:+.4f}" for c in k["costs"])
            verdict = "met" if k["met"] else "NOT met"
            console.print(f"  --keep {', '.join(k.get('files', []))}: in-sample cost {costs} "
                          f"nats/token (bound {k['nats']}, {verdict})")  # fmt: skip
    else:
        console.print(f"gate: not fitted ({gate.get('reason')}), constant λ")


def verify_counts_command(path: str, *, vocab, json_out: bool) -> None:
    """``engramctl verify`` of a count memory: metadata checksum and every array's CRC-32."""
    from ..counts import verify_counts
    from .app import err_console

    problems = verify_counts(Path(path))
    if vocab is not None and not problems:
        from ..counts.store import read_metadata

        made_for = read_metadata(Path(path))["vocab_fingerprint"]
        if made_for != vocab.fingerprint:
            problems.append(f"built for vocab {made_for}, the vocab given is {vocab.fingerprint}")
    if json_out:
        typer.echo(json.dumps({"path": path, "kind": "counts", "ok": not problems,
                               "problems": problems}))  # fmt: skip
    else:
        for problem in problems:
            err_console.print(f"damaged: {problem}", markup=False)
        if not STATE["quiet"]:
            status = "[green]ok[/]" if not problems else f"[red]{len(problems)} problem(s)[/]"
            console.print(f"{path}: count memory {status} (every array's CRC-32 re-read)")
    if problems:
        raise typer.Exit(1)
