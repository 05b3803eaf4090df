"""What a table holds for a phrase: each token's row per head, the row's norm and values.

:func:`lookup_rows` hashes token ids with the table's own layout and vocab (refusing another
vocab), gathers the rows from the table (copied, linked or lazy alike) and decodes them to
float32 exactly as the engines do (:func:`engramctl.table.core.dtypes.decode_rows`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import UsageError
from ..hashing import NgramHasher
from .core.dtypes import decode_rows


@dataclass(frozen=True)
class HeadLookup:
    """One head's row for one token position."""

    head: int  # head index within the layer (order-2 heads first)
    order: int  # n-gram order of the head
    row_id: int  # row within the head (the hash modulo its prime)
    table_row: int  # row of the layer's table (head offset + row id)
    norm: float  # L2 norm of the dequantized row
    values: list[float]  # its first K values


@dataclass(frozen=True)
class LookupReport:
    """Per layer, per token position, the rows of every head."""

    ids: list[int]
    tokens: list[str] | None
    layers: dict[int, list[list[HeadLookup]]]

    def to_dict(self) -> dict:
        return {
            "ids": self.ids,
            "tokens": self.tokens,
            "layers": {
                str(layer_id): [
                    [
                        {
                            "head": h.head,
                            "order": h.order,
                            "row_id": h.row_id,
                            "table_row": h.table_row,
                            "norm": h.norm,
                            "values": h.values,
                        }
                        for h in position
                    ]
                    for position in positions
                ]
                for layer_id, positions in self.layers.items()
            },
        }


def lookup_rows(table, ids, vocab, *, values: int = 0, tokens=None) -> LookupReport:
    """Hash ``ids`` ``[T]`` with the table's layout and read every head's row of every layer."""
    if values < 0:
        raise UsageError(f"--values must be >= 0, got {values}")
    table.check_vocab(vocab)
    ids = np.asarray(ids, dtype=np.int64).reshape(-1)
    layout = table.layout
    hasher = NgramHasher(layout, vocab)
    hashed = hasher.hash(ids, layers=list(table.layers))  # {layer: (T, H)} row ids per head
    report = {}
    for layer_id, row_ids in hashed.items():
        offsets = np.asarray(table.meta.layer(layer_id).head_offsets, dtype=np.int64)
        table_rows = row_ids + offsets  # (T, H)
        decoded = decode_rows(table.gather(layer_id, table_rows), table.dtype, table.dim)
        norms = np.linalg.norm(decoded.astype(np.float64), axis=1).reshape(row_ids.shape)
        decoded = decoded.reshape(*row_ids.shape, table.dim)
        report[layer_id] = [
            [
                HeadLookup(
                    head=h,
                    order=2 + h // layout.heads,
                    row_id=int(row_ids[t, h]),
                    table_row=int(table_rows[t, h]),
                    norm=float(norms[t, h]),
                    values=decoded[t, h, :values].tolist(),
                )
                for h in range(row_ids.shape[1])
            ]
            for t in range(row_ids.shape[0])
        ]
    return LookupReport(ids.tolist(), list(tokens) if tokens is not None else None, report)
