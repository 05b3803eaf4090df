"""``engramctl init-table | info | verify | export | import``: tables on disk."""

from __future__ import annotations

import contextlib
import json
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table as RichTable

from .app import STATE, command, console, err_console
from .options import (
    ConfigOpt,
    HeadsOpt,
    JsonFlag,
    LayersOpt,
    MaxNgramOpt,
    NgramVocabOpt,
    PadIdOpt,
    PresetOpt,
    SchedulerOpt,
    VocabOpt,
    build_layout,
    layout_defaults,
    load_vocab,
)


class InitKind(str, Enum):
    normal = "normal"
    uniform = "uniform"
    zeros = "zeros"


class ExportFormat(str, Enum):
    safetensors = "safetensors"
    deepseek = "deepseek"


class Compressor(str, Enum):
    none = "none"
    zstd = "zstd"


TableArg = Annotated[Path, typer.Argument(help="Table directory (a zarr v3 group).")]
LayoutSeedOpt = Annotated[
    int | None,
    typer.Option("--layout-seed", help="The layout's multiplier seed (the --seed of hash/layout)."),
]
DtypeOpt = Annotated[
    str | None,
    typer.Option("--dtype", help="float32, bfloat16, float16 or float8_e4m3fn."),
]
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
OverwriteOpt = Annotated[bool, typer.Option("--overwrite", help="Replace an existing output.")]
TableUrlArg = Annotated[
    str, typer.Argument(help="Table directory, or an fsspec URL such as s3://bucket/t.zarr.")
]
StorageOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--storage-option",
        metavar="KEY=VALUE",
        help="fsspec option of a URL table, KEY=VALUE (repeatable), e.g. endpoint_url=http://h:9000.",
    ),
]


def _storage_options(items: list[str] | None) -> dict | None:
    from ..table.store import parse_storage_options

    return parse_storage_options(items) or None


@contextlib.contextmanager
def byte_progress(description: str, *, enabled: bool):
    """A rich bar showing bytes done, total, speed and ETA; yields ``update(done, total)``."""
    if not enabled:
        yield lambda done, total: None
        return
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
    )
    bar = Progress(*columns, console=err_console, transient=False)
    task = None

    def update(done: int, total: int) -> None:
        nonlocal task
        if task is None:  # start on the first report, so an early error shows no empty bar
            bar.start()
            task = bar.add_task(description, total=total)
        bar.update(task, completed=done, total=total)

    try:
        yield update
    finally:
        if task is not None:  # stopping a bar never started prints an empty line
            bar.stop()


def _layout(vocab_map, preset, ngram_vocab, max_ngram, heads, layers, layout_seed, pad_id, config):
    return build_layout(
        vocab_map,
        preset=preset,
        ngram_vocab=ngram_vocab,
        max_ngram=max_ngram,
        heads=heads,
        layers=layers,
        seed=layout_seed,
        pad_id=pad_id,
        config=config,
    )


