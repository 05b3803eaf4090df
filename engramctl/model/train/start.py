"""``engramctl train`` as one library call: :func:`train_from_options` takes the command's
options (:class:`TrainOptions`), refuses what cannot run before reading the corpus, opens the
inputs (vocab, table, ``--init-from`` model, corpus), checks them against each other and trains
(:func:`~engramctl.model.train.loop.run_training`), recording what ``--resume`` reopens
(:func:`~engramctl.model.train.resume_run.run_inputs`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from ..._files import read_json_file
from ...errors import EngramError, UsageError


@dataclass(frozen=True, kw_only=True)
class TrainOptions:
    """The options of ``engramctl train`` (a new run), named as the command's parameters."""

    corpus: Path | None
    out: Path | None
    table: Path | None
    vocab: Path | None
    heldout: Path | None
    engram: bool
    short_conv: bool
    steps: int
    seq_len: int
    batch: int
    lr: float
    table_lr: float
    table_weight_decay: float
    depth: int
    width: int
    attn_heads: int
    min_count: int
    eval_every: int
    seed: int
    threads: int
    device: str  # auto, cpu or cuda (resolved here)
    tokenizer: str | None
    compare_with: Path | None
    init_from: Path | None
    freeze_backbone: bool
    out_of_core: bool | None  # None: when the table does not fit in memory
    buffer_rows: int
    checkpoint_every: int
    overwrite: bool
    continue_rows: bool
    overwrite_rows: bool
    given: frozenset[str] = frozenset()  # the options given on the command line (not defaults)

    @property
    def prior_runs(self) -> str:
        """``--continue`` / ``--overwrite-rows`` as the policy of :mod:`..provenance`."""
        if self.continue_rows and self.overwrite_rows:
            raise UsageError("--continue and --overwrite-rows exclude each other; pick one")
        return (
            "continue" if self.continue_rows else "overwrite" if self.overwrite_rows else "refuse"
        )


def compare_histories(compare_with: Path | None) -> dict | None:
    """``--compare-with``: ``{name: history}`` of another checkpoint for the loss-curve PNG."""
    if compare_with is None:
        return None
    history_path = compare_with / "history.json"
    if not history_path.exists():
        raise EngramError(f"--compare-with: {history_path} not found (give a checkpoint dir)")
    return {compare_with.name: read_json_file(history_path)}


def train_from_options(options: TrainOptions, *, open_table, on_step=None, outcome=None):
    """Train a new run of ``engramctl train``; returns its
    :class:`~engramctl.model.train.run.TrainResult`.

    ``open_table(path, mode=, vocab=)`` opens the table (the command's opener); ``on_step`` as
    :func:`~engramctl.model.train.loop.train_model` takes it; ``outcome`` (a
    :class:`~engramctl.model.train.resume.RunOutcome`) gets the result as soon as the run ends,
    before the table is closed. Every refusal that needs no corpus
    comes before the corpus is read; the checkpoint target is probed before the run.
    """
    from ..._files import check_name_length, check_not_an_input
    from ..._outputs import probe_writable
    from ...vocab import CanonicalVocab
    from ..checkpoint import check_checkpoint_target
    from ..device import resolve_device
    from .loop import check_adaptation

    o = options
    if o.corpus is None or o.out is None:
        raise UsageError("train needs --corpus and --out (or --resume MODEL_DIR)")
    prior_runs = o.prior_runs
    check_adaptation(o.freeze_backbone, base_given=o.init_from is not None, engram=o.engram)
    inputs = (o.corpus, o.table, o.vocab, o.heldout, o.init_from, o.compare_with)
    check_not_an_input(o.out, inputs, what=f"--out {o.out}")
    check_name_length(o.out)
    check_checkpoint_target(o.out, overwrite=o.overwrite)
    probe_writable(o.out)  # a read-only or full target fails now, not after the run
    vocab = None
    if o.engram:
        if o.table is None or (o.vocab is None and o.init_from is None):
            raise UsageError("training with Engram needs --table and --vocab (or pass --no-engram)")
        if o.vocab is not None:
            vocab = CanonicalVocab.load(o.vocab)
    compare = compare_histories(o.compare_with)
    config = run_config(o, device=str(resolve_device(o.device)))
    config.validate()  # before reading the corpus: bad numbers fail at once
    # refuses a table made for another vocab (when --vocab is given)
    table = open_table(o.table, mode="r+", vocab=vocab) if o.engram else None
    try:
        result = _train_opened(o, config, table=table, vocab=vocab, compare=compare,
                               prior_runs=prior_runs, on_step=on_step)  # fmt: skip
        if outcome is not None:
            outcome.result = result
        return result
    finally:
        close = getattr(table, "close", None)
        if close is not None:
            close()


