"""A training run's options (:class:`TrainConfig`), its result (:class:`TrainResult`) and the
history and counters it keeps step by step (:class:`RunProgress`)."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ...errors import UsageError


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
    table: str | None = None  # the table whose rows were trained (None: --no-engram)
    checkpoints: int = 0  # periodic checkpoints committed by this process (--checkpoint-every)
    checkpoint_seconds: float = 0.0  # time they took
    resumed_from: int | None = None  # the step this process resumed at (--resume)

    def to_dict(self) -> dict:
        data = asdict(self)
        data["out_dir"] = str(self.out_dir)
        return data


@dataclass
class RunProgress:
    """A run's history and counters, and its :class:`TrainResult` after any step."""

    out_dir: Path
    config: TrainConfig
    n_windows: int
    tables: dict
    writer: object  # finish.RunWriter
    table: object | None
    history: dict = field(
        default_factory=lambda: {"step": [], "train_loss": [], "heldout": [], "lr": []}
    )
    first: int = 0  # the step this process started at
    before: dict = field(default_factory=dict)  # the resumed checkpoint's result
    resumed: bool = False
    carried_rows: int = 0  # rows written before the resumed checkpoint, not counted by the rows
    loss: float = float("nan")  # the last train loss
    start: float = field(default_factory=time.perf_counter)

    def resume_at(self, point) -> None:
        """Continue from a checkpoint, its state loaded into the rows."""
        self.history, self.first = point.state["history"], point.step
        self.before, self.resumed = point.state["result"], True
        # rows the checkpoint counted that the loaded rows do not count themselves (out of core:
        # those written before it; in memory the trained rows come back and count themselves)
        counted = sum(rows.rows_trained for rows in self.tables.values())
        self.carried_rows = self.before.get("rows_written", 0) - counted
        self.loss = self.history["train_loss"][-1] if self.history["train_loss"] else float("nan")
        self.start = time.perf_counter()

    def record(self, done: int, loss: float, lr: float) -> None:
        self.loss = loss
        self.history["step"].append(done)
        self.history["train_loss"].append(loss)
        self.history["lr"].append(lr)

    def tokens_per_second(self, done: int) -> float:
        elapsed = time.perf_counter() - self.start
        return self.config.batch * self.config.seq_len * (done - self.first) / elapsed

    def result(self, done: int, final_heldout=None) -> TrainResult:
        config, tables = self.config, self.tables.values()
        return TrainResult(
            out_dir=self.out_dir,
            steps=done,
            tokens=done * config.batch * config.seq_len,
            seconds=self.before.get("seconds", 0.0) + time.perf_counter() - self.start,
            final_train_loss=self.loss,
            final_heldout_loss=final_heldout,
            history=self.history,
            rows_written=self.carried_rows + sum(rows.rows_trained for rows in tables),
            passes=done * config.batch / self.n_windows,
            write_seconds=self.before.get("write_seconds", 0.0)
            + sum(rows.write_seconds for rows in tables),
            table=str(self.table.path) if config.engram else None,
            checkpoints=self.writer.checkpoints,
            checkpoint_seconds=self.writer.seconds_spent,
            resumed_from=self.first if self.resumed else None,
        )
