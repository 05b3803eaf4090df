"""Chunk files: their keys, their size, their checksum and their codec, and init-valued chunks.

zarr's default v3 chunk key encoding puts chunk ``k`` of layer ``L`` at ``layer_<L>/c/<k>/0``
(:func:`chunk_key`). A chunk file holds ``chunk_rows`` stored rows (the last chunk of a layer is
zero padded to full size), raw little-endian or zstd-compressed; its CRC-32 is recorded in the
manifest. A chunk never written reads as its deterministic init values (:func:`init_chunk_rows`).
"""

from __future__ import annotations

import zlib

import numpy as np

from ...errors import EngramError
from .dtypes import encode_rows, row_bytes
from .meta import TableMeta, array_name
from .rowinit import init_values

ZSTD_LEVEL = 3
TARGET_CHUNK_BYTES = 4 * 2**20  # a chunk of a few MiB: one mmap, one checksum, one rename


def default_chunk_rows(dim: int, dtype: str, rows: int | None = None) -> int:
    """Rows per chunk so that a chunk is about 4 MiB (a multiple of 256 rows when large).

    >>> default_chunk_rows(256, "float16"), default_chunk_rows(256, "float8_e4m3fn")
    (8192, 15872)
    """
    per_chunk = max(1, TARGET_CHUNK_BYTES // row_bytes(dim, dtype))
    if per_chunk >= 512:
        per_chunk -= per_chunk % 256
    return min(per_chunk, rows) if rows else per_chunk


def chunk_key(layer_id: int, chunk_index: int) -> str:
    """Path of a chunk file inside the table (zarr v3 default key encoding, ``/`` separator).

    >>> chunk_key(15, 3)
    'layer_15/c/3/0'
    """
    return f"{array_name(layer_id)}/c/{chunk_index}/0"


def crc32_of(data) -> int:
    """CRC-32 (zlib) of a bytes-like object, as an unsigned int."""
    return zlib.crc32(memoryview(data).cast("B")) & 0xFFFFFFFF


def encode_chunk(meta: TableMeta, rows: np.ndarray) -> bytes | np.ndarray:
    """Bytes of a chunk file from its stored rows ``[chunk_rows, row_width]`` (full size)."""
    rows = np.ascontiguousarray(rows, dtype=meta.storage_dtype.newbyteorder("<"))
    if meta.compressor == "zstd":
        import zstandard

        return zstandard.ZstdCompressor(level=ZSTD_LEVEL).compress(rows.tobytes())
    return rows


def decode_chunk(meta: TableMeta, data, *, where: str) -> np.ndarray:
    """Stored rows ``[chunk_rows, row_width]`` from a chunk file's bytes."""
    if meta.compressor == "zstd":
        import zstandard

        try:
            data = zstandard.ZstdDecompressor().decompress(
                bytes(data), max_output_size=meta.chunk_bytes
            )
        except zstandard.ZstdError as exc:
            raise EngramError(f"{where} is damaged: it does not decompress ({exc})") from exc
    if len(data) != meta.chunk_bytes:
        raise EngramError(
            f"{where} is damaged: {len(data)} bytes instead of {meta.chunk_bytes}; "
            "run engramctl verify"
        )
    dtype = meta.storage_dtype.newbyteorder("<")
    return np.frombuffer(data, dtype=dtype).reshape(meta.chunk_rows, meta.row_width)


def init_chunk_rows(
    meta: TableMeta, layer_id: int, chunk_index: int, *, parallel: bool = True
) -> np.ndarray:
    """Stored rows of a chunk as its init values (rows past the layer end are zero padding)."""
    start, stop = meta.chunk_span(layer_id, chunk_index)
    values = np.zeros((meta.chunk_rows, meta.dim), dtype=np.float32)
    init_values(
        meta.init,
        layer_id,
        np.arange(start, stop, dtype=np.int64),
        meta.dim,
        out=values[: stop - start],
        parallel=parallel,
    )
    stored = encode_rows(values, meta.dtype)
    stored[stop - start :] = 0
    return stored