@command("init-table")
def init_table_command(
    out: TableUrlArg,
    vocab: VocabOpt,
    preset: PresetOpt = None,
    ngram_vocab: NgramVocabOpt = None,
    max_ngram: MaxNgramOpt = None,
    heads: HeadsOpt = None,
    layers: LayersOpt = None,
    layout_seed: LayoutSeedOpt = None,
    pad_id: PadIdOpt = None,
    config: ConfigOpt = None,
    dim: Annotated[
        int | None, typer.Option("--dim", help="Values per row. (default: the preset's)")
    ] = None,
    dtype: DtypeOpt = None,
    init: Annotated[InitKind, typer.Option("--init", help="Initial values.")] = InitKind.normal,
    std: Annotated[float, typer.Option("--std", help="Std of normal/uniform values.")] = 0.02,
    seed: Annotated[int, typer.Option("--seed", help="Init seed (with layer, row, column).")] = 0,
    lazy: Annotated[
        bool, typer.Option("--lazy", help="Write metadata only; chunks are made on first write.")
    ] = False,
    chunk_rows: ChunkRowsOpt = None,
    compressor: CompressorOpt = Compressor.none,
    workers: Annotated[
        int | None,
        typer.Option("--workers", help="Writer threads without --scheduler. (default: all cores)"),
    ] = None,
    overwrite: OverwriteOpt = False,
    scheduler: SchedulerOpt = None,
    storage_option: StorageOpt = None,
    json_out: JsonFlag = False,
) -> None:
    """Create a table: one array per Engram layer, filled with deterministic init values.

    Re-running the same command on an interrupted init resumes it (writes only what is missing).
    With --scheduler the Dask workers write the chunks straight to the table's store (a shared
    path or a URL); the table is bit-identical to a single-process init.

    Example: engramctl init-table table.zarr --vocab vocab.parquet --preset demo-v1 --lazy
    """
    from ..errors import UsageError
    from ..table.create import create_table
    from ..table.dtypes import format_bytes, parse_dtype

    if workers is not None and workers < 1:
        raise UsageError(f"--workers must be at least 1, got {workers}")
    vocab_map = load_vocab(vocab)
    layout = _layout(
        vocab_map, preset, ngram_vocab, max_ngram, heads, layers, layout_seed, pad_id, config
    )
    default_dim, default_dtype = layout_defaults(preset, config)
    with byte_progress("init", enabled=not (json_out or STATE["quiet"] or lazy)) as update:
        result = create_table(
            out,
            layout=layout,
            vocab_fingerprint=vocab_map.fingerprint,
            dim=dim if dim is not None else default_dim,
            dtype=parse_dtype(dtype or default_dtype),
            init=init.value,
            std=std,
            seed=seed,
            lazy=lazy,
            chunk_rows=chunk_rows,
            compressor=compressor.value,
            workers=workers,
            overwrite=overwrite,
            progress=lambda p: update(p.bytes_done, p.bytes_total),
            scheduler=scheduler,
            storage_options=_storage_options(storage_option),
        )
    if json_out:
        doc = result.info.to_dict()
        doc.update(
            resumed=result.resumed,
            chunks_written_now=result.chunks_written,
            chunks_skipped=result.chunks_skipped,
            seconds=round(result.seconds, 3),
        )
        typer.echo(json.dumps(doc))
        return
    if STATE["quiet"]:
        return
    info = result.info
    kind = "lazy table" if info.lazy else "table"
    verb = "resumed" if result.resumed else "created"
    console.print(
        f"{verb} {kind} {out}: layers {list(info.layers)}, dim {info.dim} {info.dtype}, "
        f"{format_bytes(info.logical_bytes)} logical, {format_bytes(info.disk_bytes)} on disk, "
        f"{result.chunks_written} chunks written"
        + (f" ({result.chunks_skipped} already done)" if result.chunks_skipped else "")
        + f" in {result.seconds:.1f}s"
    )


@command("info")
def info_command(
    table: TableUrlArg, storage_option: StorageOpt = None, json_out: JsonFlag = False
) -> None:
    """Show a table's layout, layers, heads, chunking and size (local or fsspec URL).

    Example: engramctl info table.zarr --json
    """
    from ..table.dtypes import format_bytes
    from ..table.table import open_table

    info = open_table(table, storage_options=_storage_options(storage_option)).info
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
    storage_option: StorageOpt = None,
    json_out: JsonFlag = False,
) -> None:
    """Check a table's metadata against its layout, and (--deep) every chunk's checksum.

    Exits 1 on any damage.

    Example: engramctl verify table.zarr --deep
    """
    from ..table.verify import verify_table

    vocab_map = load_vocab(vocab) if vocab else None
    with byte_progress("verify", enabled=deep and not (json_out or STATE["quiet"])) as update:
        report = verify_table(
            table,
            deep=deep,
            vocab=vocab_map,
            progress=update,
            storage_options=_storage_options(storage_option),
        )
    if json_out:
        typer.echo(json.dumps(report.to_dict()))
    else:
        for warning in report.warnings:
            err_console.print(f"warning: {warning}", markup=False)
        for problem in report.problems:
            err_console.print(f"damaged: {problem}", markup=False)
        checked = f", {report.chunks_checked} checksums re-read" if deep else ""
        status = "[green]ok[/]" if report.ok else f"[red]{len(report.problems)} problem(s)[/]"
        if not STATE["quiet"]:
            console.print(
                f"{table}: {status} ({report.chunks_written} of "
                f"{report.chunks_total} chunks written{checked})"
            )
    if not report.ok:
        raise typer.Exit(1)


