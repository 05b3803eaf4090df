"""Segment files: the rows one commit wrote to one layer (``edits/segments/<commit>-<layer>.seg``).

A segment is written once and never changed. Its bytes, little-endian::

    b"ENGRSEG1"  u32 header length  JSON header  zero padding to 64 bytes
    ids   int64 [n]              sorted, unique row ids of the layer
    rows  storage dtype [n, w]   their stored rows (what ``Table.gather`` returns)
    side columns, each [n, width] of its own dtype (optional: moments, a float32 master copy)

every array 64-byte aligned, so a reader maps the file once and views the arrays in place. The
header names the layer, the row count, the row width and storage dtype and each array's offset;
the commit's record in the log holds the file's size and CRC-32 (:func:`write_segment` returns
them), so ``verify --deep`` and a reader that checks can tell a damaged segment from a good one.
"""

from __future__ import annotations

import json
import mmap
import os
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ...errors import EngramError

MAGIC = b"ENGRSEG1"
ALIGN = 64
WRITE_BLOCK_BYTES = 16 << 20  # arrays are written (and checksummed) in blocks this size


def _aligned(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


@dataclass(frozen=True)
class SegmentFile:
    """What the log records of a written segment: its file name, rows, size and CRC-32."""

    name: str
    rows: int
    size: int
    crc32: int

    def to_dict(self) -> dict:
        return {"name": self.name, "rows": self.rows, "size": self.size, "crc32": self.crc32}

    @classmethod
    def from_dict(cls, data: dict) -> SegmentFile:
        return cls(str(data["name"]), int(data["rows"]), int(data["size"]), int(data["crc32"]))


def _layout(
    layer_id: int, n: int, columns: list[tuple[str, np.dtype, int]]
) -> tuple[bytes, list[int]]:
    """The header bytes (padded) and each column's offset (ids first)."""
    offsets, spec = [], {}
    body = {"layer": layer_id, "n": n, "columns": spec}
    for _ in range(2):  # offsets depend on the header size, which depends on the offsets
        start = _aligned(len(MAGIC) + 4 + len(json.dumps(body)) + 64)
        offsets, at = [], start
        for name, dtype, width in columns:
            offsets.append(at)
            spec[name] = {"dtype": dtype.str, "width": width, "offset": at}
            at = _aligned(at + n * width * dtype.itemsize)
    header = json.dumps(body).encode()
    prefix = MAGIC + struct.pack("<I", len(header)) + header
    assert len(prefix) <= offsets[0]
    return prefix + b"\0" * (offsets[0] - len(prefix)), offsets


def write_segment(
    path: Path, layer_id: int, ids: np.ndarray, rows: np.ndarray, side: dict | None = None
) -> SegmentFile:
    """Write a segment file (sorted unique ``ids``, their ``rows``, optional side columns) and
    fsync it; returns its record. The caller makes it visible (the log) or removes it."""
    ids = np.ascontiguousarray(ids, dtype="<i8")
    n = ids.size
    arrays = [("ids", ids.reshape(n, 1)), ("rows", np.ascontiguousarray(rows))]
    for name, values in (side or {}).items():
        values = np.ascontiguousarray(values)
        arrays.append((str(name), values.reshape(n, -1)))
    for name, values in arrays:
        if values.shape[0] != n:
            raise EngramError(f"segment column {name} has {values.shape[0]} rows, not {n}")
    columns = [
        (name, values.dtype, values.shape[1], lambda a, b, v=values: v[a:b])
        for name, values in arrays
    ]
    return write_segment_columns(path, layer_id, n, columns)


def write_segment_columns(
    path: Path, layer_id: int, n: int, columns: list[tuple[str, np.dtype, int, Callable]]
) -> SegmentFile:
    """Write a segment file whose columns are produced block by block, and fsync it.

    ``columns`` are ``(name, dtype, width, produce)``, ids first and rows second; ``produce(
    start, stop)`` returns the column's rows ``[start, stop)`` (``[stop - start, width]``). They
    are asked for in order, ``WRITE_BLOCK_BYTES`` at a time, so a segment of any size is written
    in O(block) memory (what compaction does); the bytes are those :func:`write_segment` writes
    for the same rows.
    """
    layout_columns = [(name, np.dtype(dtype).newbyteorder("<"), w) for name, dtype, w, _ in columns]
    prefix, offsets = _layout(layer_id, n, layout_columns)
    crc, size = 0, 0
    with open(path, "wb") as handle:

        def put(data) -> None:
            nonlocal crc, size
            view = memoryview(data).cast("B")
            handle.write(view)
            crc = zlib.crc32(view, crc)
            size += view.nbytes

        put(prefix)
        for (name, dtype, width, produce), offset in zip(columns, offsets, strict=True):
            put(b"\0" * (offset - size))
            little = np.dtype(dtype).newbyteorder("<")
            per_block = max(1, WRITE_BLOCK_BYTES // max(1, width * little.itemsize))
            for start in range(0, n, per_block):
                stop = min(n, start + per_block)
                block = np.asarray(produce(start, stop))
                if block.shape[0] != stop - start:
                    raise EngramError(
                        f"segment column {name} gave {block.shape[0]} rows, not {stop - start}"
                    )
                put(np.ascontiguousarray(block.astype(little, copy=False).reshape(-1, width)))
        handle.flush()
        os.fsync(handle.fileno())
    return SegmentFile(Path(path).name, n, size, crc & 0xFFFFFFFF)


class Segment:
    """A segment file mapped for reading: ``ids`` (sorted int64) and ``rows``, views of the map.

    Opening checks the magic, the header and the size against the log's record; ``check_crc``
    also re-reads every byte (what ``verify --deep`` does). Any fault is an :class:`EngramError`
    naming the file, the commit and what to do.
    """

    def __init__(self, source, record: SegmentFile, *, commit: str, check_crc: bool = False):
        """``source``: the file's :class:`~pathlib.Path` (memory-mapped) or its bytes (fetched
        from an object store)."""
        self.record, self.commit = record, commit
        self._crc_checked = False
        self.path = source if isinstance(source, Path) else None
        where = f"segment {self.path or record.name} of commit {commit}"
        self.where = where
        if self.path is None:
            self._map = source
            size = len(source)
        else:
            try:
                with open(self.path, "rb") as handle:
                    size = os.fstat(handle.fileno()).st_size
                    self._map = (
                        mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) if size else b""
                    )
            except FileNotFoundError:
                raise EngramError(f"{where} is missing; {damaged_advice(commit)}") from None
            except OSError as exc:
                raise EngramError(f"cannot read {where}: {exc.strerror or exc}") from None
        if size != record.size:
            raise EngramError(
                f"{where} is damaged: {size} bytes, the log says {record.size} (truncated?); "
                f"{damaged_advice(commit)}"
            )
        if check_crc:
            self.check_crc()
        self.columns = self._parse_header(where)
        self.ids = self.column("ids").reshape(-1)
        self.rows = self.column("rows")

    def _parse_header(self, where: str) -> dict:
        data = self._map
        try:
            if bytes(data[:8]) != MAGIC:
                raise ValueError("not a segment file")
            (length,) = struct.unpack("<I", data[8:12])
            doc = json.loads(bytes(data[12 : 12 + length]))
            n = int(doc["n"])
            columns = {}
            for name, spec in doc["columns"].items():
                dtype = np.dtype(spec["dtype"])
                width, offset = int(spec["width"]), int(spec["offset"])
                if offset % ALIGN or offset + n * width * dtype.itemsize > len(data):
                    raise ValueError(f"column {name} lies outside the file")
                columns[name] = (dtype, width, offset, n)
            if n != self.record.rows or "ids" not in columns or "rows" not in columns:
                raise ValueError(f"{n} rows, the log says {self.record.rows}")
        except (ValueError, KeyError, TypeError, struct.error) as exc:
            raise EngramError(
                f"{where} is damaged ({exc}); {damaged_advice(self.commit)}"
            ) from None
        return columns

    def check_crc(self) -> None:
        """Re-read every byte and compare the CRC-32 with the log's (once per handle)."""
        if self._crc_checked:
            return
        if crc32_of_map(self._map) != self.record.crc32:
            raise EngramError(
                f"{self.where} is damaged: its checksum does not match the log; "
                f"{damaged_advice(self.commit)}"
            )
        self._crc_checked = True

    def column(self, name: str) -> np.ndarray:
        """A column ``[n, width]`` as a read-only view of the map."""
        dtype, width, offset, n = self.columns[name]
        return np.frombuffer(self._map, dtype=dtype, count=n * width, offset=offset).reshape(
            n, width
        )

    def close(self) -> None:
        self.ids = self.rows = None
        if isinstance(self._map, mmap.mmap):
            try:
                self._map.close()
            except BufferError:  # a caller still holds a view; the map goes with it
                pass


def crc32_of_map(data) -> int:
    """CRC-32 of a (possibly large) buffer, in blocks."""
    crc, view = 0, memoryview(data).cast("B")
    for start in range(0, view.nbytes, WRITE_BLOCK_BYTES):
        crc = zlib.crc32(view[start : start + WRITE_BLOCK_BYTES], crc)
    return crc & 0xFFFFFFFF


def damaged_advice(commit: str) -> str:
    return (
        f"run engramctl verify --deep to list the damage, or engramctl revert --to the commit "
        f"before {commit} to drop it"
    )


__all__ = [
    "Segment",
    "SegmentFile",
    "write_segment",
    "write_segment_columns",
    "crc32_of_map",
    "MAGIC",
]
