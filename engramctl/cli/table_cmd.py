"""``engramctl init-table | info | verify | export | import``: tables on disk.

``import`` and ``export`` dispatch through the format registry
(:mod:`engramctl.table.formats.registry`): which format, which options it takes, and the refusal
of those it does not are the library's.
"""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table as RichTable

from ..table.formats.registry import (
    EXPORT_FORMATS,
    FORMATS,
    export_table,
    import_format,
    import_table,
)
from .app import STATE, command, console, err_console
from .options import (
    CommitsDirOpt,
    Compressor,
    DimOpt,
    Dtype,
    DtypeOpt,
    InitKind,
    JsonFlag,
    LayoutFlags,
    OverwriteOpt,
    SchedulerOpt,
    StorageOpt,
    VocabOpt,
    finite_number,
    load_vocab,
    resolve_layout_flags,
    storage_options_of,
)
from .progress import progress

ExportFormat = Enum("ExportFormat", [(name, name) for name in EXPORT_FORMATS], type=str)


TableArg = Annotated[Path, typer.Argument(help="Table directory (a zarr v3 group).")]
ChunkRowsOpt = Annotated[
    int | None, typer.Option("--chunk-rows", help="Rows per chunk. (default: ~4 MiB chunks)")
]
CompressorOpt = Annotated[
    Compressor,
    typer.Option("--compressor", help="none keeps chunks memory-mappable; zstd for cold storage."),
]
TensorNameOpt = Annotated[
    str, typer.Option("--tensor-name", help="safetensors name of a layer's tensor ({layer} = id).")
]
TableUrlArg = Annotated[
    str, typer.Argument(help="Table directory, or an fsspec URL such as s3://bucket/t.zarr.")
]
InitOpt = Annotated[InitKind, typer.Option("--init", help="Initial values.")]
StdOpt = Annotated[
    float,
    typer.Option("--std", help="Std of normal/uniform values.", callback=finite_number),
]
InitSeedOpt = Annotated[
    int, typer.Option("--init-seed", help="Init seed (with layer, row, column).")
]
LazyOpt = Annotated[
    bool, typer.Option("--lazy", help="Write metadata only; chunks are made on first write.")
]
WorkersOpt = Annotated[
    int | None,
    typer.Option("--workers", help="Writer threads without --scheduler. (default: all cores)"),
]


@command("init-table")
def init_table_command(
    ctx: typer.Context,
    out: TableUrlArg,
    vocab: VocabOpt,
    preset: LayoutFlags.Preset = None,
    ngram_vocab: LayoutFlags.NgramVocab = None,
    max_ngram: LayoutFlags.MaxNgram = None,
    heads: LayoutFlags.Heads = None,
    layers: LayoutFlags.Layers = None,
    seed: LayoutFlags.Seed = None,
    pad_id: LayoutFlags.PadId = None,
    config: LayoutFlags.Config = None,
    dim: DimOpt = None,
    dtype: DtypeOpt = None,
    init: InitOpt = InitKind.normal,
    std: StdOpt = 0.02,
    init_seed: InitSeedOpt = 0,
    lazy: LazyOpt = False,
    chunk_rows: ChunkRowsOpt = None,
    compressor: CompressorOpt = Compressor.none,
    workers: WorkersOpt = None,
    overwrite: OverwriteOpt = False,
    scheduler: SchedulerOpt = None,
    storage_option: StorageOpt = None,
    json_out: JsonFlag = False,
) -> None:
    """Create a table: one array per Engram layer, filled with deterministic init values.

    Re-running the same command on an interrupted init resumes it (writes only what is missing).
    With --scheduler the Dask workers write the chunks straight to the table's store (a shared
    path or a URL); the table is bit-identical to a single-process init.

    Example:
    engramctl init-table t.zarr --vocab vocab.parquet --preset demo-v1 --lazy
    """
    from ..errors import UsageError
    from ..table.build.create import create_table
    from ..table.core.dtypes import parse_dtype

    if workers is not None and workers < 1:
        raise UsageError(f"--workers must be at least 1, got {workers}")
    vocab_map = load_vocab(vocab)
    resolved = resolve_layout_flags(ctx.params, vocab_map)
    with progress("init", enabled=not (json_out or STATE["quiet"] or lazy)) as update:
        result = create_table(
            out,
            layout=resolved.layout,
            vocab_fingerprint=vocab_map.fingerprint,
            dim=dim if dim is not None else resolved.dim,
            dtype=parse_dtype(dtype.value if dtype is not None else resolved.dtype),
            init=init.value,
            std=std,
            seed=init_seed,
            lazy=lazy,
            chunk_rows=chunk_rows,
            compressor=compressor.value,
            workers=workers,
            overwrite=overwrite,
            progress=lambda p: update(p.bytes_done, p.bytes_total),
            scheduler=scheduler,
            storage_options=storage_options_of(storage_option),
        )
    if json_out:
        typer.echo(json.dumps(result.to_dict()))
    elif not STATE["quiet"]:
        _print_created(result, out)


