"""The interchange formats, registered once: what ``import`` reads and ``export`` writes.

A :class:`TableFormat` names a format, says in one line what it is, and holds its import and/or
export: a :class:`Converter`, a keyword-only library function with the command options it takes.
The CLI builds ``export --format``'s choices and help from :data:`FORMATS` and dispatches through
:func:`import_table` and :func:`export_table`: they pick the format (by name, or by what the
import source is), refuse the options it does not take, and call its function.

Reading the registry imports nothing heavy (the CLI reads it at start-up): each function imports
its format's module when called.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

from ..._files import check_name_length, check_not_an_input
from ...errors import UsageError


# ------------------------------------------------------------- the formats' functions
# Each imports its module on first call, so that the registry stays free of zarr and numpy.
def _import_safetensors(source, out, **options):
    from .safetensors_import import import_safetensors_file

    return import_safetensors_file(source, out, **options)


def _export_safetensors(table, out, **options):
    from .safetensors import export_safetensors

    return export_safetensors(table, out, **options)


def _import_checkpoint(source, out, **options):
    from .checkpoint_import import import_checkpoint_dir

    return import_checkpoint_dir(source, out, **options)


def _export_checkpoint(table, out, **options):
    from .checkpoint_export import export_checkpoint

    return export_checkpoint(table, out, **options)


def _same(*names: str) -> dict[str, str]:
    """Options passed under their own names: ``{name: name}``."""
    return {name: name for name in names}


LAYOUT_OPTIONS = ("preset", "ngram_vocab", "max_ngram", "heads", "layers", "seed", "pad_id")
ROW_OPTIONS = ("dtype", "chunk_rows", "compressor", "overwrite")  # how an import stores rows


@dataclass(frozen=True)
class Converter:
    """A format's import or export: the library function, and the command options it takes.

    ``options`` gives each command option the function takes (by the command's parameter name)
    and the keyword it is passed as. An option given that it does not take is refused with
    ``refusal`` (``{source}``: the path, ``{flags}``: the options as flags), unless ``ignores``
    lists it.
    """

    function: Callable  # keyword-only after the two paths; takes progress=
    options: Mapping[str, str]
    refusal: str = ""
    ignores: tuple[str, ...] = ()
    progress_name: str = ""  # what an import's progress display is called

    def run(self, *paths, options: Mapping[str, object], progress, where):
        """``function(*paths, **options, progress=progress)``, each option under its keyword,
        once every option given is one it takes (or ignores); ``where`` names the source."""
        refused = [n for n in options if n not in self.options and n not in self.ignores]
        if refused:
            flags = ", ".join(f"--{name.replace('_', '-')}" for name in refused)
            raise UsageError(self.refusal.format(source=where, flags=flags))
        taken = {self.options[n]: value for n, value in options.items() if n in self.options}
        return self.function(*paths, **taken, progress=progress)


@dataclass(frozen=True)
class TableFormat:
    """One interchange format: its name, what it is, and its import and export."""

    name: str  # as --format names it
    description: str  # one line; export --help shows "name: description."
    source_is_dir: bool  # what import reads: a directory (a checkpoint) or one file
    importer: Converter | None = None
    exporter: Converter | None = None


TABLE_PLACE = {"storage_option": "storage_options", "commits_dir": "commits_dir"}  # export's table
FORMATS = (
    TableFormat(
        "safetensors",
        "one file, a tensor per layer",
        source_is_dir=False,
        importer=Converter(
            _import_safetensors,
            _same("vocab", *LAYOUT_OPTIONS, "config", "tensor_name", *ROW_OPTIONS),
            refusal="{flags} needs a checkpoint directory; {source} is not one",
            progress_name="import (chunks)",
        ),
        exporter=Converter(
            _export_safetensors,
            {"tensor_name": "name_template", "overwrite": "overwrite", **TABLE_PLACE},
            ignores=("max_shard_size",),  # one file has no shards
        ),
    ),
    TableFormat(
        "deepseek",
        "a checkpoint directory (layers.L.engram.embed.weight/scale shards, index, config.json)",
        source_is_dir=True,
        importer=Converter(
            _import_checkpoint,
            {
                **_same("vocab", "link", "layers", "cache_dir", *ROW_OPTIONS),
                "storage_option": "storage_options",
            },
            refusal="{source} is a checkpoint directory: its config.json gives the layout and "
            "its tensor names are fixed; drop {flags}",
            progress_name="import",
        ),
        exporter=Converter(
            _export_checkpoint,
            {**_same("max_shard_size", "overwrite"), **TABLE_PLACE},
            refusal="{flags}: --format deepseek uses the checkpoint's names",
        ),
    ),
)
EXPORT_FORMATS = tuple(f.name for f in FORMATS if f.exporter is not None)


def get_format(name: str) -> TableFormat:
    """The format called ``name``; raises :class:`UsageError` on an unknown name.

    >>> get_format("deepseek").source_is_dir
    True
    """
    for table_format in FORMATS:
        if table_format.name == name:
            return table_format
    names = ", ".join(f.name for f in FORMATS)
    raise UsageError(f"unknown format {name!r}; expected one of: {names}")


def import_format(source) -> TableFormat:
    """The format ``import`` reads ``source`` as: a directory is a checkpoint, a file safetensors.

    >>> import_format("no/such.safetensors").name
    'safetensors'
    """
    is_dir = "://" in str(source) and not str(source).startswith("file://")  # a remote checkpoint
    is_dir = is_dir or Path(source).is_dir()
    return next(f for f in FORMATS if f.importer is not None and f.source_is_dir == is_dir)


def import_table(
    source,
    out,
    *,
    options: Mapping[str, object] = MappingProxyType({}),
    progress: Callable[[int, int], None] | None = None,
):
    """Build the table ``out`` from ``source`` in the format :func:`import_format` reads it as.

    Parameters
    ----------
    source : path
        A checkpoint directory (``deepseek``) or a safetensors file.
    out : path
        The table to write.
    options : mapping
        The ``import`` command's options that were given (parameter name -> value), in the
        command's order; those the format does not take are refused, naming them.
    progress : callable, optional
        ``progress(bytes done, bytes total)``.

    Returns
    -------
    CreateResult
    """
    importer = import_format(source).importer
    inputs = [source, options.get("vocab"), options.get("config")]
    check_not_an_input(Path(out), inputs, what=f"the table {out}")
    check_name_length(Path(out))
    return importer.run(source, out, options=options, progress=progress, where=source)


def export_table(
    table,
    out,
    *,
    format_name: str,
    options: Mapping[str, object] = MappingProxyType({}),
    progress: Callable[[int, int], None] | None = None,
):
    """Write the table ``table`` to ``out`` in the format named ``format_name``.

    ``options`` are the ``export`` command's options that were given (parameter name -> value);
    those the format neither takes nor ignores are refused, naming them. Returns the format's
    result (an ``ExportResult`` or a ``CheckpointExportResult``: both have ``to_dict`` and
    ``summary``).
    """
    table_format = get_format(format_name)
    if table_format.exporter is None:
        raise UsageError(f"--format {format_name} is read by import only")
    check_not_an_input(Path(out), [table], what=f"the output {out}")
    check_name_length(Path(out))
    return table_format.exporter.run(table, out, options=options, progress=progress, where=table)


__all__ = [
    "FORMATS",
    "EXPORT_FORMATS",
    "Converter",
    "TableFormat",
    "get_format",
    "import_format",
    "import_table",
    "export_table",
]
