"""A test double of the on-disk table (``engramctl.table.sources.table``): same interface, held in
memory.

``InMemoryTable`` offers what the model code relies on (``gather``, ``write_rows``, ``layout``,
``dim``, ``dtype``, ``layers``, ``info.vocab_fingerprint``, the provenance ``runs``, ``state``,
``record_run`` and ``flush``) with float32 rows, so paging and
training can be tested before (and independently of) the zarr table.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class DoubleInfo:
    vocab_fingerprint: str


class InMemoryTable:
    """float32 rows per layer, normal(0, std) init from a seed; counts the rows it gathered."""

    dtype = "float32"

    def __init__(self, layout, dim: int, vocab_fingerprint: str, *, std=0.02, seed=0):
        self.layout = layout
        self.dim = dim
        self.layers = tuple(layout.layers)
        self.info = DoubleInfo(vocab_fingerprint)
        rng = np.random.default_rng(seed)
        self.values = {
            layer: (rng.standard_normal((layout.layer_rows(layer), dim)) * std).astype(np.float32)
            for layer in self.layers
        }
        self.rows_gathered = 0
        self.runs: tuple[dict, ...] = ()  # provenance, as Table.record_run keeps it
        self.path = f"<in-memory table {id(self):x}>"

    @property
    def state(self) -> str:
        import hashlib

        digest = hashlib.sha256()
        for layer in self.layers:
            digest.update(self.values[layer].tobytes())
        return "sha256:" + digest.hexdigest()

    def record_run(self, run: dict) -> dict:
        record = {**run, "state": self.state}
        self.runs = (*(r for r in self.runs if r.get("run_id") != run.get("run_id")), record)
        return record

    def flush(self) -> None:
        pass

    def commit(self, message: str = "", *, made_by=None) -> bool:
        """Rows are in place as soon as written: nothing to commit (a table commits them)."""
        return False

    def gather(self, layer_id, row_ids, out=None):
        row_ids = np.asarray(row_ids, dtype=np.int64)
        self.rows_gathered += len(row_ids)
        return np.take(self.values[layer_id], row_ids, axis=0, out=out)

    def write_rows(self, layer_id, row_ids, values, *, flush=True, fsync=True):
        self.values[layer_id][np.asarray(row_ids, dtype=np.int64)] = values


def small_layout_for(ds_vocab, primes=(211, 223)):
    """The model tests' layout: layer 1, orders 2..3, 2 heads of the given primes."""
    from tests.conftest import make_layout

    return make_layout(primes, vocab_size=ds_vocab.canonical_vocab_size)


def small_real_table(path, ds_vocab, *, primes=(211, 223), dim=8, dtype="float32"):
    """A real on-disk table of :func:`small_layout_for` for the model tests; returns path."""
    from engramctl.table.build.create import create_table

    layout = small_layout_for(ds_vocab, primes)
    create_table(
        path, layout=layout, vocab_fingerprint=ds_vocab.fingerprint, dim=dim, dtype=dtype, workers=1
    )
    return path
