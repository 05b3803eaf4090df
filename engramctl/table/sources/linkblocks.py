"""Block checksums of a linked table's tensors: each 4 KiB of a checkpoint shard, checked as read.

A linked table reads its rows from the checkpoint's shards, which engramctl does not own: a shard
rewritten in place (same size and mtime) would otherwise be served. Each linked layer may keep,
beside its array (``<layer>/link.crc32c``), the CRC-32C of every ``BLOCK_BYTES`` block of its
weight tensor and of its scale tensor, counted from the tensor's first byte. A gather checks each
block the first time it touches it (the whole block is read and checked before any row of it is
served), then trusts it for the life of the open table, as chunk files do
(:mod:`engramctl.table.core.blocksums`).

The file is a 64-byte header (magic, block size, blocks of each tensor, and the sha256 of what
the link recorded of the two tensors: file, offset, shape, size and header hash) and the uint32
CRCs of the weight blocks then the scale blocks. A file whose identity differs from the link's
record is refused, naming the fix. They are written at link time when the tensors are small
enough to read at once (:data:`LINK_TIME_BYTES`; always for a URL), else by ``engramctl verify
--deep`` or ``verify --add-block-checksums`` (:func:`record_link_sums`). Reading the tensors
goes through a ``fetch`` callable so that local shards (the parallel reader) and remote objects
(:mod:`engramctl.table.sources.remote`) share the checks.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from ..._files import write_file_atomic
from ...errors import EngramError
from ..core.blocksums import block_crcs, crc32c_spans, read_sums_header
from ..core.fp8_check import NAN_SCALE
from .coldread import ParallelReader, ShortRead, open_random, read_spans

BLOCK_BYTES = 4 << 10
LINK_BLOCKS_NAME = "link.crc32c"
LINK_TIME_BYTES = 2 << 30  # a link reads tensors up to this size at once to record their sums
MAGIC = b"ENGRLNK1"
HEADER = struct.Struct("<8sI4xQQ32s")  # magic, block bytes, weight blocks, scale blocks, identity
PARTS = ("weight", "scale")
STREAM_BYTES = 64 << 20  # bytes per read while recording

# fetch(part, tensor offsets, nbytes) -> rounds of (staging, units, sources), as read_spans yields
Fetch = Callable[[int, np.ndarray, np.ndarray], Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]]


def link_blocks_path(table_path, meta, layer_id: int) -> Path:
    """Where a linked layer's block checksums live."""
    return Path(table_path) / meta.layer(layer_id).array / LINK_BLOCKS_NAME


def link_identity(sources: dict, layer_id: int) -> bytes:
    """sha256 of what the link recorded of a layer's two tensors (not the files' mtimes)."""
    layer = sources["layers"][str(layer_id)]
    parts = {}
    for part in PARTS:
        entry = layer[part]
        record = sources["files"][entry["file"]]
        parts[part] = {
            **{k: entry[k] for k in ("file", "tensor", "offset", "nbytes", "shape")},
            "size": record["size"],
            "header_sha256": record["header_sha256"],
            **({"etag": record["etag"]} if "etag" in record else {}),
        }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).digest()


