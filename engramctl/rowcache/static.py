"""The host tier's static mode: a fixed set of rows per layer, loaded once, never evicted.

``cache-plan --host-cache SIZE --host-static-out ROWS.npz`` ranks each layer's rows by their
lookups in the warm-up batches (ties to the lower row id, :mod:`engramctl.cacheplan.static`) and
writes the top rows the host tier holds; ``eval``/``generate --host-cache SIZE --host-static
ROWS.npz`` load them into the host tier at start (one sorted pass through the table's gather) and
keep them: a device miss whose row is in the set is a host hit, any other a storage read.

The rows file is a ``.npz`` (no pickles): ``rows_<layer>`` (int64 row ids, ascending, one array
per layer) and ``meta`` (a JSON string: the format, each layer's hashing fingerprint, the layout
and the rows per layer). Row ids mean something only under the hashing that made them, so a layer
whose hashing differs (other primes, multipliers, orders, pad id or vocab size) is refused
(:func:`load_static_rows`); another layout whose layer hashes the same way is not.
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path

import numpy as np

from ..errors import UsageError

FORMAT = "engramctl-host-static/1"
LOAD_CHUNK_ROWS = 1 << 16  # rows per gather while loading (bounded staging)


def layer_fingerprint(layout, layer: int) -> str:
    """``sha256:`` of what a layer's row ids are relative to: its head primes and multipliers,
    the n-gram orders, the pad id and the vocab size."""
    doc = {
        "head_rows": layout.head_rows(layer).tolist(),
        "multipliers": layout.multipliers(layer).tolist(),
        "max_ngram": layout.max_ngram,
        "heads": layout.heads,
        "pad_id": layout.pad_id,
        "vocab_size": layout.vocab_size,
    }
    return "sha256:" + hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


def save_static_rows(path: Path, rows_by_layer: dict, layout) -> None:
    """Write ``{layer: row ids}`` (sorted here) for ``layout`` to ``path`` atomically.

    The caller checks ``path`` (:func:`engramctl._files.check_writable_target`) before the work
    that makes the rows.
    """
    from .._files import atomic_write

    arrays = {
        f"rows_{int(layer)}": np.unique(np.asarray(rows, dtype=np.int64))
        for layer, rows in rows_by_layer.items()
    }
    meta = {
        "format": FORMAT,
        "layers": {str(int(k)): layer_fingerprint(layout, int(k)) for k in rows_by_layer},
        "layout": layout.to_dict(),
        "rows": {name[5:]: int(len(a)) for name, a in arrays.items()},
    }
    with atomic_write(Path(path)) as handle:
        np.savez(handle, meta=np.array(json.dumps(meta)), **arrays)


def load_static_rows(path: Path, layout, *, layers=None) -> dict:
    """``{layer: sorted int64 row ids}`` from a rows file made for ``layout``.

    Refused, one line each (:class:`UsageError`): a missing or unreadable file, one that is not
    a rows file, one lacking a layer of ``layers`` (default: the layout's), one whose layer was
    hashed otherwise (another layout), row ids outside a layer.
    """
    path = Path(path)
    hint = "write one with cache-plan --host-cache SIZE --host-static-out ROWS.npz"
    if not path.is_file():
        raise UsageError(f"--host-static {path}: no such file; {hint}")
    try:
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(str(data["meta"]))
            if meta.get("format") != FORMAT:
                raise ValueError("format")
            arrays = {name: data[name] for name in data.files if name.startswith("rows_")}
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, json.JSONDecodeError) as exc:
        raise UsageError(f"--host-static {path} is not a host-static rows file; {hint}") from exc
    out = {}
    for layer in tuple(layout.layers if layers is None else layers):
        rows = arrays.get(f"rows_{int(layer)}")
        if rows is None:
            raise UsageError(f"--host-static {path} has no rows of layer {layer}; {hint}")
        made_for, this = (
            meta.get("layers", {}).get(str(int(layer))),
            layer_fingerprint(layout, layer),
        )
        if made_for != this:
            raise UsageError(
                f"--host-static {path} was written for another layout (layer {layer} hashed as "
                f"{made_for}, this table's as {this}); {hint} for this table"
            )
        rows = np.asarray(rows, dtype=np.int64)
        if len(rows) and (rows[0] < 0 or rows[-1] >= layout.layer_rows(layer)):
            raise UsageError(f"--host-static {path}: row ids outside layer {layer}; {hint}")
        if np.any(np.diff(rows) <= 0):
            raise UsageError(f"--host-static {path}: layer {layer}'s rows are not ascending")
        out[int(layer)] = rows
    return out


def check_static_fits(rows: np.ndarray, capacity: int, layer: int, path) -> None:
    """Refuse a static set larger than the host tier's rows of that layer."""
    if len(rows) > capacity:
        raise UsageError(
            f"--host-static {path} holds {len(rows):,} rows of layer {layer}, more than "
            f"--host-cache holds ({capacity:,} rows per layer); raise --host-cache or write the "
            "rows with this --host-cache"
        )


def member_mask(static_rows: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Which of ``rows`` are in the sorted ``static_rows``.

    >>> member_mask(np.array([2, 5, 9]), np.array([1, 5, 9, 12])).tolist()
    [False, True, True, False]
    """
    rows = np.asarray(rows, dtype=np.int64)
    if len(static_rows) == 0:
        return np.zeros(len(rows), dtype=bool)
    at = np.minimum(np.searchsorted(static_rows, rows), len(static_rows) - 1)
    return static_rows[at] == rows


class StaticHostTier:
    """One layer's host tier in static mode: the rows of a fixed set, in storage encoding.

    Parameters
    ----------
    capacity : rows this layer's host tier holds (the set must fit).
    rows : the set, sorted row ids.
    row_width, dtype : a stored row's elements and their numpy dtype (``Table.gather``'s shape).
    """

    static = True

    def __init__(self, capacity: int, rows: np.ndarray, row_width: int, dtype):
        self.capacity = int(capacity)
        self.rows = np.asarray(rows, dtype=np.int64)
        self.values = np.empty((len(self.rows), row_width), dtype=dtype)

    def load(self, gather, chunk_rows: int = LOAD_CHUNK_ROWS) -> None:
        """Read the set's rows with ``gather(rows)``, ascending, ``chunk_rows`` at a time."""
        for start in range(0, len(self.rows), chunk_rows):
            stop = min(start + chunk_rows, len(self.rows))
            self.values[start:stop] = gather(self.rows[start:stop])

    def contains(self, rows: np.ndarray) -> np.ndarray:
        """Which of ``rows`` the tier holds (always the same set)."""
        return member_mask(self.rows, rows)

    def check_batch(self, distinct_rows: int) -> None:
        """A static tier admits nothing: any batch size is served."""

    def stored(self, unique: np.ndarray, miss: np.ndarray, index: int, gather) -> tuple:
        """``(stored rows of unique[miss], host hits, storage reads)``: the set's rows from RAM,
        the others read with ``gather(rows)``; the set is never changed."""
        wanted = unique[miss]
        at = np.minimum(np.searchsorted(self.rows, wanted), max(len(self.rows) - 1, 0))
        held = self.rows[at] == wanted if len(self.rows) else np.zeros(len(wanted), dtype=bool)
        out = np.empty((len(wanted), self.values.shape[1]), dtype=self.values.dtype)
        out[held] = self.values[at[held]]
        reads = int((~held).sum())
        if reads:
            out[~held] = gather(wanted[~held])
        return out, int(held.sum()), reads
