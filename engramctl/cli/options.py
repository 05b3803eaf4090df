"""Options shared by several commands, defined once: the vocab path, the layout flags
(:class:`LayoutFlags`), the model flags (:class:`ModelFlags`), ``--json``, and the enums of
choices, built from the library's constants.
"""

from __future__ import annotations

import math
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from ..corpus.files import FORMATS, TOKEN_DTYPES
from ..layout import DEFAULT_PRESET, PRESETS, LayoutRequest, ResolvedLayout
from ..model.device import DEVICES
from ..rowcache.policy import PAGER
from ..rowcache.tiers import DEFAULT_PREFETCH_DEPTH, DEFAULT_READ_THREADS
from ..table.core.choices import COMPRESSORS, INIT_KINDS
from ..table.core.dtypes import DTYPE_ALIASES, DTYPES


def _choices(name: str, values) -> type[Enum]:
    """A str Enum whose members are ``values`` (typer shows them as the choices)."""
    return Enum(name, [(value, value) for value in values], type=str)


Preset = _choices("Preset", PRESETS)
Dtype = _choices("Dtype", [*DTYPES, *DTYPE_ALIASES])
InitKind = _choices("InitKind", INIT_KINDS)
Compressor = _choices("Compressor", COMPRESSORS)
CorpusFormat = _choices("CorpusFormat", ["auto", *FORMATS])
TokenDtype = _choices("TokenDtype", TOKEN_DTYPES)
Device = _choices("Device", DEVICES)

LAYOUT_PANEL = "Layout"


def finite_number(value: float | None) -> float | None:
    """The callback of every float option: refuse NaN and infinities, which no option means
    (``--lr nan`` would train to NaN; ``--temperature inf`` sample garbage)."""
    if value is not None and not math.isfinite(value):
        raise typer.BadParameter(f"expected a finite number, got {value}")
    return value


def _layout_option(flag: str, help_text: str, metavar: str | None = None):
    return typer.Option(flag, metavar=metavar, help=help_text, rich_help_panel=LAYOUT_PANEL)


class LayoutFlags:
    """The layout options, declared once. A command that takes a layout lists every one of them
    in its signature (typer reads options from the signature), under the same parameter names,
    with a ``ctx: typer.Context`` parameter, and calls :func:`resolve_layout_flags` with
    ``ctx.params``, which it reads by name.

    ``--config PATH`` (a model's config.json) is a layout source like ``--table``: it fixes
    the whole layout (:func:`engramctl.model_config.config_layout_source`); ``--layers`` then
    picks among its layers.
    """

    Preset = Annotated[
        Preset | None,
        _layout_option(
            "--preset",
            f"Layout preset; layout flags override its fields. (default: {DEFAULT_PRESET})",
        ),
    ]
    NgramVocab = Annotated[
        str | None,
        _layout_option(
            "--ngram-vocab", "Rows per head for orders 2..max, e.g. 646400,646400.", "ROWS,..."
        ),
    ]
    MaxNgram = Annotated[int | None, _layout_option("--max-ngram", "Largest n-gram order.")]
    Heads = Annotated[int | None, _layout_option("--heads", "Hash heads per n-gram order.")]
    Layers = Annotated[
        str | None, _layout_option("--layers", "Engram layer ids, e.g. 1,15.", "IDS")
    ]
    Seed = Annotated[int | None, _layout_option("--seed", "The multipliers' seed.")]
    PadId = Annotated[int | None, _layout_option("--pad-id", "Raw pad token id.")]
    Config = Annotated[
        Path | None,
        _layout_option(
            "--config",
            "A model's config.json (or its checkpoint directory): its engram_* keys give the "
            "whole layout, checked against the vocab.",
            "PATH",
        ),
    ]

    # The parameter name each command gives each option above (the LayoutRequest field names).
    NAMES = ("preset", "ngram_vocab", "max_ngram", "heads", "layers", "seed", "pad_id")
    SOURCES = ("config",)  # layout sources among the flags (not LayoutRequest fields)


def resolve_layout_flags(
    params: dict, vocab, *, table=None, pick_layers: bool = False
) -> ResolvedLayout:
    """The layout a command's :class:`LayoutFlags` (``params``: its ``ctx.params``) name, and
    ``--table`` if given. One call of :func:`engramctl.layout.resolve_layout` (the rules).
    """
    from ..layout import resolve_layout

    missing = [name for name in (*LayoutFlags.NAMES, *LayoutFlags.SOURCES) if name not in params]
    if missing:  # a command that declares only some layout flags: a bug, not a user mistake
        raise RuntimeError(f"command lacks layout parameters {missing}")
    flags = {name: params[name] for name in LayoutFlags.NAMES}
    if flags["preset"] is not None:
        flags["preset"] = flags["preset"].value
    source = None
    if table is not None and params["config"] is not None:
        from ..errors import UsageError

        raise UsageError("--table and --config both fix the layout; give one")
    if table is not None:
        from ..table.core.manifest import table_layout_source

        source = table_layout_source(table, vocab=vocab)
    elif params["config"] is not None:
        from ..model_config import config_layout_source

        source = config_layout_source(params["config"], vocab=vocab)
    return resolve_layout(
        LayoutRequest(**flags), vocab=vocab, source=source, pick_layers=pick_layers
    )


