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
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..errors import EngramError, UsageError

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
    depth: int = 4  # transformer blocks
    width: int = 128  # hidden size
    attn_heads: int = 4  # attention heads
    device: str = "cpu"  # resolved device

    def validate(self) -> None:
        for name in ("steps", "seq_len", "batch", "depth", "width", "attn_heads"):
            if getattr(self, name) < 1:
                raise UsageError(
                    f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}"
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

    def to_dict(self) -> dict:
        data = asdict(self)
        data["out_dir"] = str(self.out_dir)
        return data


def lr_at(step: int, *, peak: float, warmup: int, total: int) -> float:
    """Linear warm-up then cosine decay to 10% of ``peak``.

    >>> lr_at(0, peak=1.0, warmup=10, total=100), lr_at(100, peak=1.0, warmup=10, total=100)
    (0.1, 0.1)
    """
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


class SparseRowAdam:
    """Lazy Adam on the rows a step gathered: state and updates touch only those rows.

    ``weight`` is a ``(rows, d)`` float32 tensor; :meth:`step` takes the unique row ids of the
    batch and the gradient of their gathered copy.
    """

    def __init__(self, weight, *, betas=(0.9, 0.99), eps: float = 1e-8):
        import torch

        self.weight = weight
        self.exp_avg = torch.zeros_like(weight)
        self.exp_avg_sq = torch.zeros_like(weight)
        self.steps = torch.zeros(weight.shape[0], dtype=torch.int32, device=weight.device)
        self.betas, self.eps = betas, eps

    def step(self, row_ids, grad, *, lr: float, weight_decay: float = 0.0) -> None:
        import torch

        with torch.no_grad():
            b1, b2 = self.betas
            t = self.steps[row_ids] + 1
            self.steps[row_ids] = t
            m = self.exp_avg[row_ids].mul_(b1).add_(grad, alpha=1 - b1)
            v = self.exp_avg_sq[row_ids].mul_(b2).addcmul_(grad, grad, value=1 - b2)
            self.exp_avg[row_ids] = m
            self.exp_avg_sq[row_ids] = v
            t = t.to(grad.dtype).unsqueeze(1)
            m_hat = m / (1 - b1**t)
            v_hat = v / (1 - b2**t)
            rows = self.weight[row_ids]
            if weight_decay:
                rows.mul_(1 - lr * weight_decay)
            self.weight[row_ids] = rows - lr * m_hat / (v_hat.sqrt() + self.eps)


class TrainableTable:
    """A table layer held in memory as float32 for training, with the rows it changed."""

    def __init__(self, table, layer_id: int, device):
        import torch

        from ..table.dtypes import decode_rows

        rows = table.layout.layer_rows(layer_id)
        values = np.empty((rows, table.dim), dtype=np.float32)
        step = 1 << 16
        for start in range(0, rows, step):
            ids = np.arange(start, min(rows, start + step), dtype=np.int64)
            values[start : start + len(ids)] = decode_rows(
                table.gather(layer_id, ids), table.dtype, table.dim
            )
        self.layer_id = layer_id
        self.weight = torch.from_numpy(values).to(device)
        self.touched = np.zeros(rows, dtype=bool)
        self.optimizer = SparseRowAdam(self.weight)

    def write_back(self, table) -> int:
        """Write every row changed since the last write back; returns how many."""
        changed = np.flatnonzero(self.touched)
        if len(changed):
            table.write_rows(self.layer_id, changed, self.weight[changed].cpu().numpy())
            self.touched[:] = False
        return int(len(changed))


def train_model(**kwargs) -> TrainResult:
    """Train the reference model on token windows and save a checkpoint.

    Deterministic on CPU: the run enables torch's deterministic algorithms (the backward of the
    row gather accumulates in a fixed order) and restores the previous setting afterwards.
    Keyword arguments are those of :func:`_train_model`.
    """
    import torch

    previous = torch.are_deterministic_algorithms_enabled()
    previous_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    if str(kwargs["config"].device) == "cpu":
        torch.use_deterministic_algorithms(True)
    try:
        return _train_model(**kwargs)
    finally:
        torch.use_deterministic_algorithms(previous, warn_only=previous_warn)