def _print_created(result, out: str) -> None:
    """The one line ``init-table`` prints: what it made (or that nothing was left to do)."""
    from .._system import format_bytes

    info = result.info
    kind = "lazy table" if info.lazy else "table"
    verb = "resumed" if result.resumed else "created"
    if result.resumed and result.chunks_written == 0:
        console.print(f"{out} is already complete (same settings); nothing to do")
        return
    console.print(
        f"{verb} {kind} {out}: layers {list(info.layers)}, dim {info.dim} {info.dtype}, "
        f"{format_bytes(info.logical_bytes)} logical, {format_bytes(info.disk_bytes)} on disk, "
        f"{result.chunks_written} chunks written"
        + (f" ({result.chunks_skipped} already done)" if result.chunks_skipped else "")
        + f" in {result.seconds:.1f}s"
    )


@command("info")
def info_command(
    table: TableUrlArg,
    storage_option: StorageOpt = None,
    commits_dir: CommitsDirOpt = None,
    json_out: JsonFlag = False,
) -> None:
    """Show a table's layout, layers, heads, chunking and size (local or fsspec URL).

    Example:
    engramctl info table.zarr --json
    """
    from .._system import format_bytes
    from ..table.sources.table import read_info
    from .counts_cmd import is_counts_path, show_counts_info

    if is_counts_path(table):  # a count memory (engramctl build-counts)
        return show_counts_info(table, json_out=json_out)
    options = storage_options_of(storage_option)
    info = read_info(table, storage_options=options, commits_dir=commits_dir)
    if json_out:
        typer.echo(json.dumps(info.to_dict()))
        return
    lay = info.layout
    console.print(
        f"[bold]{table}[/]: format v{info.format_version}, dim {info.dim} {info.dtype} "
        f"({info.row_bytes} bytes per row), {info.chunk_rows:,} rows per chunk, compressor "
        f"{info.compressor}, status {info.status}"
    )
    console.print(
        f"layout: orders 2..{lay.max_ngram}, {lay.heads} heads per order, ngram_vocab "
        f"{list(lay.ngram_vocab)}, seed {lay.seed}, pad id {lay.pad_id}; vocab "
        f"{info.vocab_fingerprint}; init {info.init['kind']} std {info.init['std']} seed "
        f"{info.init['seed']}"
    )
    grid = RichTable(title="layers")
    for name in ("layer", "rows", "heads", "chunks written", "logical", "on disk"):
        grid.add_column(name, justify="right")
    linked = "linked" if info.sources and info.sources["mode"] == "link" else ""
    for layer_id, layer in info.layers.items():
        grid.add_row(
            str(layer_id),
            f"{layer.rows:,}",
            str(len(layer.head_rows)),
            linked or f"{layer.chunks_written:,} / {layer.chunks_total:,}",
            format_bytes(layer.logical_bytes),
            format_bytes(layer.disk_bytes),
        )
    console.print(grid)
    heads = RichTable(title="heads: rows (offset)")
    heads.add_column("head", justify="right")
    for layer_id in info.layers:
        heads.add_column(f"layer {layer_id}", justify="right")
    for h in range(len(next(iter(info.layers.values())).head_rows)):
        heads.add_row(
            str(h), *[f"{v.head_rows[h]:,} ({v.head_offsets[h]:,})" for v in info.layers.values()]
        )
    console.print(heads)
    if info.commits:
        console.print(
            f"commits: {info.commits} over the base, {info.commit_rows:,} rows, "
            f"{format_bytes(info.commit_bytes)} (engramctl history)"
        )
    if info.sources:
        _print_sources(info.sources)


def _print_sources(sources: dict) -> None:
    """The checkpoint files a linked (or imported) table reads, and where its tensors lie."""
    verb = "linked to" if sources["mode"] == "link" else "imported from"
    console.print(f"{verb} checkpoint [bold]{sources['checkpoint']}[/]")
    grid = RichTable(title="sources")
    for name in ("layer", "part", "tensor", "file", "offset", "shape"):
        grid.add_column(name, justify="right" if name in ("layer", "offset") else "left")
    for layer_id, layer in sources["layers"].items():
        for part, entry in layer.items():
            grid.add_row(
                layer_id, part, entry["tensor"], entry["file"], f"{entry['offset']:,}",
                f"{entry['dtype']} {entry['shape']}",
            )  # fmt: skip
    console.print(grid)
    for name, record in sources["files"].items():
        console.print(
            f"  {name}: {record['size']:,} bytes, header sha256 {record['header_sha256'][:16]}",
            markup=False,
        )