class ModelFlags:
    """The options of a command that runs a checkpoint with its table's rows (``eval``,
    ``generate``), declared once: the checkpoint, its table, where it runs, how its rows are
    served (paged within ``--cache-rows``, or ``--resident``) and its tokenizer. The command
    opens them with :func:`engramctl.model.serve.opening.open_model_table` and
    :func:`engramctl.model.serve.opening.open_model`.
    """

    Model = Annotated[Path, typer.Option("--model", help="Checkpoint directory (engramctl train).")]
    Table = Annotated[
        Path | None, typer.Option("--table", help="The model's trained Engram table.")
    ]
    Device = Annotated[Device, typer.Option("--device", help="Where the model runs.")]
    CacheRows = Annotated[
        int, typer.Option("--cache-rows", help="Device row-cache budget (rows, all layers).")
    ]
    Resident = Annotated[
        bool,
        typer.Option("--resident", help="Load whole tables to the device instead of paging."),
    ]
    Tokenizer = Annotated[
        str | None,
        typer.Option(
            "--tokenizer", help="Tokenizer (default: the one the vocab/model was built with)."
        ),
    ]

    HostCache = Annotated[
        str | None,
        typer.Option(
            "--host-cache",
            metavar="SIZE",
            help="Host-RAM row cache between the table and the device cache, e.g. 8G "
            "(split over layers; rows kept as stored). Default: none.",
        ),
    ]
    HostStatic = Annotated[
        Path | None,
        typer.Option(
            "--host-static",
            metavar="ROWS.npz",
            help="Static host tier: load these rows (cache-plan --host-static-out) into "
            "--host-cache at start and never evict them. Default: LRU host tier.",
        ),
    ]
    PrefetchDepth = Annotated[
        int,
        typer.Option(
            "--prefetch-depth",
            help="Batches whose missing rows are read from the table ahead, on a thread of "
            "their own (0: none).",
        ),
    ]
    ReadThreads = Annotated[
        int, typer.Option("--read-threads", help="Reads in flight on a cold local table.")
    ]

    CACHE_ROWS = PAGER.default_cache_rows  # the --cache-rows default
    PREFETCH_DEPTH = DEFAULT_PREFETCH_DEPTH  # the --prefetch-depth default
    READ_THREADS = DEFAULT_READ_THREADS  # the --read-threads default


VocabOpt = Annotated[
    Path,
    typer.Option("--vocab", help="Canonical vocab Parquet file (from engramctl build-vocab)."),
]
DimOpt = Annotated[
    int | None,
    typer.Option("--dim", help="Values per head row. (default: the preset's)"),
]
DtypeOpt = Annotated[
    Dtype | None,
    typer.Option("--dtype", help="Storage dtype of the rows. (default: the preset's)"),
]
SchedulerOpt = Annotated[
    str | None,
    typer.Option(
        "--scheduler",
        metavar="ADDRESS",
        help="Run on Dask: a scheduler address (host:8786) or local:N worker processes.",
    ),
]
JsonFlag = Annotated[
    bool, typer.Option("--json", help="Print one JSON document on stdout instead of tables.")
]
OverwriteOpt = Annotated[bool, typer.Option("--overwrite", help="Replace an existing output.")]
StorageOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--storage-option",
        metavar="KEY=VALUE",
        help="fsspec option of a URL table, KEY=VALUE (repeatable), e.g. endpoint_url=http://h:9000.",
    ),
]


def storage_options_of(items: list[str] | None) -> dict | None:
    """``--storage-option`` values as fsspec options (``None`` for none)."""
    from ..table.core.store import parse_storage_options

    return parse_storage_options(items) or None


CommitsDirOpt = Annotated[
    Path | None,
    typer.Option(
        "--commits-dir",
        help="Local directory holding the table's commits instead of the table's own (needed to "
        "write a table at a URL such as s3://...): made by the first write, bound to that "
        "table's base and refused for another.",
    ),
]


def load_vocab(path: Path):
    from ..vocab import CanonicalVocab

    return CanonicalVocab.load(path)


def refuse_outputs_naming_inputs(outputs: dict, inputs) -> None:
    """Refuse any output (``{"--flag": path or None}``) that is one of ``inputs`` (the same file
    by inode), with or without ``--overwrite``: :func:`engramctl._files.check_not_an_input`."""
    from .._files import check_not_an_input

    for flag, path in outputs.items():
        if path is not None:
            check_not_an_input(Path(path), inputs, what=f"{flag} {path}")