def _n_blocks(nbytes: int, block_bytes: int = BLOCK_BYTES) -> int:
    return -(-int(nbytes) // block_bytes)


def record_link_sums(
    table_path,
    meta,
    layer_id: int,
    read: Callable[[int, int, int], bytes],
    progress: Callable[[int], None] | None = None,
) -> Path:
    """Read a linked layer's two tensors whole and write their block checksums (temporary
    file + rename). ``read(part, offset in tensor, nbytes)`` returns the bytes; ``progress`` is
    called with the bytes read. Memory: one ``STREAM_BYTES`` piece and the CRCs (4 bytes per
    4 KiB block)."""
    layer = meta.sources["layers"][str(layer_id)]
    crcs = []
    for p, part in enumerate(PARTS):
        nbytes = int(layer[part]["nbytes"])
        pieces = []
        for at in range(0, nbytes, STREAM_BYTES):
            data = read(p, at, min(STREAM_BYTES, nbytes - at))
            pieces.append(block_crcs(data, BLOCK_BYTES))
            if progress:
                progress(len(data))
        crcs.append(np.concatenate(pieces) if pieces else np.zeros(0, np.uint32))
    header = HEADER.pack(
        MAGIC, BLOCK_BYTES, crcs[0].size, crcs[1].size, link_identity(meta.sources, layer_id)
    )
    path = link_blocks_path(table_path, meta, layer_id)
    body = crcs[0].astype("<u4").tobytes() + crcs[1].astype("<u4").tobytes()
    write_file_atomic(path, header + body)
    return path


def refuse_nan_scales(
    rows: np.ndarray, dim: int, row_ids, start: int, layer_id, where: str
) -> None:
    """Refuse rows whose ue8m0 scale byte is 255 (NaN in E8M0: the row would decode to
    NaN/inf): an import refuses them, so a linked shard holding one changed since linking
    or is damaged. Checks the scale bytes only (8 of 264 per row: cheap). ``where``: the
    tensor and file, for the message."""
    bad = rows[:, dim:] == NAN_SCALE
    if not bad.any():
        return
    i, j = np.unravel_index(int(np.argmax(bad)), bad.shape)
    row = int(row_ids[i]) if row_ids is not None else start + int(i)
    raise EngramError(
        f"row {row} of layer {layer_id}: scale byte {j} is 255 (NaN in E8M0; the row would "
        f"decode to NaN) in {where}; an import refuses such rows, so the shard changed or is "
        "damaged since linking: run engramctl verify --deep, and import the checkpoint again"
    )


def linked_bytes(meta) -> int:
    """Bytes of every linked tensor of a table (what recording their sums reads)."""
    return sum(
        int(layer[part]["nbytes"]) for layer in meta.sources["layers"].values() for part in PARTS
    )


def record_all_link_sums(table_path, meta, reader_of, progress=None) -> int:
    """Record the block checksums of every linked layer; ``reader_of(layer_id)`` gives its
    ``read`` (:func:`local_reader`); ``progress(done, total)`` in bytes. Returns bytes read."""
    total, done = linked_bytes(meta), 0

    def step(n: int) -> None:
        nonlocal done
        done += n
        if progress:
            progress(done, total)

    for layer_id in meta.layers:
        record_link_sums(table_path, meta, layer_id, reader_of(layer_id), step)
    return done


class LinkBlockCheck:
    """The block checksums of one linked layer and which blocks were checked already."""

    def __init__(self, crcs: tuple[np.ndarray, np.ndarray], names: tuple[str, str], nbytes):
        self.crcs, self.names, self.nbytes = crcs, names, tuple(int(n) for n in nbytes)
        self.ok = (np.zeros(crcs[0].size, dtype=bool), np.zeros(crcs[1].size, dtype=bool))
        self.counters = {"blocks_checked": 0}

    @classmethod
    def open(cls, table_path, meta, layer_id: int) -> LinkBlockCheck | None:
        """The layer's block checksums, ``None`` if it has none; a file that does not describe
        the link is refused naming the fix."""
        path = link_blocks_path(table_path, meta, layer_id)
        fix = "run engramctl verify --add-block-checksums to record them again"
        found = read_sums_header(path, HEADER, fix)
        if found is None:
            return None
        size, (magic, block_bytes, n_weight, n_scale, identity) = found
        layer = meta.sources["layers"][str(layer_id)]
        if (
            magic != MAGIC
            or block_bytes != BLOCK_BYTES
            or n_weight != _n_blocks(layer["weight"]["nbytes"])
            or n_scale != _n_blocks(layer["scale"]["nbytes"])
            or size != HEADER.size + 4 * (n_weight + n_scale)
        ):
            raise EngramError(f"block checksums {path} do not describe layer {layer_id}; {fix}")
        if identity != link_identity(meta.sources, layer_id):
            raise EngramError(
                f"block checksums {path} were recorded for another link of layer {layer_id}; {fix}"
            )
        body = np.memmap(path, dtype="<u4", mode="r", offset=HEADER.size)
        names = tuple(
            f"{layer[p]['tensor']} of layer {layer_id} ({layer[p]['file']})" for p in PARTS
        )
        nbytes = (layer["weight"]["nbytes"], layer["scale"]["nbytes"])
        return cls((np.asarray(body[:n_weight]), np.asarray(body[n_weight:])), names, nbytes)

    def ensure_blocks(self, part: int, blocks: np.ndarray, nbytes: int, fetch: Fetch) -> None:
        """Read and check ``blocks`` (sorted, unique) of tensor ``part`` (``nbytes`` long) that
        were not checked yet; raise naming the first that fails."""
        todo = blocks[~self.ok[part][blocks]]
        if not todo.size:
            return
        starts = todo * BLOCK_BYTES
        lengths = np.minimum(starts + BLOCK_BYTES, nbytes) - starts
        for staging, units, sources in fetch(part, starts, lengths):
            got = crc32c_spans(staging, sources, sources + lengths[units])
            bad = np.flatnonzero(got != self.crcs[part][todo[units]])
            if bad.size:
                block = int(todo[units[bad].min()])
                lo = block * BLOCK_BYTES
                hi = min(lo + BLOCK_BYTES, nbytes)
                raise EngramError(
                    f"block {block} (bytes {lo}..{hi - 1}) of {self.names[part]} fails its "
                    "block checksum: the shard changed or is damaged since linking; other blocks "
                    "still serve. Run engramctl verify --deep to list the damage, then restore "
                    "the shard or import the checkpoint again"
                )
            self.ok[part][todo[units]] = True
            self.counters["blocks_checked"] += int(units.size)

    def compare(self, read: Callable[[int, int, int], bytes], progress=None) -> list[str]:
        """Read both tensors whole (``read`` as for :func:`record_link_sums`) and list every
        block whose bytes disagree with its checksum (``verify --deep``), one line per tensor."""
        problems = []
        for part in range(2):
            bad: list[int] = []
            nbytes = self.nbytes[part]
            for at in range(0, nbytes, STREAM_BYTES):
                data = read(part, at, min(STREAM_BYTES, nbytes - at))
                first = at // BLOCK_BYTES
                got = block_crcs(data, BLOCK_BYTES)
                want = self.crcs[part][first : first + got.size]
                bad.extend((first + np.flatnonzero(got != want)).tolist())
                if progress:
                    progress(len(data))
            if bad:
                lo = bad[0] * BLOCK_BYTES
                problems.append(
                    f"block {bad[0]} (bytes {lo}..{min(lo + BLOCK_BYTES, nbytes) - 1}) of "
                    f"{self.names[part]} fails its block checksum ({len(bad)} blocks in all): the "
                    "shard changed since linking; restore it or import the checkpoint again"
                )
        return problems

    def ensure_rows(self, ids: np.ndarray, widths: tuple[int, int], fetch: Fetch) -> None:
        """Check the blocks holding rows ``ids`` of both tensors (``widths``: bytes per row)."""
        ids = np.asarray(ids, dtype=np.int64)
        if not ids.size:
            return
        for part, width in enumerate(widths):
            first = ids * width // BLOCK_BYTES
            last = (ids * width + width - 1) // BLOCK_BYTES
            blocks = np.unique(np.r_[first, last])
            self.ensure_blocks(part, blocks, self.nbytes[part], fetch)

    def ensure_range(self, start: int, stop: int, widths: tuple[int, int], fetch: Fetch) -> None:
        """Check the blocks holding rows ``[start, stop)``."""
        if stop <= start:
            return
        for part, width in enumerate(widths):
            blocks = np.arange(start * width // BLOCK_BYTES, (stop * width - 1) // BLOCK_BYTES + 1)
            self.ensure_blocks(part, blocks, self.nbytes[part], fetch)


class LocalFetch:
    """``fetch`` of a linked layer's local shards: whole blocks read by the parallel reader."""

    def __init__(self, paths: tuple[Path, Path], offsets, sizes, reader: ParallelReader):
        self.paths, self.offsets, self.sizes = paths, offsets, sizes
        self.reader = reader
        self.fds: list[int] | None = None

    def __call__(self, part: int, starts: np.ndarray, lengths: np.ndarray):
        if self.fds is None:
            try:
                self.fds = [open_random(path) for path in self.paths]
            except OSError as exc:
                raise EngramError(
                    f"cannot read linked source {exc.filename}: {exc.strerror or exc}"
                ) from None
        files = np.zeros(starts.size, dtype=np.int64)
        try:
            yield from read_spans(
                self.reader,
                [self.fds[part]],
                files,
                self.offsets[part] + starts,
                lengths,
                [self.sizes[part]],
                self.sizes[part] + 1,
            )
        except ShortRead:
            raise EngramError(
                f"linked source {self.paths[part]} ended early (truncated since linking?); "
                "import the checkpoint again"
            ) from None

    def close(self) -> None:
        for fd in self.fds or ():
            os.close(fd)
        self.fds = None


__all__ = [
    "BLOCK_BYTES",
    "LINK_BLOCKS_NAME",
    "LINK_TIME_BYTES",
    "LinkBlockCheck",
    "LocalFetch",
    "link_blocks_path",
    "link_identity",
    "linked_bytes",
    "record_all_link_sums",
    "refuse_nan_scales",
    "record_link_sums",
]
