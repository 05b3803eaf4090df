"""Opening a checkpoint with its Engram table and row source: one way for every model command.

``eval`` (``--benchmark``, ``--explain``, ``--lm-eval-tasks``) and ``generate`` share two steps:

- :func:`open_model_table`, a context manager: open ``--table`` (when given), compare it with the
  checkpoint's pin (:func:`~engramctl.model.provenance.checkpoint_table_problem`: a warning to
  show, or an error with ``strict``), and close it (writer lock included) when done;
- :func:`open_model`: for a :class:`ModelSpec` (checkpoint, open table, device, row budget,
  resident or paged, tokenizer), load the checkpoint onto the device, check the table belongs to
  it, and build its row source (the :class:`~engramctl.model.serve.paging.RowPager` within
  ``cache_rows``, or resident rows) and its tokenizer, as an :class:`OpenModel`.

The library functions (:func:`~engramctl.model.serve.evaluate.evaluate`,
:func:`~engramctl.model.serve.evaluate.explain_gates`,
:func:`~engramctl.model.serve.generate.generate`,
:func:`~engramctl.model.serve.lm_eval_adapter.run_lm_eval`) take a :class:`ModelSpec`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ...errors import EngramError, UsageError
from ...rowcache.policy import PAGER
from ...table.core.meta import check_vocab_fingerprint


class ModelRunner:
    """A checkpoint plus its row source: ``logits(batch)`` for raw-id batches, in order."""

    def __init__(self, checkpoint, row_source, device):
        self.checkpoint = checkpoint
        self.model = checkpoint.model
        self.model_vocab = checkpoint.model_vocab
        self.row_source = row_source
        self.device = device
        self.tokens = 0

    def run(self, batches):
        """Yield ``(raw batch, logits (B, T, V) float32)`` for raw-id batches ``[B, T]``."""
        import torch

        if self.row_source is not None:
            source = self.row_source.iterate(batches)
        else:
            source = ((np.asarray(b), None) for b in batches)
        for batch, rows in source:
            # The grad mode is thread state: never hold it across a yield.
            with torch.inference_mode():
                idx = torch.from_numpy(self.model_vocab.encode(batch)).to(self.device)
                logits = self.model(idx, rows)
            self.tokens += batch.size
            yield batch, logits


def open_runner(
    model_dir: Path,
    table,
    *,
    device: str = "auto",
    resident: bool = False,
    cache_rows: int = PAGER.default_cache_rows,
    prefetch: bool = True,
    stream: bool = False,
    tiers=None,
) -> ModelRunner:
    """Load a checkpoint and the row source of its table, checking they belong together.

    ``stream``: the row source hashes each batch as the continuation of the previous ones
    (:class:`~engramctl.hashing.HashStream`, n-gram context carried; no prefetch), for decoding.
    ``tiers``: the host tier, reads in flight and read-ahead of the pager
    (:class:`~engramctl.rowcache.tiers.TierConfig`; None: no host tier, no read-ahead).
    """
    from ...hashing import HashStream, NgramHasher
    from ..checkpoint import load_checkpoint
    from ..device import resolve_device
    from .paging import make_row_source

    torch_device = resolve_device(device)
    checkpoint = load_checkpoint(model_dir, device=torch_device)
    layout = checkpoint.layout
    if layout is None:
        return ModelRunner(checkpoint, None, torch_device)
    if table is None:
        raise UsageError(f"{model_dir} is an Engram model: pass --table with its trained table")
    check_model_table(checkpoint, table)
    hasher = NgramHasher(layout, checkpoint.vocab)
    if stream:
        hasher, prefetch = HashStream(hasher), False
    source = make_row_source(
        table,
        hasher,
        device=torch_device,
        resident=resident,
        cache_rows=cache_rows,
        prefetch=prefetch,
        tiers=tiers,
    )
    return ModelRunner(checkpoint, source, torch_device)


def check_model_table(checkpoint, table) -> None:
    """Refuse a table that cannot serve the Engram ``checkpoint``: another layout, vocab or row
    width (one line naming what differs)."""
    layout = checkpoint.layout
    if table.layout.to_dict() != layout.to_dict():
        raise EngramError(
            f"the table's layout does not match the model's (table {table.layout.to_json()} vs "
            f"model {layout.to_json()}); pass the table the model was trained with"
        )
    check_vocab_fingerprint(
        table.info.vocab_fingerprint,
        checkpoint.meta.get("vocab_fingerprint"),
        given="the model",
        advice="pass the table the model was trained with",
    )
    if table.dim != checkpoint.model.config.engram_dim:
        raise EngramError(
            f"the table has rows of {table.dim} values, the model expects "
            f"{checkpoint.model.config.engram_dim}"
        )


def load_model_tokenizer(checkpoint, source: str | None):
    """The tokenizer the checkpoint was trained with (or ``source``), checked by sha256."""
    from ...tokenizer import load_checked_tokenizer

    recorded = checkpoint.meta.get("tokenizer", {})
    source = source or recorded.get("name") or "deepseek-v4"
    sha256 = recorded.get("sha256")
    return load_checked_tokenizer(source, sha256=sha256, built="the model was trained with")[0]


@dataclass(frozen=True)
class ModelSpec:
    """What a model command runs: the checkpoint directory, its open table (None for a baseline
    model), where it runs, how its rows are served (paged within ``cache_rows`` rows, or
    ``resident``) and the tokenizer (None: the one the checkpoint was trained with); ``tiers``:
    the host tier, reads in flight and read-ahead (a
    :class:`~engramctl.rowcache.tiers.TierConfig`; None: none). The library's side of the CLI's
    ``ModelFlags``."""

    model_dir: Path
    table: object | None = None
    device: str = "auto"
    cache_rows: int = PAGER.default_cache_rows
    resident: bool = False
    tokenizer_source: str | None = None
    tiers: object | None = None


@dataclass
class OpenModel:
    """A loaded checkpoint with its row source (``runner``) and tokenizer."""

    spec: ModelSpec
    runner: ModelRunner
    tokenizer: object

    @property
    def checkpoint(self):
        return self.runner.checkpoint

    @property
    def pager(self):
        """The row source (``RowPager`` or ``ResidentRows``); None for a baseline model."""
        return self.runner.row_source

    def paging(self) -> dict | None:
        """The row source's counters (``PagingStats.to_dict()``); None for a baseline model."""
        return self.pager.stats.to_dict() if self.pager is not None else None

    def describe(self) -> dict:
        """What a report says of the model: its path and whether it has Engram layers."""
        return {"path": str(self.spec.model_dir), "engram": self.runner.model.config.has_engram}