def run_config(options: TrainOptions, *, device: str):
    """The :class:`~engramctl.model.train.run.TrainConfig` of the options (``out_of_core`` is
    chosen once the table is open)."""
    from .run import TrainConfig

    o = options
    return TrainConfig(steps=o.steps, seq_len=o.seq_len, batch=o.batch, lr=o.lr,
                       table_lr=o.table_lr, table_weight_decay=o.table_weight_decay, seed=o.seed,
                       eval_every=o.eval_every, engram=o.engram, short_conv=o.short_conv,
                       threads=o.threads, freeze_backbone=o.freeze_backbone,
                       buffer_rows=o.buffer_rows, checkpoint_every=o.checkpoint_every,
                       depth=o.depth, width=o.width, attn_heads=o.attn_heads,
                       device=device)  # fmt: skip


def _train_opened(o: TrainOptions, config, *, table, vocab, compare, prior_runs, on_step):
    """The run once its table is open: the base model, the table's earlier runs, the corpus."""
    from ...table.core.meta import check_vocab_fingerprint
    from ..provenance import check_prior_runs
    from .inputs import check_base_flags, load_base, prepare_training_data
    from .loop import run_training
    from .resume_run import run_inputs
    from .rows import choose_out_of_core

    base = None
    if o.init_from is not None:
        base = load_base(o.init_from, table=table, vocab=vocab, device=config.device)
        check_base_flags(base, {k: getattr(o, k) for k in o.given if hasattr(o, k)},
                         path=o.init_from)  # fmt: skip
        vocab = vocab or base.vocab
        shape = base.model.config
        config = replace(config, depth=shape.n_layer, width=shape.n_embd, attn_heads=shape.n_head,
                         seq_len=min(o.seq_len, shape.block_size),
                         short_conv=shape.short_conv)  # fmt: skip
    if o.engram:  # cheap refusals before the corpus is read
        check_prior_runs(table, prior_runs, base_meta=base.meta if base is not None else None)
        out_of_core = choose_out_of_core(o.out_of_core, table, freeze_backbone=o.freeze_backbone)
        config = replace(config, out_of_core=out_of_core)
    data = prepare_training_data(
        corpus=o.corpus,
        heldout=o.heldout,
        vocab=vocab,
        tokenizer_source=o.tokenizer,
        seq_len=config.seq_len,
        min_count=o.min_count,
        model_vocab=base.model_vocab if base is not None else None,
    )
    if o.engram:
        check_vocab_fingerprint(
            table.info.vocab_fingerprint,
            vocab.fingerprint,
            given="the model's vocab",
            advice="give the table it was trained with",
        )
    return run_training(
        windows=data.windows,
        heldout=data.heldout,
        model_vocab=data.model_vocab,
        config=config,
        out_dir=o.out,
        table=table,
        vocab=vocab,
        overwrite=o.overwrite,
        on_step=on_step,
        extra_meta=data.meta,
        compare=compare,
        base=base,
        prior_runs=prior_runs,
        inputs=run_inputs(
            corpus=o.corpus, heldout=o.heldout, table=o.table if o.engram else None,
            vocab=o.vocab, tokenizer=o.tokenizer, min_count=o.min_count,
            init_from=o.init_from, compare_with=o.compare_with, prior_runs=prior_runs,
        ),
    )  # fmt: skip
