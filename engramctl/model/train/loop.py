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
import time
from collections.abc import Callable
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
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

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    """Options of one training run (all JSON-serializable)."""

    steps: int = 400  # optimizer steps
    seq_len: int = 128  # tokens per window
    batch: int = 16  # windows per step
    lr: float = 3e-3  # backbone peak learning rate (AdamW)
    table_lr: float = 1e-2  # table rows' peak learning rate (sparse Adam)
    weight_decay: float = 0.1  # backbone AdamW weight decay (matrices only)
    table_weight_decay: float = 0.0  # decoupled decay of the rows a step touches
    warmup: int = 30  # linear warm-up steps, then cosine decay to 10%
    seed: int = 0  # model init and data order
    eval_every: int = 50  # steps between held-out evaluations (0: only at the end)
    eval_windows: int = 128  # held-out windows (evenly spaced) of the curve's points
    engram: bool = True  # False: the same backbone without Engram (the baseline)
    short_conv: bool = True  # the Engram module's short convolution (DeepSeek-V4.1 drops it)
    depth: int = 4  # transformer blocks
    width: int = 128  # hidden size
    attn_heads: int = 4  # attention heads
    device: str = "cpu"  # resolved device
    threads: int = 1  # CPU intra-op threads of the run (figures depend on it, not on load)
    freeze_backbone: bool = False  # table-only adaptation: train table rows, nothing else
    out_of_core: bool = False  # rows gathered per step from the table (else decoded in memory)
    buffer_rows: int = 1 << 18  # out of core: dirty rows per layer held before a flush
    checkpoint_every: int = 0  # steps between resumable checkpoints (0: only at the end)

    def validate(self) -> None:
        for name in (
            "steps",
            "seq_len",
            "batch",
            "depth",
            "width",
            "attn_heads",
            "threads",
            "buffer_rows",
        ):
            if getattr(self, name) < 1:
                raise UsageError(
                    f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}"
                )
        if self.checkpoint_every < 0:
            raise UsageError(
                f"--checkpoint-every must be >= 0 (0: only at the end), got {self.checkpoint_every}"
            )
        if self.eval_every < 0:
            raise UsageError(
                f"--eval-every must be >= 0 (0: only at the end), got {self.eval_every}"
            )
        if self.lr <= 0 or self.table_lr < 0:
            raise UsageError(f"learning rates must be positive, got {self.lr} and {self.table_lr}")


