"""The rows a run trains: one :class:`TrainableRows` protocol, two implementations, one factory.

A layer's rows train either in memory (:class:`TrainableTable`: the layer decoded to float32,
with its sparse Adam) or out of core (:class:`~engramctl.model.train.out_of_core.OutOfCoreRows`:
rows gathered from the table per step, their moments (and master copy) from the side columns of
the table's commits, writes through a bounded buffer). Both answer the same calls: ``gather`` /
``step`` / ``lookup`` in the loop, ``state_dict`` / ``load_state_dict`` for the training state
of a checkpoint (the checkpoint holds state_dicts, as nanoGPT's does), and ``commit(table)``,
which stages the trained rows in the table for the run's save step to commit.
:func:`open_trainable_rows` chooses between them: nothing else asks whether a run is out of core.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from ..optim import SparseRowAdam


class TrainableRows(Protocol):
    """One table layer's rows as a run trains them."""

    layer_id: int
    state_key: str  # the key of its state in a checkpoint's training state ("rows", "buffer")
    write_seconds: float  # time spent writing rows to the table in this process

    def gather(self, unique: np.ndarray, unique_t):
        """The rows ``unique`` as a leaf tensor ``(U, d)`` whose gradient :meth:`step` reads."""

    def step(self, unique: np.ndarray, unique_t, leaf, *, lr: float, weight_decay: float) -> None:
        """Sparse Adam on the gathered rows."""

    def lookup(self, ids_t):
        """Rows for evaluation (no gradient), any shape of ids -> ``(*shape, d)``."""

    def commit(self, table) -> None:
        """Stage the rows trained since the last commit in ``table`` (the caller commits every
        layer's at once)."""

    def committed(self, seconds: float) -> None:
        """The commit of what :meth:`commit` staged took ``seconds`` (this layer's share)."""

    def state_dict(self) -> dict:
        """Named arrays that :meth:`load_state_dict` (and a redo of a cut-short commit) needs."""

    def load_state_dict(self, state: dict) -> None:
        """Continue from a committed checkpoint's state."""

    @property
    def rows_trained(self) -> int:
        """Rows this layer counts in the run's result: in memory the rows trained so far (their
        state comes back on resume), out of core those written or buffered by this process."""

    @property
    def over_budget(self) -> bool:
        """Whether a periodic-checkpoint run should commit now (a full write buffer)."""

    @property
    def wrote_rows(self) -> bool:
        """Whether rows of this layer reached the table in this process."""


class TrainableTable:
    """A table layer held in memory as float32 for training, with the rows it changed."""

    state_key = "rows"
    write_seconds = 0.0
    over_budget = False

    def __init__(self, table, layer_id: int, device):
        import torch

        from ...table.core.dtypes import decode_rows

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
        self.wrote_rows = False

    def gather(self, unique: np.ndarray, unique_t):
        """The rows ``unique`` as a leaf tensor ``(U, d)`` whose gradient :meth:`step` reads."""
        return self.weight[unique_t].requires_grad_(True)

    def step(self, unique: np.ndarray, unique_t, leaf, *, lr: float, weight_decay: float) -> None:
        """Sparse Adam on the gathered rows; they reach the table at :meth:`commit`."""
        self.optimizer.step(unique_t, leaf.grad, lr=lr, weight_decay=weight_decay)
        self.touched[unique] = True

    def lookup(self, ids_t):
        """Rows for evaluation (no gradient)."""
        return self.weight[ids_t]

    @property
    def rows_trained(self) -> int:
        return int((self.optimizer.steps > 0).sum())

    def committed(self, seconds: float) -> None:
        """In memory the write-back's time is not reported (``write_seconds`` stays 0)."""

    def commit(self, table) -> None:
        """Stage every row changed since the last commit (the caller commits the table)."""
        changed = np.flatnonzero(self.touched)
        if len(changed):
            table.write_rows(
                self.layer_id, changed, self.weight[changed].cpu().numpy(), flush=False
            )
            self.touched[:] = False
            self.wrote_rows = True

    def state_dict(self) -> dict:
        """The trained rows: their optimizer state (ids, moments, step counts) with their float32
        master values (``weight``), and the rows the next commit writes (``pending``)."""
        state = self.optimizer.state_dict()
        return {**state, "weight": self.weight[state["ids"]].cpu().numpy(),
                "pending": np.flatnonzero(self.touched)}  # fmt: skip

    def load_state_dict(self, state: dict) -> None:
        """The trained rows' master values and moments back (the table holds them rounded to its
        dtype); nothing is pending after a committed checkpoint."""
        import torch

        ids = torch.as_tensor(state["ids"]).to(self.weight.device)
        self.weight[ids] = torch.as_tensor(state["weight"]).to(self.weight.device)
        self.optimizer.load_state_dict(state)
        self.touched[:] = False

    @staticmethod
    def commit_writes(state: dict, *, master: bool) -> list:
        """What a commit of ``state`` writes: ``[(row ids, values, None)]``, the pending rows
        (the redo of a commit a kill cut short writes them again; their optimizer state and
        float32 values are the checkpoint's, so no side columns)."""
        del master
        get = {key: np.asarray(value) for key, value in state.items()}
        pending = get["pending"]
        where = np.searchsorted(get["ids"], pending)
        return [(pending, get["weight"][where], None)]


def _kinds() -> dict:
    from .out_of_core import OutOfCoreRows

    return {cls.state_key: cls for cls in (TrainableTable, OutOfCoreRows)}


def commit_writes(training_state: dict, *, master: bool) -> list:
    """The writes of the commit of a run's training state (``{state_key: {layer: state}}``):
    ``[(layer, row ids, values, side columns or None)]`` in layer order (``master``: the table
    keeps float32 master copies, :func:`~engramctl.model.train.out_of_core.wants_master`)."""
    writes = []
    for key, cls in _kinds().items():
        layers = training_state.get(key) or {}
        for layer in sorted(layers, key=int):
            for ids, values, side in cls.commit_writes(layers[layer], master=master):
                writes.append((int(layer), ids, values, side))
    return writes


def writes_during_run(config) -> bool:
    """Whether rows reach the table during the run, not only at checkpoints: out of core without
    periodic checkpoints (the run is recorded incomplete from the start, its rows all written
    before the last checkpoint)."""
    return bool(config.out_of_core and not config.checkpoint_every)


def choose_out_of_core(requested: bool | None, table, *, freeze_backbone: bool) -> bool:
    """``--out-of-core/--in-memory``, or by default: a table-only adaptation, or a table that
    does not fit in memory."""
    from .inputs import table_fits_in_memory

    if requested is None:
        return freeze_backbone or not table_fits_in_memory(table)
    return requested


def open_trainable_rows(table, config) -> dict:
    """The trainable rows of every layer of ``table`` for ``config`` (the one place that chooses
    in memory or out of core)."""
    from .out_of_core import OutOfCoreRows

    if not config.out_of_core:
        return {layer: TrainableTable(table, layer, config.device) for layer in table.layout.layers}
    hold = config.batch * config.seq_len * table.layout.heads_per_layer
    return {
        layer: OutOfCoreRows(
            table,
            layer,
            config.device,
            buffer_rows=config.buffer_rows,
            hold=hold if config.checkpoint_every else 0,
        )
        for layer in table.layout.layers
    }
