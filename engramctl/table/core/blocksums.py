"""Block checksums: a CRC-32C of every 64 KiB block of every chunk file, checked as rows are read.

The manifest's CRC-32 covers a whole 4 MiB chunk, so checking it means reading the chunk; a cold
gather reads 4 KiB pages. Block checksums let a reader check what it reads at the granularity
of the read: the first time a gather touches a block, the block is read whole and checked;
after that, rows of the block are read page by page. The default block is one page (4 KiB), so
a checked cold read reads exactly what an unchecked one reads; larger blocks (``--block-size
64K``) make the file 16x smaller but the first read of each block 16x larger (measured in
``benchmarks/bench_cold.py``). The file costs 4 bytes per block (0.1% of the table at 4 KiB).

They live beside each layer's array, in ``<layer>/blocks.crc32c`` (old readers ignore the file):
a 32-byte header (magic, block size, blocks per chunk, chunks, chunk size) and one record per
chunk of ``2 + blocks_per_chunk`` little-endian uint32: ``present``, the chunk's manifest CRC-32
(the *tag*) and the block CRC-32Cs. A record is used only while its tag equals the manifest's
CRC-32 of the chunk, so a chunk rewritten without its record (an older engramctl, a crash
between the two writes) falls back to the whole-chunk check instead of failing. ``engramctl
verify --add-block-checksums`` writes the file (:func:`write_block_sums`); a chunk rewrite updates
its record in place (:func:`update_block_record`).

CRC-32C (Castagnoli, the checksum of iSCSI, ext4 and Btrfs) is computed by a parallel numba
kernel (slicing-by-8), many blocks per call; :func:`crc32c_reference` is the bitwise
specification and ``google_crc32c`` the independent oracle of the tests.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..._numba import njit
from ...errors import EngramError, UsageError
from .meta import TableMeta
from .store import TableStore

BLOCK_BYTES = 4 << 10  # a page: the first read of a row reads and checks just what it needs
MAX_BLOCK_BYTES = 1 << 20
BLOCKS_NAME = "blocks.crc32c"
MAGIC = b"ENGRBLK1"
HEADER = struct.Struct("<8sIIIQ4x")  # magic, block bytes, blocks/chunk, chunks, chunk bytes
_POLY = 0x82F63B78  # CRC-32C, reflected


def _tables() -> np.ndarray:
    table = np.zeros((8, 256), dtype=np.uint32)
    for i in range(256):
        crc = i
        for _ in range(8):
            crc = (crc >> 1) ^ (_POLY if crc & 1 else 0)
        table[0, i] = crc
    for k in range(1, 8):
        prev = table[k - 1]
        table[k] = (prev >> 8) ^ table[0][prev & 0xFF]
    return table


TABLES = _tables()


def crc32c_reference(data) -> int:
    """Bitwise CRC-32C of a bytes-like object (the specification).

    >>> hex(crc32c_reference(b"123456789"))
    '0xe3069283'
    """
    crc = 0xFFFFFFFF
    for byte in bytes(data):
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (_POLY if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


@njit(cache=True, inline="always")
def _crc32c_span(tables, data, start, stop):
    crc = np.uint32(0xFFFFFFFF)
    i = start
    while i + 8 <= stop:
        lo = crc ^ (
            np.uint32(data[i])
            | (np.uint32(data[i + 1]) << 8)
            | (np.uint32(data[i + 2]) << 16)
            | (np.uint32(data[i + 3]) << 24)
        )
        crc = (
            tables[7, lo & 0xFF]
            ^ tables[6, (lo >> 8) & 0xFF]
            ^ tables[5, (lo >> 16) & 0xFF]
            ^ tables[4, lo >> 24]
            ^ tables[3, data[i + 4]]
            ^ tables[2, data[i + 5]]
            ^ tables[1, data[i + 6]]
            ^ tables[0, data[i + 7]]
        )
        i += 8
    while i < stop:
        crc = tables[0, (crc ^ data[i]) & 0xFF] ^ (crc >> 8)
        i += 1
    return crc ^ np.uint32(0xFFFFFFFF)


def _hardware_crc() -> bool:
    """Whether the CPU has SSE4.2 (the ``crc32`` instruction) for numba's code."""
    try:
        from llvmlite import binding

        return bool(binding.get_host_cpu_features().get("sse4.2", False))
    except Exception:  # noqa: BLE001 - any failure: the portable kernel
        return False


