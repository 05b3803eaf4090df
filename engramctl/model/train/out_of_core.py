"""Table rows trained out of core: gathered from the table per step, written back in batches.

:class:`OutOfCoreRows` is the out-of-core twin of
:class:`~engramctl.model.train.rows.TrainableTable` (a layer decoded to memory; both are
:class:`~engramctl.model.train.rows.TrainableRows`): nothing of size O(table rows) is held in
memory. Each step gathers the unique rows it hashes to with the table's memory-mapped gather,
together with their sparse-Adam moments from the *moment store*, and updates them. Updated rows
and moments go to a bounded write-back buffer (``buffer_rows`` rows; reads see it first); when it
is full, or at the end, it is flushed: one commit per store (a segment of the dirty rows per
layer, :mod:`engramctl.table.edits`), whatever the table's size or base (a linked checkpoint
included). A run with periodic checkpoints (``hold``)
flushes only at a checkpoint (its ``commit``), which it takes early when the buffer holds more
than ``buffer_rows``: the table and moment store always hold a checkpoint's rows.

The moment store is itself an engramctl table (``<table>.adam.zarr`` by default, named in the
checkpoint): the table's layout, float32 rows of ``exp_avg | exp_avg_sq | step`` (``2 d + 1``
values), lazy and zero-initialized, so untouched rows cost no disk and ``verify`` covers it;
its commits hold the same rows as the table's.

For a float32 table the arithmetic is the in-memory path's, value for value (a test compares
the checkpoints and rows bit for bit). For other storage dtypes every step's rows are rounded to
the table's dtype before they are used again, so the result does not depend on when flushes
happen; the in-memory path keeps float32 until the end and differs in the last bits.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from ...errors import EngramError

MOMENTS_SUFFIX = ".adam.zarr"
DEFAULT_BUFFER_ROWS = 1 << 18


def default_moments_path(table_path) -> Path:
    """``t.zarr`` -> ``t.adam.zarr`` (a sibling of the table)."""
    path = Path(table_path)
    stem = path.name[: -len(".zarr")] if path.name.endswith(".zarr") else path.name
    return path.with_name(stem + MOMENTS_SUFFIX)


def open_moment_store(table, path, *, create: bool = True):
    """Open (creating it lazily if absent) the sparse-Adam moment store of ``table``."""
    from ...table.build.create import create_table
    from ...table.sources.table import open_table

    path = Path(path)
    width = 2 * table.dim + 1
    if not path.exists():
        if not create:
            raise EngramError(f"moment store {path} not found")
        create_table(
            path,
            layout=table.layout,
            vocab_fingerprint=table.info.vocab_fingerprint,
            dim=width,
            dtype="float32",
            init="zeros",
            lazy=True,
            chunk_rows=table.meta.chunk_rows,  # chunk boundaries aligned with the table's
        )
    store = open_table(path, mode="r+")
    if store.layout.to_dict() != table.layout.to_dict() or store.dim != width:
        store.close()
        raise EngramError(
            f"{path} is not the moment store of this table (layout or width {store.dim} != "
            f"{width}); pass another --moments path or delete it"
        )
    return store


class WriteBuffer:
    """Dirty rows of one layer: sorted row ids -> slots of preallocated arrays."""

    def __init__(self, capacity: int, dim: int):
        self.capacity, self.dim = capacity, dim
        self.ids = np.empty(0, dtype=np.int64)  # sorted
        self.slots = np.empty(0, dtype=np.int64)  # slot of ids[i]
        self.rows = np.empty((capacity, dim), dtype=np.float32)
        self.m = np.empty((capacity, dim), dtype=np.float32)
        self.v = np.empty((capacity, dim), dtype=np.float32)
        self.t = np.empty(capacity, dtype=np.float32)

    def __len__(self) -> int:
        return len(self.ids)

    def find(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(present mask, slots of the present ones)`` for sorted unique ``ids``."""
        if not len(self.ids):
            return np.zeros(len(ids), dtype=bool), np.empty(0, dtype=np.int64)
        pos = np.searchsorted(self.ids, ids)
        present = self.ids[np.minimum(pos, len(self.ids) - 1)] == ids
        return present, self.slots[pos[present]]

    def put(self, ids, rows, m, v, t) -> None:
        """Store new values of sorted unique ``ids`` (the caller made room)."""
        present, slots = self.find(ids)
        new = ids[~present]
        new_slots = np.arange(len(self.ids), len(self.ids) + len(new), dtype=np.int64)
        pos = np.searchsorted(self.ids, new)
        self.ids = np.insert(self.ids, pos, new)
        self.slots = np.insert(self.slots, pos, new_slots)
        all_slots = np.empty(len(ids), dtype=np.int64)
        all_slots[present], all_slots[~present] = slots, new_slots
        self.rows[all_slots], self.m[all_slots] = rows, m
        self.v[all_slots], self.t[all_slots] = v, t

    def clear(self) -> None:
        self.ids = np.empty(0, dtype=np.int64)
        self.slots = np.empty(0, dtype=np.int64)