def open_model(spec: ModelSpec, *, prefetch: bool = True, stream: bool = False) -> OpenModel:
    """Load the checkpoint of ``spec`` with the row source of its table and its tokenizer.

    ``prefetch`` and ``stream``: as :func:`open_runner`.
    """
    runner = open_runner(
        spec.model_dir,
        spec.table,
        device=spec.device,
        resident=spec.resident,
        cache_rows=spec.cache_rows,
        prefetch=prefetch,
        stream=stream,
        tiers=spec.tiers,
    )
    tokenizer = load_model_tokenizer(runner.checkpoint, spec.tokenizer_source)
    return OpenModel(spec=spec, runner=runner, tokenizer=tokenizer)


@dataclass
class ModelTable:
    """``--table`` opened for a checkpoint: the table (None when not given) and, when its rows
    changed since the checkpoint was trained, why (a warning to show)."""

    table: object | None
    problem: str | None


def default_open_table(path: Path):
    """:func:`engramctl.table.sources.table.open_table`, read-only (imported on first use)."""
    from ...table.sources.table import open_table

    return open_table(path, mode="r")


@contextlib.contextmanager
def open_model_table(
    model_dir: Path,
    path: Path | None,
    *,
    strict: bool = False,
    open_table: Callable = default_open_table,
) -> Iterator[ModelTable]:
    """Open the table at ``path`` for the checkpoint in ``model_dir`` and close it on exit.

    ``strict``: a table whose rows changed since the checkpoint is an error, not a warning.
    ``open_table(path)``: how the table is opened (a test may route it to a double).
    """
    from ..checkpoint import read_checkpoint_meta
    from ..provenance import checkpoint_table_problem

    if path is not None and not read_checkpoint_meta(Path(model_dir)).get("layout"):
        raise UsageError(
            f"{model_dir} is a --no-engram model (no Engram layers): it reads no table, so "
            f"--table {path} would be ignored; drop --table"
        )
    table = open_table(path) if path is not None else None
    try:
        problem = None
        if table is not None:
            problem = checkpoint_table_problem(model_dir, table, strict=strict)
        yield ModelTable(table=table, problem=problem)
    finally:
        close = getattr(table, "close", None)
        if close is not None:
            close()
