"""Linked tables: rows read straight from a checkpoint's safetensors shards, zero-copy.

A table imported with ``--link`` has no chunk files. Its metadata (``sources`` in the
``engramctl`` attribute) records, per layer, the file, absolute byte offset, shape and dtype of the
weight (``[rows, dim]`` e4m3 codes) and scale (``[rows, dim/32]`` ue8m0 bytes) tensors, and per
file its size and the sha256 of its safetensors header. A file beside the table (under the
table's parent directory) is recorded relative to the table, so moving both keeps the link
valid; any other file by its absolute path.

:class:`LinkedLayer` memory-maps the two tensors and gathers rows into the fp8 row layout of a
copied table (``dim`` value bytes, then ``dim/32`` scale bytes): the same bytes a copy returns.
Before mapping, and before every gather, the file's size is compared with the record (a
truncated file would otherwise fault inside the map); the header hash is compared at open.
:class:`LinkedSource` is the row source (:mod:`engramctl.table.sources.base`) of a linked
table: its layers, opened on first use, and the refusal to write.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..._numba import njit, prange
from ...errors import EngramError
from ..core.checkpoint import TensorRef, read_shard_header
from .base import RowSource
from .coldread import ParallelReader
from .linkblocks import PARTS, LinkBlockCheck, LocalFetch, refuse_nan_scales
from .linkedcold import LinkedCold
from .remote import RemoteLinkedLayer, RemoteObject, check_remote_file, is_remote

LINK_MODE, COPY_MODE = "link", "copy"
COPY_HINT = "import the checkpoint without --link to get a table you can write"


def source_name(file: Path, table_path: Path) -> str:
    """How a link records ``file``: relative to the table when beside it, else absolute; a URL
    as it is."""
    if is_remote(file):
        return str(file)
    file = Path(file).resolve()
    table = Path(table_path).resolve()
    if file.is_relative_to(table.parent):
        return os.path.relpath(file, table)
    return str(file)


def resolve_source(name: str, table_path) -> Path:
    """The file a recorded source name points at (relative names count from the table); a URL
    is returned as it is (a string)."""
    if is_remote(name):
        return name
    path = Path(name)
    return path if path.is_absolute() else Path(os.path.normpath(Path(table_path) / path))


def sources_record(
    tensors: dict[int, tuple[TensorRef, TensorRef]],
    table_path,
    *,
    mode: str,
    checkpoint: Path,
    remote: dict | None = None,
) -> dict:
    """The ``sources`` metadata of a table linked to (or copied from) ``tensors``; ``remote``
    (a checkpoint at a URL): ``identities`` of its shards (size and ETag), the
    ``storage_options`` to record (no secrets) and the ``cache_dir`` of fetched blocks."""
    remote = remote or {}
    files: dict[str, dict] = {}
    layers: dict[str, dict] = {}
    for layer_id, pair in tensors.items():
        layer = {}
        for part, ref in zip(("weight", "scale"), pair, strict=True):
            name = source_name(ref.path, table_path)
            files[name] = {
                "size": ref.file_size,
                "header_sha256": ref.header_sha256,
                "mtime_ns": None if is_remote(name) else _mtime_ns(ref.path),
            }
            etag = remote.get("identities", {}).get(name, {}).get("etag")
            if etag:
                files[name]["etag"] = etag
            layer[part] = {
                "file": name,
                "tensor": ref.name,
                "offset": ref.offset,
                "nbytes": ref.nbytes,
                "shape": list(ref.shape),
                "dtype": ref.dtype,
            }
        layers[str(layer_id)] = layer
    record = {
        "mode": mode,
        "checkpoint": source_name(checkpoint, table_path),
        "files": files,
        "layers": layers,
    }
    if remote.get("storage_options"):
        record["storage_options"] = remote["storage_options"]
    if remote.get("cache_dir"):
        record["cache_dir"] = source_name(remote["cache_dir"], table_path)
    return record


def _mtime_ns(path) -> int | None:
    try:
        return os.stat(path).st_mtime_ns
    except OSError:
        return None


def check_source_file(
    name: str, record: dict, table_path, *, header: bool = True, tensor: str = ""
) -> Path:
    """Refuse a source file that is missing or whose size, modification time (links made
    since it is recorded) or header changed since linking; ``tensor`` names what is read from
    it in the error. A URL: its size, ETag and header (:func:`~.remote.check_remote_file`)."""
    if is_remote(name):
        check_remote_file(name, record, None, tensor).close()
        return name
    path = resolve_source(name, table_path)
    what = f" (it holds {tensor})" if tensor else ""
    try:
        stat = path.stat()
        size = stat.st_size
    except OSError:
        raise EngramError(
            f"linked source {path} is missing (moved or deleted since linking); restore it or "
            "import the checkpoint again"
        ) from None
    if size != record["size"]:
        raise EngramError(
            f"linked source {path} changed since linking: {size} bytes, the link recorded "
            f"{record['size']}; import the checkpoint again{what}"
        )
    if record.get("mtime_ns") is not None and stat.st_mtime_ns != record["mtime_ns"]:
        raise EngramError(
            f"linked source {path} changed since linking: it was modified after the link was "
            "made (its modification time differs); run engramctl verify --deep to check its "
            f"bytes, or import the checkpoint again{what}"
        )
    if header:
        try:
            digest = read_shard_header(path).header_sha256
        except EngramError as exc:
            raise EngramError(f"linked source {path} changed since linking ({exc})") from None
        if digest != record["header_sha256"]:
            raise EngramError(
                f"linked source {path} changed since linking: its safetensors header differs; "
                f"import the checkpoint again{what}"
            )
    return path


def check_sources(sources: dict, table_path) -> list[str]:
    """Problems of every linked file (missing, size or header changed), one line each."""
    problems = []
    for name, record in sources["files"].items():
        try:
            if is_remote(name):
                check_remote_file(name, record, sources.get("storage_options"))
            else:
                check_source_file(name, record, table_path)
        except EngramError as exc:
            problems.append(str(exc))
    return problems


def local_reader(
    table_path, sources: dict, layer_id: int, options: dict | None = None
) -> Callable[[int, int, int], bytes]:
    """``read(part, offset, nbytes)`` of a linked layer's tensors (local shards, or URLs read
    with the recorded storage options, or ``options``)."""
    layer = sources["layers"][str(layer_id)]
    objects: dict[str, RemoteObject] = {}

    def read(part: int, offset: int, nbytes: int) -> bytes:
        entry = layer[PARTS[part]]
        if is_remote(entry["file"]):
            if entry["file"] not in objects:
                opts = options or sources.get("storage_options")
                objects[entry["file"]] = RemoteObject(entry["file"], opts)
            return objects[entry["file"]].read(int(entry["offset"]) + offset, nbytes)
        path = resolve_source(entry["file"], table_path)
        with open(path, "rb") as handle:
            handle.seek(int(entry["offset"]) + offset)
            data = handle.read(nbytes)
        if len(data) != nbytes:
            raise EngramError(f"{path} ended early while reading {entry['tensor']} (truncated?)")
        return data

    return read


# ------------------------------------------------------------------------ streamed reads
@dataclass(frozen=True)
class Span:
    """A ``[rows, width]`` uint8 tensor at byte ``offset`` of ``path``."""

    path: Path
    offset: int
    width: int
    name: str

    @classmethod
    def of(cls, ref: TensorRef) -> Span:
        return cls(ref.path, ref.offset, ref.shape[1], ref.name)

    @classmethod
    def recorded(cls, entry: dict, table_path) -> Span:
        return cls(
            resolve_source(entry["file"], table_path),
            entry["offset"],
            entry["shape"][1],
            entry["tensor"],
        )


class SourceReader:
    """Reads row spans of a weight and a scale tensor into one reusable fp8 row buffer.

    ``read`` calls into a fixed buffer (no memory map): memory stays one chunk whatever the
    size of the tensors, and pages read do not count toward the process's resident set.
    """

    def __init__(self, weight: Span, scale: Span, chunk_rows: int):
        self.weight, self.scale = weight, scale
        self.buffer = np.zeros((chunk_rows, weight.width + scale.width), np.uint8)
        self.column = np.empty(chunk_rows * max(weight.width, scale.width), np.uint8)
        self.handles: dict[Path, object] = {}

    def _read(self, span: Span, start: int, stop: int) -> np.ndarray:
        handle = self.handles.get(span.path)
        if handle is None:
            try:
                handle = self.handles[span.path] = open(span.path, "rb")  # noqa: SIM115
            except OSError as exc:
                raise EngramError(f"cannot read {span.path}: {exc.strerror or exc}") from None
        nbytes = (stop - start) * span.width
        view = self.column[:nbytes]
        handle.seek(span.offset + start * span.width)
        if handle.readinto(memoryview(view)) != nbytes:
            raise EngramError(f"{span.path} ended early while reading {span.name} (truncated?)")
        return view.reshape(stop - start, span.width)

    def rows(self, start: int, stop: int) -> np.ndarray:
        """fp8 rows ``[chunk_rows, dim + dim/32]`` of ``[start, stop)``, zero padded."""
        n, dim = stop - start, self.weight.width
        self.buffer[:n, :dim] = self._read(self.weight, start, stop)
        self.buffer[:n, dim:] = self._read(self.scale, start, stop)
        self.buffer[n:] = 0
        return self.buffer

    def close(self) -> None:
        for handle in self.handles.values():
            handle.close()
        self.handles.clear()


# ------------------------------------------------------------------------------- kernels
def gather_linked_reference(weight, scale, row_ids) -> np.ndarray:
    """Plain-numpy linked gather: ``[n, dim + dim/32]`` rows of codes then scale bytes."""
    ids = np.asarray(row_ids, dtype=np.int64)
    return np.concatenate([np.asarray(weight)[ids], np.asarray(scale)[ids]], axis=1)


@njit(cache=True, parallel=True)
def _gather_linked_kernel(weight, scale, row_ids, out):
    """weight (rows, D) uint8; scale (rows, S) uint8; row_ids (n,) int64; out (n, D + S)."""
    n = row_ids.shape[0]
    D = weight.shape[1]
    S = scale.shape[1]
    for i in prange(n):
        r = row_ids[i]
        for j in range(D):
            out[i, j] = weight[r, j]
        for j in range(S):
            out[i, D + j] = scale[r, j]


def gather_linked(weight, scale, row_ids: np.ndarray, out: np.ndarray) -> np.ndarray:
    """Copy rows (ids already range-checked) of two uint8 tensors into ``out`` side by side."""
    if (
        weight.dtype != np.uint8
        or scale.dtype != np.uint8
        or out.dtype != np.uint8
        or out.shape != (row_ids.shape[0], weight.shape[1] + scale.shape[1])
        or row_ids.dtype != np.int64
    ):
        raise EngramError("linked gather needs uint8 tensors, int64 ids and a matching buffer")
    _gather_linked_kernel(weight, scale, row_ids, out)
    return out


@dataclass
class LinkedLayer:
    """One layer's weight and scale tensors, memory-mapped from the checkpoint's shards."""

    layer_id: int
    weight: np.ndarray  # (rows, dim) uint8 memmap
    scale: np.ndarray  # (rows, dim/32) uint8 memmap
    files: list[tuple]  # (file, recorded size, recorded mtime or None, tensor): re-checked
    offsets: tuple[int, int] = (0, 0)  # byte offsets of the weight and scale tensors
    checks: LinkBlockCheck | None = None  # block checksums, checked on first touch
    fetch: LocalFetch | None = None  # how a block is read for its check

    @classmethod
    def open(cls, sources: dict, layer_id: int, table_path, *, rows: int, dim: int):
        layer = sources["layers"].get(str(layer_id))
        if layer is None:
            raise EngramError(f"layer {layer_id} has no linked source in the table's metadata")
        arrays, files, offsets = [], [], []
        for part, width in (("weight", dim), ("scale", dim // 32)):
            entry = layer[part]
            record = sources["files"][entry["file"]]
            tensor = f"{entry['tensor']} of layer {layer_id}"
            path = check_source_file(entry["file"], record, table_path, tensor=tensor)
            if entry["shape"] != [rows, width] or entry["nbytes"] != rows * width:
                raise EngramError(
                    f"linked {part} of layer {layer_id} in {path} has shape {entry['shape']}, "
                    f"expected {[rows, width]}; the table's metadata is damaged"
                )
            arrays.append(
                np.memmap(
                    path, dtype=np.uint8, mode="r", offset=entry["offset"], shape=(rows, width)
                )
                if rows
                else np.zeros((0, width), np.uint8)
            )
            files.append((path, record["size"], record.get("mtime_ns"), tensor))
            offsets.append(int(entry["offset"]))
        return cls(layer_id, arrays[0], arrays[1], files, (offsets[0], offsets[1]))

    def check_files(self) -> None:
        """Refuse (naming it) a file truncated or grown since it was mapped."""
        for path, size, mtime, tensor in self.files:
            try:
                stat = os.stat(path)
            except OSError:
                raise EngramError(
                    f"linked source {path} is missing (deleted after linking; it holds {tensor})"
                ) from None
            if stat.st_size != size:
                raise EngramError(
                    f"linked source {path} changed since linking: {stat.st_size} bytes, the link "
                    f"recorded {size}; import the checkpoint again (it holds {tensor})"
                )
            if mtime is not None and stat.st_mtime_ns != mtime:
                raise EngramError(
                    f"linked source {path} changed since linking: it was modified after the link "
                    "was made; run engramctl verify --deep to check its bytes, or import the "
                    f"checkpoint again (it holds {tensor})"
                )

    def gather(self, row_ids: np.ndarray, out: np.ndarray, cold: LinkedCold | None = None):
        """Rows into ``out``: through ``cold`` (warm regions from the maps, cold ones read in
        parallel) when given, else from the maps; NaN scales refused."""
        self.check_files()
        self.check_blocks(row_ids)
        if cold is None:
            gather_linked(self.weight, self.scale, row_ids, out)
        else:
            cold.gather(row_ids, out, gather_linked)
        self.check_scales(out, row_ids)
        return out

    def rows(self, start: int, stop: int) -> np.ndarray:
        """Rows ``[start, stop)`` as fp8 table rows (one read of each tensor's span)."""
        self.check_files()
        if self.checks is not None:
            self.checks.ensure_range(start, stop, self.widths, self.fetch)
        rows = np.concatenate([self.weight[start:stop], self.scale[start:stop]], axis=1)
        self.check_scales(rows, None, start)
        return rows

    @property
    def widths(self) -> tuple[int, int]:
        return self.weight.shape[1], self.scale.shape[1]

    def check_blocks(self, row_ids: np.ndarray) -> None:
        """Read and check, once, the blocks of both tensors holding ``row_ids`` (when the link
        has block checksums): changed bytes are refused before any row is served."""
        if self.checks is not None:
            self.checks.ensure_rows(row_ids, self.widths, self.fetch)

    def close(self) -> None:
        if self.fetch is not None:
            self.fetch.close()

    def check_scales(self, rows: np.ndarray, row_ids, start: int = 0) -> None:
        """Refuse rows whose ue8m0 scale byte is 255 (:func:`~.linkblocks.refuse_nan_scales`)."""
        where = f"{self.files[1][3]} ({self.files[1][0]})"
        refuse_nan_scales(rows, self.weight.shape[1], row_ids, start, self.layer_id, where)


class LinkedSource(RowSource):
    """The rows of a linked table: its layers mapped from the checkpoint's shards, each opened
    (files checked) on first use. Read-only: writes are refused with :data:`COPY_HINT`."""

    def __init__(self, meta, table_path, *, check_blocks: bool = True):
        self.meta, self.table_path = meta, table_path
        self.check_blocks = check_blocks  # False (check_chunks=False): local shards unchecked
        self._layers: dict[int, LinkedLayer] = {}
        self._cold: dict[int, LinkedCold] = {}
        self._reader = ParallelReader()
        self._lock = threading.Lock()

    def layer(self, layer_id: int) -> LinkedLayer | RemoteLinkedLayer:
        with self._lock:
            if layer_id not in self._layers and self._remote(layer_id):
                cache_dir = self.meta.sources.get("cache_dir")
                self._layers[layer_id] = RemoteLinkedLayer.open(
                    self.table_path,
                    self.meta,
                    layer_id,
                    cache_dir=resolve_source(cache_dir, self.table_path) if cache_dir else None,
                )
            if layer_id not in self._layers:
                layer = LinkedLayer.open(
                    self.meta.sources,
                    layer_id,
                    self.table_path,
                    rows=self.meta.layer(layer_id).rows,
                    dim=self.meta.dim,
                )
                if self.check_blocks:
                    layer.checks = LinkBlockCheck.open(self.table_path, self.meta, layer_id)
                if layer.checks is not None:
                    paths = (layer.files[0][0], layer.files[1][0])
                    sizes = (layer.files[0][1], layer.files[1][1])
                    layer.fetch = LocalFetch(paths, layer.offsets, sizes, self._reader)
                self._layers[layer_id] = layer
            return self._layers[layer_id]

    def _remote(self, layer_id: int) -> bool:
        layer = self.meta.sources["layers"].get(str(layer_id))
        return layer is not None and is_remote(layer["weight"]["file"])

    def gather(self, layer_id: int, ids: np.ndarray, out: np.ndarray) -> np.ndarray:
        layer = self.layer(layer_id)
        with self._lock:
            if isinstance(layer, RemoteLinkedLayer):
                return layer.gather(ids, out)
            cold = self._cold.get(layer_id)
            if cold is None and layer.weight.shape[0]:
                cold = self._cold[layer_id] = LinkedCold(layer, self.meta.chunk_rows, self._reader)
            return layer.gather(ids, out, cold)

    def cold_layer(self, layer_id: int) -> LinkedCold | None:
        """The cold-path state of a layer gathered from (its counters), ``None`` before."""
        return self._cold.get(layer_id)

    def rows(self, layer_id: int, start: int, stop: int) -> np.ndarray:
        return self.layer(layer_id).rows(start, stop)

    def read_chunk(self, layer_id: int, chunk_index: int) -> np.ndarray:
        """A chunk's rows as a copied table stores them (zero padded past the layer's end)."""
        start, stop = self.meta.chunk_span(layer_id, chunk_index)
        rows = np.zeros((self.meta.chunk_rows, self.meta.row_width), np.uint8)
        rows[: stop - start] = self.layer(layer_id).rows(start, stop)
        return rows

    def check_writable(self) -> None:
        raise EngramError(f"{self.table_path} is linked to a checkpoint (read-only); {COPY_HINT}")

    def write_chunk(self, layer_id, chunk_index, rows, *, source, fsync=True) -> None:
        self.check_writable()

    def close(self) -> None:
        with self._lock:
            for cold in self._cold.values():
                cold.close()
            self._cold.clear()
            for layer in self._layers.values():
                layer.close()
            self._layers.clear()
            self._reader.close()