@command("verify")
def verify_command(
    table: TableUrlArg,
    deep: Annotated[bool, typer.Option("--deep", help="Re-read every chunk's checksum.")] = False,
    vocab: Annotated[
        Path | None, typer.Option("--vocab", help="Also check the table was made for this vocab.")
    ] = None,
    add_block_checksums: Annotated[
        bool,
        typer.Option(
            "--add-block-checksums",
            help="Then record a CRC-32C of every block of every sound chunk (or of a linked "
            "table's checkpoint tensors), so reads check what they read (local tables of "
            "uncompressed chunks, links).",
        ),
    ] = False,
    block_size: Annotated[
        str,
        typer.Option(
            "--block-size",
            help="Block of --add-block-checksums: 4K (a page: checked reads cost nothing) to 1M.",
        ),
    ] = "4K",
    storage_option: StorageOpt = None,
    commits_dir: CommitsDirOpt = None,
    json_out: JsonFlag = False,
) -> None:
    """Check a table's metadata against its layout, and (--deep) every chunk's checksum.

    Exits 1 on any damage.

    Example:
    engramctl verify table.zarr --deep
    """
    from ..table.core.blocksums import parse_block_size
    from ..table.verify import verify_table
    from .counts_cmd import is_counts_path, verify_counts_command

    if add_block_checksums:
        parse_block_size(block_size)  # refused before the table is read
    vocab_map = load_vocab(vocab) if vocab else None
    if is_counts_path(table):  # a count memory: every array's CRC-32 is re-read
        return verify_counts_command(table, vocab=vocab_map, json_out=json_out)
    with progress("verify", enabled=deep and not (json_out or STATE["quiet"])) as update:
        report = verify_table(
            table,
            deep=deep,
            vocab=vocab_map,
            progress=update,
            storage_options=storage_options_of(storage_option),
            commits_dir=commits_dir,
        )
    if json_out:
        typer.echo(json.dumps(report.to_dict()))
    else:
        for warning in report.warnings:
            err_console.print(f"warning: {warning}", markup=False)
        for problem in report.problems:
            err_console.print(f"damaged: {problem}", markup=False)
        checked = f", {report.chunks_checked} checksums re-read" if deep else ""
        if report.commits:
            checked += f"; {report.commits} commits, {report.segments_checked} segments checked"
        status = "[green]ok[/]" if report.ok else f"[red]{len(report.problems)} problem(s)[/]"
        if not STATE["quiet"]:
            console.print(
                f"{table}: {status} ({report.chunks_written} of "
                f"{report.chunks_total} chunks written{checked})"
            )
    if add_block_checksums:
        _add_block_checksums(table, block_size, quiet=json_out or STATE["quiet"])
    if not report.ok:
        raise typer.Exit(1)


def _add_block_checksums(table: str, block_size: str, *, quiet: bool) -> None:
    from ..table.verify import add_block_checksums

    with progress("block checksums", enabled=not quiet) as update:
        added = add_block_checksums(table, block_bytes=block_size, progress=update)
    for line in added.damaged:
        err_console.print(f"damaged: {line}", markup=False)
    if not quiet and added.linked_layers:
        console.print(
            f"{table}: block checksums recorded for the linked tensors of {added.linked_layers} "
            f"layers ({added.block_bytes // 1024} KiB blocks, {added.bytes_read:,} bytes read)"
        )
    elif not quiet:
        console.print(
            f"{table}: block checksums recorded for {added.chunks_recorded} chunks "
            f"({added.block_bytes // 1024} KiB blocks)"
        )
    if added.damaged:
        raise typer.Exit(1)


@command("export")
def export_command(
    ctx: typer.Context,
    table: TableUrlArg,
    out: Annotated[
        Path, typer.Argument(help="safetensors file (a directory with --format deepseek).")
    ],
    export_format: Annotated[
        ExportFormat,
        typer.Option(
            "--format",
            help=" ".join(f"{f.name}: {f.description}." for f in FORMATS if f.exporter),
        ),
    ] = ExportFormat.safetensors,
    max_shard_size: Annotated[
        str, typer.Option("--max-shard-size", help="Largest shard with --format deepseek.")
    ] = "5GB",
    tensor_name: TensorNameOpt = "layer_{layer}",
    overwrite: OverwriteOpt = False,
    commits_dir: CommitsDirOpt = None,
    storage_option: StorageOpt = None,
    json_out: JsonFlag = False,
) -> None:
    """Stream a table to safetensors: one file, or a DeepSeek checkpoint (--format deepseek:
    F8_E4M3 weights + F8_E8M0 scales; a float table is quantized, its error reported).

    Example:
    engramctl export table.zarr ckpt_out --format deepseek --max-shard-size 5GB
    """
    options = _given_options(ctx, "export_format", "json_out")
    if "storage_option" in options:
        options["storage_option"] = storage_options_of(storage_option)
    with progress("export", enabled=not (json_out or STATE["quiet"])) as update:
        result = export_table(
            table,
            out,
            format_name=export_format.value,
            options=options,
            progress=update,
        )
    if json_out:
        typer.echo(json.dumps(result.to_dict()))
    elif not STATE["quiet"]:
        console.print(f"wrote {out}: {result.summary()}")