class OutOfCoreRows:
    """One table layer trained out of core (see the module docstring)."""

    def __init__(
        self, table, layer_id: int, moments, device, *, buffer_rows=DEFAULT_BUFFER_ROWS, hold=0
    ):
        from ..optim import TABLE_BETAS

        self.table, self.moments, self.layer_id = table, moments, layer_id
        self.device = device
        self.dim = table.dim
        # hold > 0 (periodic checkpoints): rows reach the table only at a checkpoint, which the
        # run takes when more than buffer_rows are held; hold is the most rows one step adds
        self.budget, self.hold = max(1, int(buffer_rows)), int(hold)
        self.buffer = WriteBuffer(self.budget + self.hold, self.dim)
        self.betas, self.eps = TABLE_BETAS, 1e-8
        self.rows_written = 0
        self.flushes = 0
        self.write_seconds = 0.0
        self._pending = None

    # ------------------------------------------------------------------ reading
    def _read(self, unique: np.ndarray):
        """Float32 rows, moments and step counts of sorted unique ids (buffer first)."""
        from ...table.core.dtypes import decode_rows

        d = self.dim
        rows = np.empty((len(unique), d), dtype=np.float32)
        m = np.empty((len(unique), d), dtype=np.float32)
        v = np.empty((len(unique), d), dtype=np.float32)
        t = np.empty(len(unique), dtype=np.float32)
        present, slots = self.buffer.find(unique)
        if present.any():
            rows[present], m[present] = self.buffer.rows[slots], self.buffer.m[slots]
            v[present], t[present] = self.buffer.v[slots], self.buffer.t[slots]
        absent = ~present
        if absent.any():
            ids = unique[absent]
            raw = self.table.gather(self.layer_id, ids)
            rows[absent] = decode_rows(raw, self.table.dtype, d)
            state = self.moments.gather(self.layer_id, ids)
            m[absent], v[absent], t[absent] = state[:, :d], state[:, d : 2 * d], state[:, 2 * d]
        return rows, m, v, t

    def gather(self, unique: np.ndarray, unique_t):
        """The rows ``unique`` as a leaf tensor ``(U, d)`` whose gradient :meth:`step` reads."""
        import torch

        rows, m, v, t = self._read(unique)
        self._pending = (unique, m, v, t)
        return torch.from_numpy(rows).to(self.device).requires_grad_(True)

    def lookup(self, ids_t):
        """Rows for evaluation (no gradient), any shape of ids -> ``(*shape, d)``."""
        import torch

        ids = ids_t.detach().cpu().numpy()
        unique, inverse = np.unique(ids.ravel(), return_inverse=True)
        rows = self._read(unique)[0]
        out = torch.from_numpy(rows[inverse]).reshape(*ids.shape, self.dim)
        return out.to(ids_t.device)

    # ------------------------------------------------------------------ updating
    def step(self, unique: np.ndarray, unique_t, leaf, *, lr: float, weight_decay: float) -> None:
        """Sparse Adam on the gathered rows (as :class:`SparseRowAdam`); into the buffer."""
        import torch

        from ..optim import adam_rows_update

        pending_ids, m, v, t = self._pending
        if pending_ids is not unique:
            raise EngramError("step() must follow gather() of the same rows")
        self._pending = None
        with torch.no_grad():
            rows = leaf.detach().clone()
            m_t, v_t = torch.from_numpy(m).to(rows.device), torch.from_numpy(v).to(rows.device)
            t_new = torch.from_numpy(t).to(torch.int32) + 1
            adam_rows_update(
                rows,
                m_t,
                v_t,
                t_new.to(rows.device),
                leaf.grad,
                lr=lr,
                weight_decay=weight_decay,
                betas=self.betas,
                eps=self.eps,
            )
        values = (
            self._rounded(rows.cpu().numpy()),
            m_t.cpu().numpy(),
            v_t.cpu().numpy(),
            t_new.numpy().astype(np.float32),
        )
        if len(self.buffer) + len(unique) > self.buffer.capacity:
            if self.hold:
                raise EngramError("a step touched more rows than the write buffer holds")
            self.flush()
        if len(unique) > self.buffer.capacity:  # one step's rows exceed the buffer: write now
            self._write(unique, *values)
        else:
            self.buffer.put(unique, *values)

    def _rounded(self, rows: np.ndarray) -> np.ndarray:
        """Rows as the table will store them (identity for float32 tables)."""
        if self.table.dtype == "float32":
            return rows
        from ...table.core.dtypes import decode_rows, encode_rows

        return decode_rows(encode_rows(rows, self.table.dtype), self.table.dtype, self.dim)

    @property
    def over_budget(self) -> bool:  # (the protocol's)
        """Holding more rows than ``buffer_rows`` (a periodic-checkpoint run commits now)."""
        return len(self.buffer) > self.budget

    def flush(self, table=None) -> int:
        """Write the buffered rows (to ``table``, default the one read) and moments, each touched
        chunk once; returns rows written."""
        n = len(self.buffer)
        if not n:
            return 0
        buf, slots = self.buffer, self.buffer.slots
        self._write(buf.ids, buf.rows[slots], buf.m[slots], buf.v[slots], buf.t[slots], table)
        self.buffer.clear()
        return n

    def _write(self, ids, rows, m, v, t, table=None) -> None:
        """Rows to the table, moments to the moment store: one ``write_rows`` call each."""
        started = time.perf_counter()
        table = self.table if table is None else table
        state = np.concatenate([m, v, t[:, None]], axis=1)
        # staged, then one commit each (a commit fsyncs its segments before its log's rename)
        table.write_rows(self.layer_id, ids, rows, flush=False)
        self.moments.write_rows(self.layer_id, ids, state, flush=False)
        table.flush()
        self.moments.flush()
        self.write_seconds += time.perf_counter() - started
        self.rows_written += len(ids)
        self.flushes += 1

    # ------------------------------------------------------------------ the protocol
    state_key = "buffer"  # its state's key in a checkpoint's training state

    @property
    def rows_trained(self) -> int:
        """Rows written to the table over the run, and those the buffer holds."""
        return self.rows_written + len(self.buffer)

    @property
    def wrote_rows(self) -> bool:
        """Whether rows of this layer reached the table."""
        return self.flushes > 0

    def commit(self, table) -> None:
        """Write the buffered rows to ``table`` and their moments to the moment store (the rest
        is in both already)."""
        self.flush(table)

    def state_dict(self) -> dict:
        """The write buffer: what a commit writes (its redo log)."""
        buf, slots = self.buffer, self.buffer.slots
        return {"ids": buf.ids, "rows": buf.rows[slots], "m": buf.m[slots], "v": buf.v[slots],
                "t": buf.t[slots]}  # fmt: skip

    def load_state_dict(self, state: dict) -> None:
        """Resume at a committed checkpoint: its rows and moments are in the table and the moment
        store already, so nothing comes back but an empty buffer."""
        self.buffer.clear()

    @staticmethod
    def commit_writes(state: dict) -> list:
        """What a commit of ``state`` writes: ``[(target, layer row ids, values)]``, target
        ``"table"`` (the rows) or ``"moments"`` (their moments); the redo of a commit a kill cut
        short writes them again."""
        get = {key: np.asarray(value) for key, value in state.items()}
        moments = np.concatenate([get["m"], get["v"], get["t"][:, None]], axis=1)
        return [("table", get["ids"], get["rows"]), ("moments", get["ids"], moments)]