def _train_model(
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
) -> TrainResult:
    """Train (see :func:`train_model`).

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
    """
    import torch

    from ..hashing import NgramHasher
    from .checkpoint import save_checkpoint
    from .transformer import EngramLM, ModelConfig

    config.validate()
    device = torch.device(config.device)
    torch.manual_seed(config.seed)
    base_config = ModelConfig(
        vocab_size=model_vocab.size,
        output_vocab_size=model_vocab.output_size,
        n_layer=config.depth,
        n_head=config.attn_heads,
        n_embd=config.width,
        block_size=config.seq_len,
    )
    layout = None
    if config.engram:
        if table is None or vocab is None:
            raise UsageError(
                "training with Engram needs a table and its vocab (or pass --no-engram)"
            )
        layout = table.layout
        model_config = ModelConfig(
            **{
                **base_config.to_dict(),
                "engram_layers": layout.layers,
                "engram_heads": layout.heads_per_layer,
                "engram_dim": table.dim,
                "max_ngram": layout.max_ngram,
            },
        )
    else:
        model_config = base_config
    # The same backbone init for engram and baseline runs: build the baseline under the seed and
    # copy its weights; the Engram modules get their own seeded init.
    baseline_model = EngramLM(base_config)
    torch.manual_seed(config.seed + 1)
    model = EngramLM(model_config)
    model.load_state_dict(baseline_model.state_dict(), strict=False)
    del baseline_model
    model.to(device)

    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": config.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=config.lr,
        betas=(0.9, 0.95),
    )
    tables = {}
    hasher = None
    if config.engram:
        hasher = NgramHasher(layout, vocab)
        tables = {layer: TrainableTable(table, layer, device) for layer in layout.layers}

    rng = np.random.default_rng(config.seed)
    order = np.concatenate(
        [
            rng.permutation(len(windows))
            for _ in range(math.ceil(config.steps * config.batch / len(windows)))
        ]
    )
    history = {"step": [], "train_loss": [], "heldout": [], "lr": []}
    heldout_subset = None
    if heldout is not None:  # the curve's points: the same evenly spaced windows every time
        picks = np.linspace(0, len(heldout) - 1, min(config.eval_windows, len(heldout)))
        heldout_subset = heldout[np.unique(picks.astype(np.int64))]

    def evaluate_heldout(windows_to_score: np.ndarray) -> float:
        return heldout_loss(
            model,
            windows_to_score,
            model_vocab,
            hasher=hasher,
            lookup=lambda layer, ids: tables[layer].weight[ids],
            batch=config.batch,
            device=device,
        )

    tokens_per_step = config.batch * config.seq_len
    start = time.perf_counter()
    loss_value = float("nan")
    for step in range(config.steps):
        batch = windows[order[step * config.batch : (step + 1) * config.batch]]
        lr = lr_at(step, peak=config.lr, warmup=config.warmup, total=config.steps)
        table_lr = lr_at(step, peak=config.table_lr, warmup=config.warmup, total=config.steps)
        for group in optimizer.param_groups:
            group["lr"] = lr
        model.train()
        idx = torch.from_numpy(model_vocab.encode(batch[:, :-1])).to(device)
        targets = torch.from_numpy(model_vocab.encode_targets(batch[:, 1:])).to(device)
        gathered = {}
        rows = None
        if config.engram:
            rows = {}
            for layer, row_ids in hasher.hash(batch[:, :-1], table_rows=True).items():
                unique, inverse = np.unique(row_ids, return_inverse=True)
                unique_t = torch.from_numpy(unique).to(device)
                leaf = tables[layer].weight[unique_t].requires_grad_(True)  # (U, d)
                gathered[layer] = (unique, unique_t, leaf)
                inv = torch.from_numpy(inverse.reshape(row_ids.shape)).to(device)
                rows[layer] = leaf[inv].flatten(2)  # (B, T, H*d)
        logits = model(idx, rows)
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        for layer, (unique, unique_t, leaf) in gathered.items():
            tables[layer].optimizer.step(
                unique_t, leaf.grad, lr=table_lr, weight_decay=config.table_weight_decay
            )
            tables[layer].touched[unique] = True
        loss_value = float(loss.item())
        history["step"].append(step + 1)
        history["train_loss"].append(loss_value)
        history["lr"].append(lr)
        last = step + 1 == config.steps
        if heldout is not None and (
            last or (config.eval_every and (step + 1) % config.eval_every == 0)
        ):
            held_loss = evaluate_heldout(heldout_subset)
            history["heldout"].append([step + 1, held_loss])
            log.info("step %d heldout loss %.4f (subset)", step + 1, held_loss)
        if on_step is not None:
            elapsed = time.perf_counter() - start
            on_step(step + 1, config.steps, loss_value, tokens_per_step * (step + 1) / elapsed)
    seconds = time.perf_counter() - start
    rows_written = sum(t.write_back(table) for t in tables.values())
    final_heldout = evaluate_heldout(heldout) if heldout is not None else None
    history["heldout_full"] = final_heldout
    result = TrainResult(
        out_dir=Path(out_dir),
        steps=config.steps,
        tokens=config.steps * tokens_per_step,
        seconds=seconds,
        final_train_loss=loss_value,
        final_heldout_loss=final_heldout,
        history=history,
        rows_written=rows_written,
        passes=config.steps * config.batch / len(windows),
    )
    meta = {
        "train": asdict(config),
        "result": {k: v for k, v in result.to_dict().items() if k != "history"},
        "layout": layout.to_dict() if layout is not None else None,
        "vocab_fingerprint": vocab.fingerprint if (vocab is not None and config.engram) else None,
        **(extra_meta or {}),
    }
    save_checkpoint(
        out_dir,
        model=model,
        model_vocab=model_vocab,
        meta=meta,
        history=history,
        vocab=vocab if config.engram else None,
        overwrite=overwrite,
        compare=compare,
    )
    return result


