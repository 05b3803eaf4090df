"""Training the reference model: backbone and Engram table rows together.

The backbone trains with AdamW; the table rows the batch touches train with their own sparse
("lazy") Adam on the gathered unique rows and its own learning rate, like sparse embedding tables.
The run is deterministic on CPU for a seed, and the engram and ``--no-engram`` runs of one seed see
the same data order and start from the same backbone weights: only the Engram branch differs.
Trained rows are written back to the zarr table; the backbone goes to a checkpoint directory
(:mod:`engramctl.model.checkpoint`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from ...errors import Interrupted, UsageError
from ..optim import Optimizers, configure_optimizers, lr_at
from ..provenance import check_prior_runs, new_run
from .heldout import curve_windows, estimate_loss, heldout_loss  # noqa: F401 - also here
from .inputs import (  # noqa: F401 - the names commands and scripts import from here
    TrainingData,
    available_memory,
    load_base,
    prepare_training_data,
    table_fits_in_memory,
)
from .run import RunProgress, TrainConfig, TrainResult

log = logging.getLogger(__name__)


@contextmanager
def reproducible_torch(device: str, threads: int):
    """Bit-reproducible CPU training for the block; torch's previous settings restored after.

    Two things make a CPU run depend on the machine rather than on the seed: the backward of the
    row gather accumulates in a varying order unless torch's deterministic algorithms are on, and
    BLAS and ATen reductions split their sums across however many threads run them (so 1 and 2
    threads, or a thread pool that shrinks under load, round differently). The run therefore
    uses deterministic algorithms and a fixed intra-op thread count (``--threads``, default 1,
    recorded in the checkpoint): the figures are the same for that count on any machine.
    """
    import torch

    previous = torch.are_deterministic_algorithms_enabled()
    previous_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    previous_threads = torch.get_num_threads()
    if str(device) == "cpu":
        torch.use_deterministic_algorithms(True)
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous, warn_only=previous_warn)
        torch.set_num_threads(previous_threads)


def build_model(config: TrainConfig, model_vocab, table=None):
    """The model of ``config`` (with the table's Engram layers unless ``config.engram`` is False).

    The same backbone init for engram and baseline runs: the baseline is built under the seed and
    its weights copied; the Engram modules get their own init under ``seed + 1``.
    """
    import torch

    from ..transformer import EngramLM, ModelConfig

    torch.manual_seed(config.seed)
    base_config = ModelConfig(
        vocab_size=model_vocab.size,
        output_vocab_size=model_vocab.output_size,
        n_layer=config.depth,
        n_head=config.attn_heads,
        n_embd=config.width,
        block_size=config.seq_len,
    )
    model_config = base_config
    if config.engram:
        layout = table.layout
        model_config = ModelConfig(
            **{
                **base_config.to_dict(),
                "engram_layers": layout.layers,
                "engram_heads": layout.heads_per_layer,
                "engram_dim": table.dim,
                "max_ngram": layout.max_ngram,
                "short_conv": config.short_conv,
            },
        )
    baseline_model = EngramLM(base_config)
    torch.manual_seed(config.seed + 1)
    model = EngramLM(model_config)
    model.load_state_dict(baseline_model.state_dict(), strict=False)
    return model.to(torch.device(config.device))


def data_order(n_windows: int, config: TrainConfig) -> np.ndarray:
    """Window indices of every step, in order: a new seeded permutation per pass."""
    rng = np.random.default_rng(config.seed)
    passes = math.ceil(config.steps * config.batch / n_windows)
    return np.concatenate([rng.permutation(n_windows) for _ in range(passes)])


def get_batch(windows: np.ndarray, order: np.ndarray, step: int, batch: int) -> np.ndarray:
    """The raw token windows ``[batch, seq_len + 1]`` of one step."""
    return windows[order[step * batch : (step + 1) * batch]]


def gather_rows(batch: np.ndarray, *, hasher, tables: dict, device) -> tuple[dict, dict]:
    """Hash a batch and gather its unique rows per layer as gradient leaves.

    Returns ``rows`` (``{layer: (B, T, H*d)}``, the model's input) and ``gathered``
    (``{layer: (unique, unique_t, leaf)}``, what the table's optimizer step needs).
    """
    import torch

    rows, gathered = {}, {}
    for layer, row_ids in hasher.hash(batch[:, :-1], table_rows=True).items():
        unique, inverse = np.unique(row_ids, return_inverse=True)
        unique_t = torch.from_numpy(unique).to(device)
        leaf = tables[layer].gather(unique, unique_t)  # (U, d)
        gathered[layer] = (unique, unique_t, leaf)
        inv = torch.from_numpy(inverse.reshape(row_ids.shape)).to(device)
        rows[layer] = leaf[inv].flatten(2)  # (B, T, H*d)
    return rows, gathered


def train_step(
    model, batch: np.ndarray, model_vocab, *, optimizers: Optimizers, hasher, lr, table_lr, config
) -> float:
    """Forward, backward, clip, and one step of every optimizer; returns the batch loss."""
    import torch

    device = torch.device(config.device)
    optimizers.set_lr(lr)
    model.train()
    idx = torch.from_numpy(model_vocab.encode(batch[:, :-1])).to(device)
    targets = torch.from_numpy(model_vocab.encode_targets(batch[:, 1:])).to(device)
    rows, gathered = None, {}
    if hasher is not None:
        rows, gathered = gather_rows(batch, hasher=hasher, tables=optimizers.tables, device=device)
    logits = model(idx, rows)
    loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten())
    if optimizers.backbone is not None:
        optimizers.backbone.zero_grad(set_to_none=True)
    loss.backward()
    if optimizers.backbone is not None:
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizers.backbone.step()
    for layer, (unique, unique_t, leaf) in gathered.items():
        optimizers.tables[layer].step(
            unique, unique_t, leaf, lr=table_lr, weight_decay=config.table_weight_decay
        )
    return float(loss.item())


def train_model(
    *,
    windows: np.ndarray,
    heldout: np.ndarray | None,
    model_vocab,
    config: TrainConfig,
    out_dir: Path,
    table=None,
    vocab=None,
    overwrite: bool = False,
    on_step: Callable[[int, int, float, float], None] | None = None,
    extra_meta: dict | None = None,
    compare: dict | None = None,
    base=None,
    prior_runs: str = "refuse",
    inputs: dict | None = None,
    resume=None,
) -> TrainResult:
    """Train the reference model on token windows and save a checkpoint.

    Bit-reproducible on CPU whatever the machine's load or thread settings (see
    :func:`reproducible_torch`).

    Parameters
    ----------
    windows : ``[N, seq_len + 1]`` raw token ids of the training corpus.
    heldout : raw token windows for the periodic held-out loss (or ``None``).
    model_vocab : :class:`engramctl.model.data.ModelVocab` of the training corpus.
    table : an open table (``open_table(path, mode="r+")``); required unless ``config.engram`` is
        False. Its trained rows are written back at the end.
    vocab : the :class:`CanonicalVocab` the table was built for (hashing needs it).
    on_step : ``on_step(step, total, loss, tokens_per_s)`` after every step (progress bars).
    compare : ``{label: history}`` of other runs to draw in the loss-curve PNG.
    base : a loaded :class:`~engramctl.model.checkpoint.Checkpoint` to start from
        (``--init-from``); with ``config.freeze_backbone`` only its table rows train.
    prior_runs : what to do when another run already trained the table's rows: ``refuse``
        (default), ``continue`` or ``overwrite`` (see :mod:`engramctl.model.provenance`).
    inputs : what ``--resume`` reopens (corpus, table, ... paths), kept in the training state.
    resume : a :class:`~engramctl.model.train.resume.ResumePoint` to continue from (its step,
        state and weights); the run ends bit-identical to one that never stopped.

    Every checkpoint is written first, under a temporary name; then the rows are written to the
    table and recorded (run id, checksum of the rows) with its manifest; then the checkpoint is
    renamed into place. A failure at the checkpoint leaves the table as it was. With
    ``config.checkpoint_every`` the run commits such a checkpoint every N steps, with the state
    to resume from; Ctrl-C raises :class:`~engramctl.errors.Interrupted` saying how to resume.
    """
    check_run_inputs(config, table=table, vocab=vocab, base=base)
    if config.engram and resume is None:
        check_prior_runs(table, prior_runs, base_meta=base.meta if base is not None else None)
    return run_training(
        windows=windows,
        heldout=heldout,
        model_vocab=model_vocab,
        config=config,
        out_dir=out_dir,
        table=table,
        vocab=vocab,
        overwrite=overwrite,
        on_step=on_step,
        extra_meta=extra_meta,
        compare=compare,
        base=base,
        prior_runs=prior_runs,
        inputs=inputs,
        resume=resume,
    )


def run_training(
    *,
    windows: np.ndarray,
    heldout: np.ndarray | None,
    model_vocab,
    config: TrainConfig,
    out_dir: Path,
    table=None,
    vocab=None,
    overwrite: bool = False,
    on_step: Callable[[int, int, float, float], None] | None = None,
    extra_meta: dict | None = None,
    compare: dict | None = None,
    base=None,
    prior_runs: str = "refuse",
    inputs: dict | None = None,
    resume=None,
) -> TrainResult:
    """:func:`train_model` once its inputs are checked (the refusals of
    :func:`check_run_inputs`, and the table's earlier runs allow this one): the run itself."""
    from ...hashing import NgramHasher
    from .finish import RunWriter, commit_trained_rows
    from .resume import interrupted_message, load_training_state, windows_digest
    from .rows import open_trainable_rows, writes_during_run

    fingerprints = {"windows": windows_digest(windows), "heldout": windows_digest(heldout)}
    run = begin_run(
        config, table, out_dir, prior_runs=prior_runs, resume=resume, fingerprints=fingerprints
    )
    # A Ctrl-C from here on says what the run kept (its checkpoints, or that it finished); one
    # before the run's writer exists is the caller's to word (nothing of this run was saved).
    writer, tables, done = None, {}, 0
    try:
        with reproducible_torch(config.device, config.threads):
            model = initial_model(config, model_vocab, table, base=base, resume=resume)
            tables, hasher = {}, None
            if config.engram:
                hasher = NgramHasher(table.layout, vocab)
                tables = open_trainable_rows(table, config)
            optimizers = configure_optimizers(
                model,
                lr=config.lr,
                weight_decay=config.weight_decay,
                tables=tables,
                frozen=config.freeze_backbone,
            )
            writer = RunWriter(
                out_dir=Path(out_dir),
                model=model,
                model_vocab=model_vocab,
                config=config,
                table=table,
                vocab=vocab,
                optimizers=optimizers,
                tables=tables,
                run=run,
                base=base,
                overwrite=overwrite,
                extra_meta=extra_meta,
                compare=compare,
                info={"inputs": inputs or {}, **fingerprints},
            )
            progress = RunProgress(out_dir=Path(out_dir), config=config, n_windows=len(windows),
                                   tables=tables, writer=writer, table=table)  # fmt: skip
            if resume is not None:
                load_training_state(optimizers, tables, resume.training_state())
                progress.resume_at(resume)
                writer = progress.writer = writer.resumed(resume.step)
            order = data_order(len(windows), config)
            heldout_subset = curve_windows(heldout, config)
            done = progress.first
            for step in range(progress.first, config.steps):
                lr, table_lr = get_lrs(step, config)
                batch = get_batch(windows, order, step, config.batch)
                loss = train_step(model, batch, model_vocab, optimizers=optimizers, hasher=hasher,
                                  lr=lr, table_lr=table_lr, config=config)  # fmt: skip
                done = step + 1
                progress.record(done, loss, lr)
                if heldout is not None and eval_due(done, config):
                    held_loss = estimate_loss(model, heldout_subset, model_vocab, hasher=hasher,
                                              tables=tables, config=config)  # fmt: skip
                    progress.history["heldout"].append([done, held_loss])
                    log.info("step %d heldout loss %.4f (subset)", done, held_loss)
                if writer.due(done):
                    writer.save(progress.result(done), final=False)
                if on_step is not None:
                    on_step(done, config.steps, loss, progress.tokens_per_second(done))
            if run is not None and writes_during_run(
                config
            ):  # rows went in during the run: the rest
                commit_trained_rows(table, tables, run, step=config.steps)
            final_heldout = None
            if heldout is not None:
                final_heldout = estimate_loss(
                    model, heldout, model_vocab, hasher=hasher, tables=tables, config=config
                )
            progress.history["heldout_full"] = final_heldout
            result = progress.result(config.steps, final_heldout)
            writer.save(result, final=True)
    except KeyboardInterrupt:
        if writer is None:
            raise
        raise Interrupted(interrupted_message(done, writer, tables)) from None
    return result


def check_run_inputs(config: TrainConfig, *, table, vocab, base) -> None:
    """The refusals of a run's options and inputs, before anything is opened."""
    config.validate()
    if config.engram and (table is None or vocab is None):
        raise UsageError("training with Engram needs a table and its vocab (or pass --no-engram)")
    check_adaptation(config.freeze_backbone, base_given=base is not None, engram=config.engram)


def check_adaptation(freeze_backbone: bool, *, base_given: bool, engram: bool) -> None:
    """``--freeze-backbone`` adapts the table rows of a model: it needs one, and a table."""
    if freeze_backbone and not base_given:
        raise UsageError("--freeze-backbone needs --init-from MODEL_DIR (the model to adapt)")
    if freeze_backbone and not engram:
        raise UsageError("--freeze-backbone trains table rows only; it cannot go with --no-engram")


def begin_run(config, table, out_dir, *, prior_runs, resume, fingerprints) -> dict | None:
    """The run's record in the table (``None`` for ``--no-engram``): a new run (the table's
    earlier runs checked), or the resumed one (on the same token windows)."""
    from .resume import check_same_data
    from .rows import writes_during_run

    if resume is not None:
        check_same_data(resume.state, fingerprints)
        return dict(resume.run) if config.engram else None
    if not config.engram:
        return None
    run = new_run(out_dir, steps=config.steps, policy=prior_runs)
    if writes_during_run(config):
        table.record_run({**run, "incomplete": True})  # rows reach the table during the run
    return run


def initial_model(config, model_vocab, table, *, base, resume):
    """The model to train: the resumed checkpoint's, the base's (``--init-from``) or a new one."""
    if resume is not None:
        from ..checkpoint import load_checkpoint

        return (resume.checkpoint or load_checkpoint(resume.path, device=config.device)).model
    if base is not None:
        return base.model.to(config.device)
    return build_model(config, model_vocab, table)


def get_lrs(step: int, config: TrainConfig) -> tuple[float, float]:
    """The backbone's and the table rows' learning rates at ``step`` (warm-up, then cosine)."""
    lr = lr_at(step, peak=config.lr, warmup=config.warmup, total=config.steps)
    table_lr = lr_at(step, peak=config.table_lr, warmup=config.warmup, total=config.steps)
    return lr, table_lr


def eval_due(done: int, config: TrainConfig) -> bool:
    """Whether the held-out loss is measured after ``done`` steps (every N, and the last)."""
    return done == config.steps or bool(config.eval_every and done % config.eval_every == 0)
