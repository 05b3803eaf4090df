"""The checkpoint parts of ``import``, ``export`` and ``info``: a model checkpoint directory in
(copy or ``--link``), a DeepSeek checkpoint out (``--format deepseek``), a link's sources shown.
The commands themselves live in :mod:`engramctl.cli.table_cmd`; these are the branches they call.
"""

from __future__ import annotations

import json

import typer
from rich.table import Table as RichTable

from .app import STATE, console
from .progress import progress


def import_checkpoint_dir(source, out, *, vocab, layers, link, dtype, chunk_rows, compressor,
                          overwrite, json_out, fixed_flags: list[str]):  # fmt: skip
    """``import CKPT_DIR``: refuse layout flags (the config gives the layout), then copy/link."""
    from ..errors import UsageError
    from ..layout import parse_int_list
    from ..table.formats.checkpoint_import import checkpoint_vocab, import_checkpoint

    if fixed_flags:
        raise UsageError(
            f"{source} is a checkpoint directory: its config.json gives the layout and its "
            f"tensor names are fixed; drop {', '.join(fixed_flags)}"
        )
    vocab_map = checkpoint_vocab(source, vocab)
    with progress("link" if link else "import", enabled=not (json_out or STATE["quiet"])) as bar:
        return import_checkpoint(
            source,
            out,
            vocab=vocab_map,
            layers=parse_int_list(layers, name="--layers") if layers is not None else None,
            link=link,
            dtype=dtype,
            chunk_rows=chunk_rows,
            compressor=compressor,
            overwrite=overwrite,
            progress=bar,
        )


def export_deepseek(table, out, *, max_shard_size: str, overwrite: bool, json_out: bool) -> None:
    """``export --format deepseek``: shards, index and config.json; the quantization error."""
    from .._system import format_bytes
    from ..table.formats.checkpoint_export import export_checkpoint, parse_shard_size

    limit = parse_shard_size(max_shard_size)
    with progress("export", enabled=not (json_out or STATE["quiet"])) as update:
        result = export_checkpoint(
            table, out, max_shard_size=limit, overwrite=overwrite, progress=update
        )
    if json_out:
        typer.echo(json.dumps(result.to_dict()))
    elif not STATE["quiet"]:
        error = (
            f"; quantized to e4m3 + ue8m0, relative error per row max "
            f"{result.max_relative_error:.4f}, mean {result.mean_relative_error:.4f}"
            if result.quantized
            else ""
        )
        console.print(
            f"wrote {out}: {len(result.shards)} shards, {len(result.tensors)} tensors, "
            f"{format_bytes(result.bytes_written)} in {result.seconds:.1f}s{error}"
        )


def print_sources(sources: dict) -> None:
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