@dataclass
class TrainResult:
    """What a run produced: the history of losses and where things were written."""

    out_dir: Path
    steps: int
    tokens: int
    seconds: float
    final_train_loss: float
    final_heldout_loss: float | None  # over every held-out window, after the last step
    history: dict = field(
        default_factory=dict
    )  # {"step": [...], "train_loss": [...], "heldout": [[step, loss], ...]}
    rows_written: int = 0
    passes: float = 0.0  # passes over the training windows
    write_seconds: float = 0.0  # out of core: time spent writing rows and moments back
    moments: str | None = None  # out of core: the sparse Adam's moment store
    table: str | None = None  # the table whose rows were trained (None: --no-engram)
    checkpoints: int = 0  # periodic checkpoints committed by this process (--checkpoint-every)
    checkpoint_seconds: float = 0.0  # time they took
    resumed_from: int | None = None  # the step this process resumed at (--resume)

    def to_dict(self) -> dict:
        data = asdict(self)
        data["out_dir"] = str(self.out_dir)
        return data


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
    moments: Path | None = None,
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
    moments : the sparse Adam's moment store of an out-of-core run (default
        ``<table>.adam.zarr``, see :mod:`engramctl.model.train.rows`).
    prior_runs : what to do when another run already trained the table's rows: ``refuse``
        (default), ``continue`` or ``overwrite`` (see :mod:`engramctl.model.provenance`).
    inputs : what ``--resume`` reopens (corpus, table, ... paths), kept in the training state.
    resume : a :class:`~engramctl.model.train.resume.ResumePoint` to continue from (its step, state
    and
        weights); the run ends bit-identical to one that never stopped.

    Every checkpoint is written first, under a temporary name; then the rows are written to the
    table and recorded (run id, checksum of the rows) with its manifest; then the checkpoint is
    renamed into place. A failure at the checkpoint leaves the table as it was. With
    ``config.checkpoint_every`` the run commits such a checkpoint every N steps, with the state
    to resume from; Ctrl-C raises :class:`~engramctl.errors.Interrupted` saying how to resume.
    """
    from ...hashing import NgramHasher
    from .finish import RunWriter
    from .resume import (
        check_same_data,
        interrupted_message,
        restore_backbone,
        restore_rows,
        windows_digest,
    )

    config.validate()
    if config.engram and (table is None or vocab is None):
        raise UsageError("training with Engram needs a table and its vocab (or pass --no-engram)")
    if config.freeze_backbone and base is None:
        raise UsageError("--freeze-backbone needs --init-from MODEL_DIR (the model to adapt)")
    fingerprints = {"windows": windows_digest(windows), "heldout": windows_digest(heldout)}
    if resume is not None:
        check_same_data(resume.state, fingerprints)
        run = dict(resume.run) if config.engram else None
    else:
        if config.engram:
            check_prior_runs(table, prior_runs, base_meta=base.meta if base is not None else None)
        run = new_run(out_dir, steps=config.steps, policy=prior_runs) if config.engram else None
    if run is not None and config.out_of_core and not config.checkpoint_every:
        table.record_run({**run, "incomplete": True})  # rows reach the table during the run
    with reproducible_torch(config.device, config.threads), ExitStack() as stack:
        if resume is not None:
            from ..checkpoint import load_checkpoint

            checkpoint = resume.checkpoint or load_checkpoint(resume.path, device=config.device)
            model = checkpoint.model
        elif base is not None:
            model = base.model.to(config.device)
        else:
            model = build_model(config, model_vocab, table)
        tables, hasher, moments_store = {}, None, None
        if config.engram:
            hasher = NgramHasher(table.layout, vocab)
            if config.out_of_core:
                from .rows import OutOfCoreRows, default_moments_path, open_moment_store

                moments = Path(moments) if moments else default_moments_path(table.path)
                moments_store = stack.enter_context(open_moment_store(table, moments))
                hold = config.batch * config.seq_len * table.layout.heads_per_layer
                tables = {
                    layer: OutOfCoreRows(
                        table,
                        layer,
                        moments_store,
                        config.device,
                        buffer_rows=config.buffer_rows,
                        hold=hold if config.checkpoint_every else 0,
                    )
                    for layer in table.layout.layers
                }
            else:
                from .rows import TrainableTable

                tables = {
                    layer: TrainableTable(table, layer, config.device)
                    for layer in table.layout.layers
                }
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
            moments=moments_store,
            base=base,
            overwrite=overwrite,
            extra_meta=extra_meta,
            compare=compare,
            info={"inputs": inputs or {}, **fingerprints},
        )
        history = {"step": [], "train_loss": [], "heldout": [], "lr": []}
        first, before = 0, {}
        if resume is not None:
            tensors = resume.tensors()
            restore_backbone(optimizers.backbone, tensors)
            restore_rows(tables, tensors, out_of_core=config.out_of_core)
            history, first, before = resume.state["history"], resume.step, resume.state["result"]
            writer = writer.resumed(first)
        order = data_order(len(windows), config)
        heldout_subset = curve_windows(heldout, config)
        tokens_per_step = config.batch * config.seq_len
        start = time.perf_counter()
        loss_value = history["train_loss"][-1] if history["train_loss"] else float("nan")

        def result_at(done: int, final_heldout=None) -> TrainResult:
            rows = (
                sum(
                    getattr(t, "rows_written", 0) + len(getattr(t, "buffer", ()))
                    for t in tables.values()
                )
                if config.out_of_core
                else sum(int((t.optimizer.steps > 0).sum()) for t in tables.values())
            )
            return TrainResult(
                out_dir=Path(out_dir),
                steps=done,
                tokens=done * tokens_per_step,
                seconds=before.get("seconds", 0.0) + time.perf_counter() - start,
                final_train_loss=loss_value,
                final_heldout_loss=final_heldout,
                history=history,
                rows_written=rows + (before.get("rows_written", 0) if config.out_of_core else 0),
                passes=done * config.batch / len(windows),
                write_seconds=before.get("write_seconds", 0.0)
                + sum(getattr(t, "write_seconds", 0.0) for t in tables.values()),
                moments=str(moments) if moments_store is not None else None,
                table=str(table.path) if config.engram else None,
                checkpoints=writer.checkpoints,
                checkpoint_seconds=writer.seconds_spent,
                resumed_from=first if resume is not None else None,
            )

        done = first
        try:
            for step in range(first, config.steps):
                lr = lr_at(step, peak=config.lr, warmup=config.warmup, total=config.steps)
                table_lr = lr_at(
                    step, peak=config.table_lr, warmup=config.warmup, total=config.steps
                )
                loss_value = train_step(
                    model,
                    get_batch(windows, order, step, config.batch),
                    model_vocab,
                    optimizers=optimizers,
                    hasher=hasher,
                    lr=lr,
                    table_lr=table_lr,
                    config=config,
                )
                done = step + 1
                history["step"].append(step + 1)
                history["train_loss"].append(loss_value)
                history["lr"].append(lr)
                last = step + 1 == config.steps
                if heldout is not None and (
                    last or (config.eval_every and (step + 1) % config.eval_every == 0)
                ):
                    held_loss = estimate_loss(
                        model,
                        heldout_subset,
                        model_vocab,
                        hasher=hasher,
                        tables=tables,
                        config=config,
                    )
                    history["heldout"].append([step + 1, held_loss])
                    log.info("step %d heldout loss %.4f (subset)", step + 1, held_loss)
                if writer.due(step + 1):
                    writer.save(result_at(step + 1), final=False)
                if on_step is not None:
                    elapsed = time.perf_counter() - start
                    rate = tokens_per_step * (step + 1 - first) / elapsed
                    on_step(step + 1, config.steps, loss_value, rate)
            if config.out_of_core and not config.checkpoint_every:
                for rows in tables.values():  # its rows went to the table during the run
                    rows.write_back(table)
            final_heldout = None
            if heldout is not None:
                final_heldout = estimate_loss(
                    model, heldout, model_vocab, hasher=hasher, tables=tables, config=config
                )
            history["heldout_full"] = final_heldout
            result = result_at(config.steps, final_heldout)
            writer.save(result, final=True)
        except KeyboardInterrupt:
            raise Interrupted(interrupted_message(done, writer, tables)) from None
    return result