@dataclass
class TrainingData:
    """Token windows of the training (and held-out) corpus and the model vocab."""

    windows: np.ndarray  # [N, seq_len + 1] raw ids
    heldout: np.ndarray | None
    model_vocab: object  # lm_data.ModelVocab
    meta: dict  # tokenizer and corpus facts recorded in the checkpoint


def prepare_training_data(
    *,
    corpus: Path,
    heldout: Path | None,
    vocab,
    tokenizer_source: str | None,
    seq_len: int,
    min_count: int = 1,
) -> TrainingData:
    """Tokenize the corpora with the vocab's tokenizer (checked by sha256) into windows."""
    from ..tokenizer import load_checked_tokenizer
    from .data import ModelVocab, read_corpus_stream, text_windows

    if min_count < 1:
        raise UsageError(f"--min-count must be at least 1, got {min_count}")
    source = tokenizer_source or (vocab.source_name if vocab is not None else "") or "deepseek-v4"
    sha256 = vocab.source_sha256 if vocab is not None else None
    tokenizer, info = load_checked_tokenizer(source, sha256=sha256)
    stream = read_corpus_stream(corpus, tokenizer).ids
    model_vocab = ModelVocab.from_stream(stream, min_count=min_count)
    held = None
    if heldout is not None:
        held = text_windows(read_corpus_stream(heldout, tokenizer).ids, seq_len)
    meta = {
        "tokenizer": {"name": info.name, "sha256": info.sha256},
        "corpus": {
            "path": str(corpus),
            "tokens": int(len(stream)),
            "heldout": str(heldout) if heldout else None,
        },
        "model_vocab": {
            "inputs": model_vocab.size,
            "outputs": model_vocab.output_size,
            "min_count": min_count,
        },
    }
    return TrainingData(text_windows(stream, seq_len), held, model_vocab, meta)


def heldout_loss(model, windows, model_vocab, *, hasher, lookup, batch: int, device) -> float:
    """Mean next-token loss (nats) over windows, rows from ``lookup(layer, row_ids_tensor)``."""
    import torch

    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(windows), batch):
            chunk = windows[start : start + batch]
            idx = torch.from_numpy(model_vocab.encode(chunk[:, :-1])).to(device)
            targets = torch.from_numpy(model_vocab.encode_targets(chunk[:, 1:])).to(device)
            rows = None
            if hasher is not None:
                rows = {
                    layer: lookup(layer, torch.from_numpy(ids).to(device)).flatten(2)
                    for layer, ids in hasher.hash(chunk[:, :-1], table_rows=True).items()
                }
            logits = model(idx, rows)
            loss = torch.nn.functional.cross_entropy(
                logits.flatten(0, 1), targets.flatten(), reduction="sum"
            )
            total += float(loss)
            count += targets.numel()
    if count == 0:
        raise EngramError("no held-out tokens to evaluate")
    return total / count