@command("export")
def export_command(
    table: TableArg,
    out: Annotated[
        Path,
        typer.Argument(help="safetensors file to write (a directory with --format deepseek)."),
    ],
    export_format: Annotated[
        ExportFormat,
        typer.Option(
            "--format",
            help="safetensors: one file, one tensor per layer. deepseek: a checkpoint directory "
            "(layers.L.engram.embed.weight/scale shards, index, config.json).",
        ),
    ] = ExportFormat.safetensors,
    max_shard_size: Annotated[
        str,
        typer.Option("--max-shard-size", help="Largest shard of --format deepseek (5GB, 4GiB)."),
    ] = "5GB",
    tensor_name: TensorNameOpt = "layer_{layer}",
    overwrite: OverwriteOpt = False,
    json_out: JsonFlag = False,
) -> None:
    """Stream a table to safetensors: one file, or a DeepSeek checkpoint directory.

    --format deepseek writes F8_E4M3 weights and F8_E8M0 scales under the checkpoint's names; a
    float table is quantized on the way and the relative error (per row, L2) is reported.

    Example: engramctl export table.zarr table.safetensors

    Example: engramctl export table.zarr ckpt_out --format deepseek --max-shard-size 5GB
    """
    from ..errors import UsageError
    from ..table.dtypes import format_bytes

    if export_format is ExportFormat.deepseek:
        from ..table.checkpoint_export import export_checkpoint, parse_shard_size

        if tensor_name != "layer_{layer}":
            raise UsageError("--tensor-name: --format deepseek uses the checkpoint's names")
        limit = parse_shard_size(max_shard_size)
        with byte_progress("export", enabled=not (json_out or STATE["quiet"])) as update:
            ckpt = export_checkpoint(
                table, out, max_shard_size=limit, overwrite=overwrite, progress=update
            )
        if json_out:
            typer.echo(json.dumps(ckpt.to_dict()))
        elif not STATE["quiet"]:
            error = (
                f"; quantized to e4m3 + ue8m0, relative error per row max "
                f"{ckpt.max_relative_error:.4f}, mean {ckpt.mean_relative_error:.4f}"
                if ckpt.quantized
                else ""
            )
            console.print(
                f"wrote {out}: {len(ckpt.shards)} shards, {len(ckpt.tensors)} tensors, "
                f"{format_bytes(ckpt.bytes_written)} in {ckpt.seconds:.1f}s{error}"
            )
        return
    from ..table.safetensors import export_safetensors

    with byte_progress("export", enabled=not (json_out or STATE["quiet"])) as update:
        result = export_safetensors(
            table, out, overwrite=overwrite, name_template=tensor_name, progress=update
        )
    if json_out:
        typer.echo(
            json.dumps(
                {
                    "out": result.path,
                    "tensors": result.tensors,
                    "bytes": result.bytes_written,
                    "seconds": round(result.seconds, 3),
                }
            )
        )
    elif not STATE["quiet"]:
        console.print(
            f"wrote {out}: {len(result.tensors)} tensors, "
            f"{format_bytes(result.bytes_written)} in {result.seconds:.1f}s"
        )


