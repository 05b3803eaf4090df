"""Table rows trained out of core: gathered from the table per step, written back as commits.

:class:`OutOfCoreRows` is the out-of-core twin of
:class:`~engramctl.model.train.rows.TrainableTable` (a layer decoded to memory; both are
:class:`~engramctl.model.train.rows.TrainableRows`): nothing of size O(table rows) is held in
memory. Each step gathers the unique rows it hashes to with the table's memory-mapped gather,
together with their sparse-Adam state from the table's commits, and updates them. Updated rows
go to a bounded write-back buffer (``buffer_rows`` rows; reads see it first); when it is full, or
at a checkpoint, it is written as a commit (:mod:`engramctl.table.edits`): per layer one segment
of the dirty rows in the table's dtype with two *side columns*:

- ``adam``: float32 ``exp_avg | exp_avg_sq | step`` (``2 d + 1`` values);
- ``master``: the float32 rows themselves, for tables stored in fp8, bf16 or fp16, so that a row
  trained again starts from its exact value, not from the stored (rounded) one: updates smaller
  than the storage precision accumulate instead of rounding away.

A row no commit trained (or one rewritten since by a plain write, which carries no side columns)
starts with zero moments from its stored value. This works on any base, a linked checkpoint
included, and nothing else is written: rows, moments and master copies are one commit, all or
nothing. A run with periodic checkpoints (``hold``) commits only at a checkpoint (one commit for
every layer, made by the checkpoint writer), which it takes early when the buffer holds more than
``buffer_rows``: the table always holds a checkpoint's rows and their state.

For every storage dtype the arithmetic is the in-memory path's, value for value (the in-memory
path keeps float32 rows throughout; here the master copy does), so the result does not depend on
when flushes happen. ``master=False`` drops the master copy (each step's rows are rounded to the
table's dtype before they are used again, what runs before side columns did).
"""

from __future__ import annotations

import time

import numpy as np

from ...errors import EngramError

DEFAULT_BUFFER_ROWS = 1 << 18
ADAM = "adam"  # side column: exp_avg | exp_avg_sq | step
MASTER = "master"  # side column: float32 master copy (tables not stored in float32)


def wants_master(table) -> bool:
    """Whether a table's rows need a float32 master copy (its dtype rounds float32)."""
    return table.dtype != "float32"


def side_columns(rows, m, v, t, *, master: bool) -> dict:
    """The side columns a commit of trained rows carries (see the module docstring)."""
    side = {ADAM: np.concatenate([m, v, np.asarray(t, np.float32)[:, None]], axis=1)}
    if master:
        side[MASTER] = np.asarray(rows, np.float32)
    return side


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
        self, table, layer_id: int, device, *, buffer_rows=DEFAULT_BUFFER_ROWS, hold=0, master=None
    ):
        from ..optim import TABLE_BETAS

        self.table, self.layer_id = table, layer_id
        self.device = device
        self.master = wants_master(table) if master is None else bool(master)
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
            stored = decode_rows(raw, self.table.dtype, d)
            if self.master:  # a trained row's exact value, where its newest commit has one
                master = self.table.side_rows(self.layer_id, MASTER, ids)
                if master is not None:
                    known = ~np.isnan(master[:, 0])
                    stored[known] = master[known]
            rows[absent] = stored
            state = self.table.side_rows(self.layer_id, ADAM, ids)
            if state is None:
                state = np.zeros((len(ids), 2 * d + 1), dtype=np.float32)
            else:  # NaN: a row no training commit holds (never trained, or written since)
                state = np.where(np.isnan(state[:, :1]), np.float32(0), state)
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
        """Rows as the next step reads them: float32 with a master copy (and for float32
        tables), else rounded to the table's dtype."""
        if self.master or self.table.dtype == "float32":
            return rows
        from ...table.core.dtypes import decode_rows, encode_rows

        return decode_rows(encode_rows(rows, self.table.dtype), self.table.dtype, self.dim)

    @property
    def over_budget(self) -> bool:  # (the protocol's)
        """Holding more rows than ``buffer_rows`` (a periodic-checkpoint run commits now)."""
        return len(self.buffer) > self.budget

    def flush(self, table=None, *, commit: bool = True) -> int:
        """Write the buffered rows with their moments (and master copy) to ``table`` (default the
        one read): one commit, or (``commit=False``) staged for the caller's commit; returns rows
        written."""
        n = len(self.buffer)
        if not n:
            return 0
        buf, slots = self.buffer, self.buffer.slots
        self._write(
            buf.ids, buf.rows[slots], buf.m[slots], buf.v[slots], buf.t[slots], table, commit
        )
        self.buffer.clear()
        return n

    def _write(self, ids, rows, m, v, t, table=None, commit: bool = True) -> None:
        """Rows (encoded to the table's dtype) and their side columns: one ``write_rows``."""
        started = time.perf_counter()
        table = self.table if table is None else table
        table.write_rows(
            self.layer_id,
            ids,
            rows,
            flush=False,
            side=side_columns(rows, m, v, t, master=self.master),
        )
        if commit:
            table.commit()  # segments fsynced, then the log's rename
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

    def committed(self, seconds: float) -> None:
        """The checkpoint's commit of the staged rows took ``seconds`` (this layer's share)."""
        self.write_seconds += seconds

    def commit(self, table) -> None:
        """Stage the buffered rows with their side columns in ``table`` (the rest is in its
        commits already); the checkpoint writer commits every layer's at once."""
        self.flush(table, commit=False)

    def state_dict(self) -> dict:
        """The write buffer: what a commit writes (its redo log)."""
        buf, slots = self.buffer, self.buffer.slots
        return {"ids": buf.ids, "rows": buf.rows[slots], "m": buf.m[slots], "v": buf.v[slots],
                "t": buf.t[slots]}  # fmt: skip

    def load_state_dict(self, state: dict) -> None:
        """Resume at a committed checkpoint: its rows and their state are in the table's commits
        already, so nothing comes back but an empty buffer."""
        self.buffer.clear()

    @staticmethod
    def commit_writes(state: dict, *, master: bool) -> list:
        """What a commit of ``state`` writes: ``[(row ids, values, side columns)]``; the redo of
        a commit a kill cut short writes them again."""
        get = {key: np.asarray(value) for key, value in state.items()}
        side = side_columns(get["rows"], get["m"], get["v"], get["t"], master=master)
        return [(get["ids"], get["rows"], side)]
