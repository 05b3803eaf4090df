"""Options shared by several commands, defined once: the vocab path, layout flags, ``--json``."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer


class Preset(str, Enum):
    demo_v1 = "demo-v1"
    deepseek_v4_1 = "deepseek-v4.1"


VocabOpt = Annotated[
    Path,
    typer.Option("--vocab", help="Canonical vocab Parquet file (from engramctl build-vocab)."),
]
PresetOpt = Annotated[
    Preset | None,
    typer.Option(
        "--preset", help="Layout preset; layout flags override its fields. [default: demo-v1]"
    ),
]
NgramVocabOpt = Annotated[
    str | None,
    typer.Option("--ngram-vocab", help="Rows per head for orders 2..max, e.g. 646400,646400."),
]
MaxNgramOpt = Annotated[int | None, typer.Option("--max-ngram", help="Largest n-gram order.")]
HeadsOpt = Annotated[int | None, typer.Option("--heads", help="Hash heads per n-gram order.")]
LayersOpt = Annotated[str | None, typer.Option("--layers", help="Engram layer ids, e.g. 1,15.")]
SeedOpt = Annotated[int | None, typer.Option("--seed", help="Multiplier seed.")]
PadIdOpt = Annotated[int | None, typer.Option("--pad-id", help="Raw pad token id.")]
ConfigOpt = Annotated[
    Path | None,
    typer.Option(
        "--config",
        help="A model's config.json (or its checkpoint directory): its engram_* keys give the "
        "layout (instead of --preset and the layout flags).",
    ),
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


def build_layout(
    vocab,
    *,
    preset: Preset | None,
    ngram_vocab: str | None,
    max_ngram: int | None,
    heads: int | None,
    layers: str | None,
    seed: int | None,
    pad_id: int | None,
    config: Path | None = None,
):
    """The layout named by ``--preset`` (default demo-v1) with any layout flag overriding it,
    or the layout of a model's ``--config`` (checked against the vocab)."""
    from ..errors import UsageError
    from ..layout import EngramLayout, parse_int_list, read_model_config

    if config is not None:
        flags = {
            "--preset": preset, "--ngram-vocab": ngram_vocab, "--max-ngram": max_ngram,
            "--heads": heads, "--layers": layers, "--seed": seed, "--pad-id": pad_id,
        }  # fmt: skip
        given = [name for name, value in flags.items() if value is not None]
        if given:
            raise UsageError(f"--config gives the whole layout; drop {', '.join(given)}")
        layout = read_model_config(config).layout(vocab_size=vocab.canonical_vocab_size)
        layout.pad_canonical_id(vocab)
        return layout

    overrides = {
        "ngram_vocab": (
            parse_int_list(ngram_vocab, name="--ngram-vocab") if ngram_vocab is not None else None
        ),
        "max_ngram": max_ngram,
        "heads": heads,
        "layers": parse_int_list(layers, name="--layers") if layers is not None else None,
        "seed": seed,
        "pad_id": pad_id,
    }
    name = preset.value if preset is not None else "demo-v1"
    layout = EngramLayout.from_preset(name, vocab_size=vocab.canonical_vocab_size, **overrides)
    layout.pad_canonical_id(vocab)  # validates pad id against the vocab
    return layout


def load_vocab(path: Path):
    from ..vocab import CanonicalVocab

    return CanonicalVocab.load(path)


def layout_defaults(preset: Preset | None, config: Path | None) -> tuple[int, str]:
    """``(dim, dtype)`` a layout is stored with by default: the config's head dim in fp8, or
    the preset's."""
    from ..layout import PRESET_DTYPE, PRESET_HEAD_DIM, read_model_config

    if config is not None:
        return read_model_config(config).head_dim, "float8_e4m3fn"
    name = preset.value if preset is not None else "demo-v1"
    return PRESET_HEAD_DIM[name], PRESET_DTYPE[name]