@command("import")
def import_command(
    source: Annotated[
        Path,
        typer.Argument(
            help="A checkpoint directory (config.json + safetensors shards), or a safetensors "
            "file with one tensor per layer."
        ),
    ],
    out: TableArg,
    vocab: Annotated[
        Path | None,
        typer.Option(
            "--vocab",
            help="Canonical vocab Parquet (from engramctl build-vocab). A checkpoint directory "
            "with a tokenizer.json may omit it.",
        ),
    ] = None,
    link: Annotated[
        bool,
        typer.Option(
            "--link",
            help="Checkpoint directory: record where the rows lie instead of copying them "
            "(zero-copy, read-only; seconds and kilobytes at any size).",
        ),
    ] = False,
    preset: PresetOpt = None,
    ngram_vocab: NgramVocabOpt = None,
    max_ngram: MaxNgramOpt = None,
    heads: HeadsOpt = None,
    layers: Annotated[
        str | None,
        typer.Option(
            "--layers",
            help="Engram layer ids, e.g. 1,14 (a checkpoint directory: import only these).",
        ),
    ] = None,
    layout_seed: LayoutSeedOpt = None,
    pad_id: PadIdOpt = None,
    config: ConfigOpt = None,
    tensor_name: TensorNameOpt = "layer_{layer}",
    dtype: Annotated[
        str | None, typer.Option("--dtype", help="Convert to this dtype. (default: the file's)")
    ] = None,
    chunk_rows: ChunkRowsOpt = None,
    compressor: CompressorOpt = Compressor.none,
    overwrite: OverwriteOpt = False,
    json_out: JsonFlag = False,
) -> None:
    """Build a table from a model checkpoint (copy or --link) or from a safetensors file.

    A checkpoint directory's config.json gives the layout (checked against the vocab) and its
    layers.L.engram.embed.weight/scale tensors the rows. A copy is resumable: rerun the same
    command after an interruption. A safetensors file needs one (sum of head primes) x dim
    tensor per layer and the layout flags.

    Example: engramctl import DeepSeek-V4.1/ v41.zarr --link --vocab vocab.parquet

    Example: engramctl import trained.safetensors table.zarr --vocab vocab.parquet --preset demo-v1
    """
    from ..errors import UsageError
    from ..table.dtypes import format_bytes

    if source.is_dir():
        from ..layout import parse_int_list
        from ..table.checkpoint_import import checkpoint_vocab, import_checkpoint

        flags = {
            "--preset": preset, "--ngram-vocab": ngram_vocab, "--max-ngram": max_ngram,
            "--heads": heads, "--layout-seed": layout_seed, "--pad-id": pad_id,
            "--config": config,
        }  # fmt: skip
        given = [name for name, value in flags.items() if value is not None]
        if tensor_name != "layer_{layer}":
            given.append("--tensor-name")
        if given:
            raise UsageError(
                f"{source} is a checkpoint directory: its config.json gives the layout and its "
                f"tensor names are fixed; drop {', '.join(given)}"
            )
        vocab_map = checkpoint_vocab(source, vocab)
        description = "link" if link else "import (chunks)"
        with byte_progress(description, enabled=not (json_out or STATE["quiet"])) as update:
            result = import_checkpoint(
                source,
                out,
                vocab=vocab_map,
                layers=parse_int_list(layers, name="--layers") if layers is not None else None,
                link=link,
                dtype=dtype,
                chunk_rows=chunk_rows,
                compressor=compressor.value,
                overwrite=overwrite,
                progress=update,
            )
    else:
        from ..table.safetensors import import_safetensors

        if link:
            raise UsageError(f"--link needs a checkpoint directory; {source} is not one")
        if vocab is None:
            raise UsageError("importing a safetensors file needs --vocab")
        vocab_map = load_vocab(vocab)
        layout = _layout(
            vocab_map, preset, ngram_vocab, max_ngram, heads, layers, layout_seed, pad_id, config
        )
        with byte_progress("import (chunks)", enabled=not (json_out or STATE["quiet"])) as update:
            result = import_safetensors(
                source,
                out,
                layout=layout,
                vocab_fingerprint=vocab_map.fingerprint,
                name_template=tensor_name,
                dtype=dtype,
                chunk_rows=chunk_rows,
                compressor=compressor.value,
                overwrite=overwrite,
                progress=update,
            )
    if json_out:
        doc = result.info.to_dict()
        doc.update(
            resumed=result.resumed,
            chunks_written_now=result.chunks_written,
            chunks_skipped=result.chunks_skipped,
            seconds=round(result.seconds, 3),
        )
        typer.echo(json.dumps(doc))
    elif not STATE["quiet"]:
        info = result.info
        verb = "linked" if link else ("resumed and imported" if result.resumed else "imported")
        console.print(
            f"{verb} {source} into {out}: layers {list(info.layers)}, dim "
            f"{info.dim} {info.dtype}, {format_bytes(info.logical_bytes)} of rows, "
            f"{format_bytes(info.disk_bytes)} written in {result.seconds:.1f}s"
        )
