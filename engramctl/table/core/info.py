"""What ``engramctl info`` shows of a table: :class:`TableInfo` per table, :class:`LayerInfo` per
layer, built from the metadata and manifest by :func:`table_info`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ...layout import EngramLayout
from .meta import TableMeta


@dataclass(frozen=True)
class LayerInfo:
    """Per-layer facts of a table."""

    rows: int
    chunk_rows: int
    chunks_total: int
    chunks_written: int
    head_rows: list[int]
    head_offsets: list[int]
    logical_bytes: int  # rows x row bytes
    disk_bytes: int  # bytes of the chunk files written


@dataclass(frozen=True)
class TableInfo:
    """What ``engramctl info`` shows; ``to_dict`` is its JSON document."""

    path: str
    format_version: int
    layout: EngramLayout
    vocab_fingerprint: str
    dim: int
    dtype: str
    storage_dtype: str
    row_width: int
    row_bytes: int
    chunk_rows: int
    compressor: str
    init: dict
    lazy: bool
    status: str
    layers: dict[int, LayerInfo]
    sources: dict | None = None  # the checkpoint a linked (or imported) table reads
    commits: int = 0  # commits over the base (engramctl history)
    commit_rows: int = 0  # rows the commits hold (a row written twice counts twice)
    commit_bytes: int = 0  # bytes of the commits' segment files

    @property
    def head_rows(self) -> dict[int, list[int]]:
        return {k: v.head_rows for k, v in self.layers.items()}

    @property
    def head_offsets(self) -> dict[int, list[int]]:
        return {k: v.head_offsets for k, v in self.layers.items()}

    @property
    def logical_bytes(self) -> int:
        return sum(v.logical_bytes for v in self.layers.values())

    @property
    def disk_bytes(self) -> int:
        return sum(v.disk_bytes for v in self.layers.values())

    def to_dict(self) -> dict:
        layers = {
            str(k): {
                "rows": v.rows,
                "dim": self.dim,
                "dtype": self.dtype,
                "chunk_rows": v.chunk_rows,
                "chunks_total": v.chunks_total,
                "chunks_written": v.chunks_written,
                "head_rows": v.head_rows,
                "head_offsets": v.head_offsets,
                "logical_bytes": v.logical_bytes,
                "disk_bytes": v.disk_bytes,
            }
            for k, v in self.layers.items()
        }
        return {
            "path": self.path,
            "format_version": self.format_version,
            "layout": self.layout.to_dict(),
            "vocab_fingerprint": self.vocab_fingerprint,
            "dim": self.dim,
            "dtype": self.dtype,
            "storage_dtype": self.storage_dtype,
            "row_width": self.row_width,
            "row_bytes": self.row_bytes,
            "chunk_rows": self.chunk_rows,
            "compressor": self.compressor,
            "init": self.init,
            "lazy": self.lazy,
            "status": self.status,
            "layers": layers,
            "logical_bytes": self.logical_bytes,
            "disk_bytes": self.disk_bytes,
            "commits": {
                "count": self.commits,
                "rows": self.commit_rows,
                "bytes": self.commit_bytes,
            },
        } | ({"sources": self.sources} if self.sources else {})


def table_info(path: Path, meta: TableMeta, manifest: dict) -> TableInfo:
    layers = {}
    for layer_id, layer in meta.layers.items():
        written = manifest.get(layer_id, {})
        layers[layer_id] = LayerInfo(
            rows=layer.rows,
            chunk_rows=meta.chunk_rows,
            chunks_total=layer.n_chunks(meta.chunk_rows),
            chunks_written=len(written),
            head_rows=list(layer.head_rows),
            head_offsets=list(layer.head_offsets),
            logical_bytes=layer.rows * meta.row_bytes,
            disk_bytes=sum(int(entry[1]) for entry in written.values()),
        )
    return TableInfo(
        path=str(path),
        format_version=meta.format_version,
        layout=meta.layout,
        vocab_fingerprint=meta.vocab_fingerprint,
        dim=meta.dim,
        dtype=meta.dtype,
        storage_dtype=str(meta.storage_dtype),
        row_width=meta.row_width,
        row_bytes=meta.row_bytes,
        chunk_rows=meta.chunk_rows,
        compressor=meta.compressor,
        init=meta.init.to_dict(),
        lazy=meta.lazy,
        status=meta.status,
        layers=layers,
        sources=meta.sources,
    )
