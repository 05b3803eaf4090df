"""The row-source protocol: where the bytes of an open table's rows come from.

:class:`~engramctl.table.sources.table.Table` picks one :class:`RowSource` when it opens (chunk
files: :class:`~engramctl.table.sources.chunked.ChunkedSource`; a checkpoint's shards:
:class:`~engramctl.table.sources.linked.LinkedSource`) and delegates every read and write of rows
to it, so the table itself never asks how it is stored.

Every source returns *stored rows*: ``[n, row_width]`` of the table's storage dtype, the bytes a
copied table holds (see :func:`engramctl.table.core.dtypes.decode_rows`). A source checks its own
bytes before it returns them (a chunk's CRC-32 against the manifest, a linked file's size and
header) and raises :class:`~engramctl.errors.EngramError` naming what is damaged.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

from ..core.meta import TableMeta


class RowSource(ABC):
    """The rows of one open table, layer by layer.

    Callers (:class:`~engramctl.table.sources.table.Table`) check row ids and buffers first:
    a source gets int64 ids inside the layer and a C-contiguous output buffer of the storage
    dtype.
    """

    meta: TableMeta

    @abstractmethod
    def gather(self, layer_id: int, ids: np.ndarray, out: np.ndarray) -> np.ndarray:
        """Copy rows ``ids`` (int64, in range, at least one) of a layer into ``out``
        (``[len(ids), row_width]``) and return ``out``."""

    @abstractmethod
    def read_chunk(self, layer_id: int, chunk_index: int) -> np.ndarray:
        """Stored rows ``[chunk_rows, row_width]`` of one chunk (zero padded past the layer's
        end), read now and not kept."""

    def rows(self, layer_id: int, start: int, stop: int) -> np.ndarray:
        """Stored rows ``[start, stop)`` of a layer (a checked range), read chunk by chunk and
        not kept."""
        chunk_rows = self.meta.chunk_rows
        out = np.empty((stop - start, self.meta.row_width), dtype=self.meta.storage_dtype)
        for c in range(start // chunk_rows, -(-stop // chunk_rows)):
            lo, hi = max(start, c * chunk_rows), min(stop, (c + 1) * chunk_rows)
            out[lo - start : hi - start] = self.read_chunk(layer_id, c)[
                lo - c * chunk_rows : hi - c * chunk_rows
            ]
        return out

    @abstractmethod
    def check_writable(self) -> None:
        """Refuse writing rows where this source cannot hold them (a linked checkpoint)."""

    @abstractmethod
    def write_chunk(
        self, layer_id: int, chunk_index: int, rows: np.ndarray, *, source: str, fsync: bool
    ) -> None:
        """Write one whole chunk of stored rows and record it in the manifest."""

    @abstractmethod
    def close(self) -> None:
        """Drop what the source keeps (maps, decoded chunks); it may be read again after."""


__all__ = ["RowSource"]