def _crc_intrinsic():
    from llvmlite import ir
    from numba import types
    from numba.core import cgutils
    from numba.extending import intrinsic

    @intrinsic
    def crc32_u64(typingctx, crc, value):
        """The SSE4.2 ``crc32`` of one 64-bit word."""

        def codegen(context, builder, signature, args):
            fnty = ir.FunctionType(ir.IntType(64), [ir.IntType(64), ir.IntType(64)])
            fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.x86.sse42.crc32.64.64")
            return builder.call(fn, args)

        return types.uint64(types.uint64, types.uint64), codegen

    return crc32_u64


HARDWARE = _hardware_crc()
if HARDWARE:
    _crc32_u64 = _crc_intrinsic()

    @njit(cache=True)
    def _crc32c_spans(tables, data, starts, stops, out):
        """Hardware CRC-32C: 8 bytes per instruction, bytes before/after the words by table.
        Serial: ~8 GB/s per call, cheaper than waking a thread pool for a few blocks."""
        words = data[: data.shape[0] // 8 * 8].view(np.uint64)
        for k in range(starts.shape[0]):
            crc = np.uint32(0xFFFFFFFF)
            i, stop = starts[k], stops[k]
            while i < stop and i % 8 != 0:
                crc = tables[0, (crc ^ data[i]) & 0xFF] ^ (crc >> 8)
                i += 1
            wide = np.uint64(crc)
            for w in range(i // 8, stop // 8):
                wide = _crc32_u64(wide, words[w])
            crc = np.uint32(wide)
            i = max(i, stop // 8 * 8)
            while i < stop:
                crc = tables[0, (crc ^ data[i]) & 0xFF] ^ (crc >> 8)
                i += 1
            out[k] = crc ^ np.uint32(0xFFFFFFFF)

else:

    @njit(cache=True)
    def _crc32c_spans(tables, data, starts, stops, out):
        """Portable CRC-32C (slicing-by-8), ~0.5 GB/s."""
        for k in range(starts.shape[0]):
            out[k] = _crc32c_span(tables, data, starts[k], stops[k])


def crc32c_spans(data: np.ndarray, starts: np.ndarray, stops: np.ndarray) -> np.ndarray:
    """CRC-32C of ``data[starts[k]:stops[k]]`` for every ``k`` (uint32), in parallel."""
    data = np.ascontiguousarray(data).reshape(-1).view(np.uint8)
    starts = np.asarray(starts, dtype=np.int64)
    stops = np.asarray(stops, dtype=np.int64)
    if starts.size and (starts.min() < 0 or stops.max() > data.size or (stops < starts).any()):
        raise EngramError("checksum spans must lie inside the buffer")
    out = np.empty(starts.size, dtype=np.uint32)
    if starts.size:
        _crc32c_spans(TABLES, data, starts, stops, out)
    return out


def block_crcs(data, block_bytes: int = BLOCK_BYTES) -> np.ndarray:
    """CRC-32C of every ``block_bytes`` block of ``data`` (the last one may be short)."""
    buf = np.frombuffer(memoryview(data).cast("B"), dtype=np.uint8)
    starts = np.arange(0, buf.size, block_bytes, dtype=np.int64)
    return crc32c_spans(buf, starts, np.minimum(starts + block_bytes, buf.size))


# ------------------------------------------------------------------------- the file
def parse_block_size(text) -> int:
    """Bytes of a block size such as ``4K``, ``64K``, ``1M`` or ``4096``: a multiple of 4 KiB,
    at most 1 MiB (a :class:`~engramctl.errors.UsageError` says so otherwise)."""
    raw = str(text).strip().upper().removesuffix("IB").removesuffix("B")
    scale = {"K": 1 << 10, "M": 1 << 20}.get(raw[-1:], 1)
    digits = raw[:-1] if scale > 1 else raw
    if not digits.isdigit() or not (
        4096 <= (size := int(digits) * scale) <= MAX_BLOCK_BYTES and size % 4096 == 0
    ):
        raise UsageError(
            f"block size {text!r} is not a multiple of 4 KiB between 4K and 1M (e.g. 4K, 64K)"
        )
    return size


def blocks_key(meta: TableMeta, layer_id: int) -> str:
    """The store key of a layer's block checksums."""
    return f"{meta.layer(layer_id).array}/{BLOCKS_NAME}"


def blocks_per_chunk(meta: TableMeta, block_bytes: int = BLOCK_BYTES) -> int:
    return -(-meta.chunk_bytes // block_bytes)


def _read_ahead(path) -> None:
    """Ask the kernel to read a whole (small) file into the page cache in the background."""
    if not hasattr(os, "posix_fadvise"):
        return
    try:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_WILLNEED)
        finally:
            os.close(fd)
    except OSError:  # advice only
        pass


def read_sums_header(path, header: struct.Struct, fix: str) -> tuple[int, tuple] | None:
    """``(file size, header fields)`` of a block-checksum file, ``None`` if there is none; a file
    too short for its header or unreadable is refused naming it and ``fix``."""
    try:
        size = os.path.getsize(path)
    except OSError:
        return None
    try:
        with open(path, "rb") as handle:
            return size, header.unpack(handle.read(header.size))
    except (OSError, struct.error):
        raise EngramError(f"block checksums {path} are unreadable or cut short; {fix}") from None


class BlockSums:
    """The block checksums of one layer, memory-mapped (they are small: 4 bytes per block).

    :meth:`for_chunk` gives a chunk's block CRC-32Cs only while its record's tag equals the
    manifest's CRC-32 of the chunk; ``None`` otherwise (check the whole chunk instead).
    """

    def __init__(self, records: np.ndarray, block_bytes: int):
        self.records, self.block_bytes = records, block_bytes
        self.blocks_per_chunk = records.shape[1] - 2

    @classmethod
    def open(cls, store: TableStore, meta: TableMeta, layer_id: int) -> BlockSums | None:
        """The layer's block checksums, ``None`` if it has none (or is not a local store). A file
        that does not describe this layer's chunks is refused, naming it and the fix."""
        if not store.supports_mmap:
            return None
        path = store.location_of(blocks_key(meta, layer_id))
        fix = "run engramctl verify --add-block-checksums to rewrite it"
        found = read_sums_header(path, HEADER, fix)
        if found is None:
            return None
        size, (magic, block_bytes, per_chunk, chunks, chunk_bytes) = found
        n_chunks = meta.layer(layer_id).n_chunks(meta.chunk_rows)
        if (
            magic != MAGIC
            or chunks != n_chunks
            or chunk_bytes != meta.chunk_bytes
            or block_bytes < 4096
            or per_chunk != -(-chunk_bytes // block_bytes)
            or size != HEADER.size + chunks * (2 + per_chunk) * 4
        ):
            raise EngramError(f"block checksums {path} do not describe layer {layer_id}; {fix}")
        records = np.memmap(
            path, dtype="<u4", mode="r", offset=HEADER.size, shape=(chunks, 2 + per_chunk)
        )
        _read_ahead(path)  # one sequential read now, not a page fault per chunk later
        return cls(np.asarray(records), block_bytes)  # a plain view: cheap to index

    def for_chunk(self, chunk_index: int, chunk_crc: int) -> np.ndarray | None:
        record = self.records[chunk_index]
        if record[0] != 1 or int(record[1]) != int(chunk_crc):
            return None
        return np.asarray(record[2:])

    @property
    def covered(self) -> int:
        """Chunks with a record."""
        return int((np.asarray(self.records[:, 0]) == 1).sum())


def write_block_sums(
    store: TableStore,
    meta: TableMeta,
    layer_id: int,
    records: dict[int, tuple[int, np.ndarray]],
    block_bytes: int = BLOCK_BYTES,
) -> None:
    """Write a layer's block checksums whole (temporary file + rename): ``records`` maps a chunk
    to ``(its manifest CRC-32, its block CRC-32Cs)``."""
    n_chunks = meta.layer(layer_id).n_chunks(meta.chunk_rows)
    per_chunk = blocks_per_chunk(meta, block_bytes)
    table = np.zeros((n_chunks, 2 + per_chunk), dtype="<u4")
    for chunk_index, (tag, crcs) in records.items():
        table[chunk_index, 0] = 1
        table[chunk_index, 1] = tag
        table[chunk_index, 2:] = crcs
    header = HEADER.pack(MAGIC, block_bytes, per_chunk, n_chunks, meta.chunk_bytes)
    store.write_bytes(blocks_key(meta, layer_id), header + table.tobytes())


def update_block_record(
    store: TableStore, meta: TableMeta, layer_id: int, chunk_index: int, tag: int, data
) -> None:
    """After a chunk rewrite: its record in place, if the layer has block checksums (one
    ``pwrite``; a reader that sees the old record finds its tag stale and checks the chunk)."""
    if not store.supports_mmap or meta.compressor != "none":
        return
    try:
        sums = BlockSums.open(store, meta, layer_id)
    except EngramError:
        return  # a damaged file: verify reports it; the whole-chunk check still holds
    if sums is None:
        return
    record = np.empty(2 + sums.blocks_per_chunk, dtype="<u4")
    record[0], record[1] = 1, tag
    record[2:] = block_crcs(data, sums.block_bytes)
    path = store.location_of(blocks_key(meta, layer_id))
    fd = os.open(path, os.O_WRONLY)
    try:
        os.pwrite(fd, record.tobytes(), HEADER.size + chunk_index * record.nbytes)
    finally:
        os.close(fd)


def chunk_block_crcs(meta: TableMeta, data, *, local: bool = True) -> np.ndarray | None:
    """The block CRC-32Cs of a chunk being written (``None`` where the table keeps none: a
    remote store (``local=False``) or compressed chunks, which are read and checked whole)."""
    if not local or meta.compressor != "none":
        return None
    if memoryview(data).nbytes != meta.chunk_bytes:
        return None
    return block_crcs(data)


def merge_block_sums(
    store: TableStore, meta: TableMeta, records: dict[int, dict[int, tuple[int, np.ndarray]]]
) -> None:
    """Add the records of chunks just written (``{layer: {chunk: (tag, block CRC-32Cs)}}``,
    default block size) to each layer's file, keeping the records already there (a resumed
    init or import); a file of another block size, or damaged, is rewritten with the new ones."""
    for layer_id, new in records.items():
        if not new:
            continue
        merged: dict[int, tuple[int, np.ndarray]] = {}
        try:
            old = BlockSums.open(store, meta, layer_id)
        except EngramError:
            old = None
        if old is not None and old.block_bytes == BLOCK_BYTES:
            for c in np.flatnonzero(np.asarray(old.records[:, 0]) == 1).tolist():
                merged[c] = (int(old.records[c, 1]), np.array(old.records[c, 2:]))
        merged.update(new)
        write_block_sums(store, meta, layer_id, merged)


# ---------------------------------------------------------------- adding them to a table
@dataclass(frozen=True)
class BlockSumsReport:
    """Outcome of :func:`add_block_checksums`: chunks recorded per layer and chunks left out
    because they fail their manifest checksum (damage: those keep the whole-chunk check)."""

    path: str
    block_bytes: int
    chunks_recorded: int
    bytes_read: int
    damaged: tuple[str, ...]
    linked_layers: int = 0  # a linked table: layers whose tensors' block checksums were recorded


def add_block_checksums(
    path,
    *,
    block_bytes: int | str = BLOCK_BYTES,
    progress: Callable[[int, int], None] | None = None,
) -> BlockSumsReport:
    """Record the block checksums of every written chunk of a local table of uncompressed
    chunks (``engramctl verify --add-block-checksums``).

    Each chunk is read once, checked against the manifest's CRC-32 (a chunk that fails gets no
    record and is reported in ``damaged``), and its ``block_bytes`` blocks' CRC-32Cs are written
    to ``<layer>/blocks.crc32c`` (replaced whole, atomically). Holds the writer lock, so no
    chunk changes meanwhile. ``progress`` is called with ``(bytes read, bytes to read)``.
    """
    from .codec import chunk_key, crc32_of
    from .lock import WriterLock
    from .manifest import read_group
    from .store import open_store

    block_bytes = parse_block_size(block_bytes)
    store = open_store(path)
    meta, _ = read_group(store)
    if meta.linked:
        raise UsageError(
            f"{store.url} is linked to a checkpoint: its shards are checked by verify --deep; "
            "block checksums are for tables of chunk files"
        )
    if not store.supports_mmap or meta.compressor != "none":
        raise UsageError(
            f"{store.url}: block checksums are for local tables of uncompressed chunks (this "
            "table's chunks are read and checked whole)"
        )
    store.check_writable()
    lock = WriterLock(store.location).acquire()
    try:
        meta, manifest = read_group(store)  # re-read under the lock
        total = sum(int(e[1]) for chunks in manifest.values() for e in chunks.values())
        done, recorded, damaged = 0, 0, []
        for layer_id in meta.layers:
            records = {}
            for chunk_index, entry in sorted(manifest.get(layer_id, {}).items()):
                key = chunk_key(layer_id, chunk_index)
                try:
                    data = store.read_bytes(key)
                except OSError as exc:
                    damaged.append(f"chunk {chunk_index} of layer {layer_id}: unreadable ({exc})")
                    continue
                done += len(data)
                if len(data) != entry[1] or crc32_of(data) != entry[0]:
                    damaged.append(
                        f"chunk {chunk_index} of layer {layer_id} ({store.where(key)}) fails its "
                        "manifest checksum: no block checksums recorded for it"
                    )
                elif len(data) == meta.chunk_bytes:
                    records[chunk_index] = (int(entry[0]), block_crcs(data, block_bytes))
                    recorded += 1
                if progress:
                    progress(done, total)
            write_block_sums(store, meta, layer_id, records, block_bytes)
    finally:
        lock.release()
    return BlockSumsReport(store.url, block_bytes, recorded, done, tuple(damaged))


class BlockSumsCheck:
    """What ``verify`` says of a table's block checksums: each layer's file must describe the
    layer (:meth:`problems`), and with ``--deep`` every record whose tag matches a chunk must
    hold that chunk's block CRC-32Cs (:meth:`check_chunk`, given the bytes verify read)."""

    FIX = "engramctl verify --add-block-checksums rewrites them"

    def __init__(self, store: TableStore, meta: TableMeta):
        self.store, self.meta = store, meta
        self.sums: dict[int, BlockSums | None] = {}
        self.errors: list[str] = []
        for layer_id in meta.layers:
            try:
                self.sums[layer_id] = BlockSums.open(store, meta, layer_id)
            except EngramError as exc:
                self.errors.append(str(exc))
                self.sums[layer_id] = None

    def check_chunk(self, layer_id: int, chunk_index: int, crc: int, data) -> str | None:
        """A problem line if the chunk's record (current tag) disagrees with its bytes."""
        sums = self.sums.get(layer_id)
        record = sums.for_chunk(chunk_index, crc) if sums is not None else None
        if record is None or len(data) != self.meta.chunk_bytes:
            return None
        bad = np.flatnonzero(block_crcs(data, sums.block_bytes) != record)
        if not bad.size:
            return None
        return (
            f"chunk {chunk_index} of layer {layer_id}: its block checksums disagree with it "
            f"(block {int(bad[0])}, {bad.size} blocks) although it passes its manifest "
            f"checksum; {self.FIX}"
        )


__all__ = [
    "BLOCK_BYTES",
    "BlockSumsReport",
    "add_block_checksums",
    "BLOCKS_NAME",
    "BlockSums",
    "BlockSumsCheck",
    "block_crcs",
    "chunk_block_crcs",
    "merge_block_sums",
    "blocks_key",
    "blocks_per_chunk",
    "crc32c_reference",
    "parse_block_size",
    "read_sums_header",
    "crc32c_spans",
    "update_block_record",
    "write_block_sums",
]