SourceArg = Annotated[
    str,
    typer.Argument(
        help="A checkpoint directory (config.json + safetensors shards; or its URL with "
        "--link), or a safetensors file with one tensor per layer."
    ),
]
ImportVocabOpt = Annotated[
    Path | None,
    typer.Option(
        "--vocab",
        help="Canonical vocab Parquet (engramctl build-vocab); a checkpoint directory with a "
        "tokenizer.json may omit it.",
    ),
]
LinkOpt = Annotated[
    bool,
    typer.Option(
        "--link",
        help="Checkpoint directory or URL (s3://, https://, hf://): record where its rows lie "
        "instead of copying them (zero-copy, read-only). Block checksums of the linked tensors "
        "are recorded by reading them once (always for a URL; locally up to 2 GiB, else by "
        "verify --deep).",
    ),
]
CacheDirOpt = Annotated[
    Path | None,
    typer.Option(
        "--cache-dir",
        help="--link to a URL: keep fetched 4 KiB blocks in this directory (checked before they "
        "are kept and when read back).",
    ),
]
ImportDtypeOpt = Annotated[
    Dtype | None, typer.Option("--dtype", help="Convert to this dtype. (default: the file's)")
]


@command("import")
def import_command(
    ctx: typer.Context,
    source: SourceArg,
    out: TableArg,
    vocab: ImportVocabOpt = None,
    link: LinkOpt = False,
    cache_dir: CacheDirOpt = None,
    storage_option: StorageOpt = None,
    preset: LayoutFlags.Preset = None,
    ngram_vocab: LayoutFlags.NgramVocab = None,
    max_ngram: LayoutFlags.MaxNgram = None,
    heads: LayoutFlags.Heads = None,
    layers: LayoutFlags.Layers = None,
    seed: LayoutFlags.Seed = None,
    pad_id: LayoutFlags.PadId = None,
    config: LayoutFlags.Config = None,
    tensor_name: TensorNameOpt = "layer_{layer}",
    dtype: ImportDtypeOpt = None,
    chunk_rows: ChunkRowsOpt = None,
    compressor: CompressorOpt = Compressor.none,
    overwrite: OverwriteOpt = False,
    json_out: JsonFlag = False,
) -> None:
    """Build a table from a model checkpoint (a resumable copy, or --link) or a safetensors file.

    A checkpoint directory's config.json gives the layout (checked against the vocab) and its
    layers.L.engram.embed.weight/scale tensors the rows; --layers picks some of its layers. A
    safetensors file needs one (sum of head primes) x dim tensor per layer and a layout; a file
    written by engramctl export records its layout, and layout flags that disagree with it are
    refused (naming both values).

    Example:
    engramctl import DeepSeek-V4.1 v41.zarr --link --vocab vocab.parquet
    """
    bar = "link (block checksums)" if link else import_format(source).importer.progress_name
    with progress(bar, enabled=not (json_out or STATE["quiet"])) as update:
        options = _given_options(ctx, "json_out")
        if not options.get("storage_option"):  # a list option left out reads as empty
            options.pop("storage_option", None)
        result = import_table(source, out, options=options, progress=update)
    if json_out:
        typer.echo(json.dumps(result.to_dict()))
    elif not STATE["quiet"]:
        _print_imported(result, source, out, link=link)


def _given_options(ctx: typer.Context, *skip: str) -> dict:
    """The options given to a command (a value other than the default), enums as their values,
    in the command's order; not those in ``skip``, nor its arguments."""
    given = {}
    for param in ctx.command.params:
        if param.param_type_name != "option" or param.name not in ctx.params or param.name in skip:
            continue
        value = ctx.params[param.name]
        if value != param.default:
            given[param.name] = value.value if isinstance(value, Enum) else value
    return given


def _print_imported(result, source, out, *, link: bool) -> None:
    """The one line ``import`` prints: what it copied (or linked) into the table."""
    from .._system import format_bytes

    info = result.info
    verb = "linked" if link else ("resumed and imported" if result.resumed else "imported")
    console.print(
        f"{verb} {source} into {out}: layers {list(info.layers)}, dim {info.dim} "
        f"{info.dtype}, {format_bytes(info.logical_bytes)} of rows, "
        f"{format_bytes(info.disk_bytes)} written in {result.seconds:.1f}s"
    )
