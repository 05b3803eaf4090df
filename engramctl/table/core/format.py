"""The on-disk table format: metadata, manifest, chunk names and codec, and the writer lock.

A table is a zarr v3 group. Its ``zarr.json`` attributes hold two plain-JSON keys:
``engramctl`` (:class:`TableMeta`: layout, vocab fingerprint, dtype, chunking, init recipe,
format version), ``engramctl_manifest`` (per layer, per written chunk: CRC-32 and size) and
``engramctl_checksum`` (SHA-256 of each of the other two, so an edit of either is refused).
One 2-D array per Engram layer, ``layer_<id>``, of shape ``(rows, row_width)`` with row-block
chunks ``(chunk_rows, row_width)``; zarr's default v3 chunk key encoding puts chunk ``k`` of
layer ``L`` at ``layer_<L>/c/<k>/0``. See docs/format.md.
"""

from __future__ import annotations

import hashlib
import json
import zlib
from dataclasses import dataclass, field

import numpy as np

from ...errors import EngramError, UsageError
from ...layout import EngramLayout, LayoutSource
from .choices import COMPRESSORS
from .dtypes import encode_rows, parse_dtype, row_bytes, row_width, storage_dtype
from .lock import LOCK_NAME, WriterLock, active_writer  # noqa: F401 - the format's lock
from .rowinit import InitRecipe, init_values
from .store import open_store

FORMAT = "engramctl-table"
FORMAT_VERSION = 1
META_KEY = "engramctl"
MANIFEST_KEY = "engramctl_manifest"
CHECKSUM_KEY = "engramctl_checksum"
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


def array_name(layer_id: int) -> str:
    """Name of a layer's zarr array: ``layer_<id>``."""
    return f"layer_{layer_id}"


def chunk_key(layer_id: int, chunk_index: int) -> str:
    """Path of a chunk file inside the table (zarr v3 default key encoding, ``/`` separator).

    >>> chunk_key(15, 3)
    'layer_15/c/3/0'
    """
    return f"{array_name(layer_id)}/c/{chunk_index}/0"


def crc32_of(data) -> int:
    """CRC-32 (zlib) of a bytes-like object, as an unsigned int."""
    return zlib.crc32(memoryview(data).cast("B")) & 0xFFFFFFFF


@dataclass(frozen=True)
class LayerMeta:
    """One layer's array: rows and the heads stored back to back in it."""

    layer_id: int
    rows: int  # sum of the layer's head primes
    head_rows: tuple[int, ...]  # rows of each head (primes), order-2 heads first
    head_offsets: tuple[int, ...]  # first row of each head

    @property
    def array(self) -> str:
        return array_name(self.layer_id)

    def n_chunks(self, chunk_rows: int) -> int:
        return -(-self.rows // chunk_rows)

    def to_dict(self) -> dict:
        return {
            "array": self.array,
            "rows": self.rows,
            "head_rows": list(self.head_rows),
            "head_offsets": list(self.head_offsets),
        }


@dataclass(frozen=True)
class TableMeta:
    """Everything about a table except its manifest (the ``engramctl`` group attribute)."""

    layout: EngramLayout
    vocab_fingerprint: str  # CanonicalVocab.fingerprint of the vocab the layout was made for
    dim: int  # values per row
    dtype: str  # logical dtype: float32 | bfloat16 | float16 | float8_e4m3fn
    chunk_rows: int  # rows per chunk (the last chunk of a layer is padded to full size)
    compressor: str  # none | zstd
    init: InitRecipe  # values of chunks never written
    lazy: bool  # created without writing chunks
    status: str = "complete"  # lazy | initializing | complete
    format_version: int = FORMAT_VERSION
    layers: dict[int, LayerMeta] = field(default_factory=dict)
    runs: tuple[dict, ...] = ()  # training runs that wrote rows, oldest first (provenance)
    sources: dict | None = None  # checkpoint the rows come from (linked, or copied): linked.py

    @property
    def linked(self) -> bool:
        """Rows are read from a checkpoint's shard files (``import --link``), not chunks."""
        return bool(self.sources) and self.sources.get("mode") == "link"

    @classmethod
    def build(cls, *, layout: EngramLayout, **fields) -> TableMeta:
        """Meta for a new table: layer rows and head offsets follow from the layout."""
        layers = {
            layer_id: LayerMeta(
                layer_id,
                layout.layer_rows(layer_id),
                tuple(int(r) for r in layout.head_rows(layer_id)),
                tuple(int(o) for o in layout.head_offsets(layer_id)),
            )
            for layer_id in layout.layers
        }
        return cls(layout=layout, layers=layers, **fields)

    def __post_init__(self):
        parse_dtype(self.dtype)
        row_bytes(self.dim, self.dtype)
        if self.chunk_rows < 1:
            raise UsageError(f"--chunk-rows must be at least 1, got {self.chunk_rows}")
        if self.compressor not in COMPRESSORS:
            raise UsageError(
                f"--compressor must be one of {', '.join(COMPRESSORS)}, got {self.compressor!r}"
            )

    # derived sizes
    @property
    def storage_dtype(self):
        return storage_dtype(self.dtype)

    @property
    def row_width(self) -> int:
        return row_width(self.dim, self.dtype)

    @property
    def row_bytes(self) -> int:
        return row_bytes(self.dim, self.dtype)

    @property
    def chunk_bytes(self) -> int:
        """Bytes of one decoded chunk (also of an uncompressed chunk file)."""
        return self.chunk_rows * self.row_bytes

    def layer(self, layer_id: int) -> LayerMeta:
        if layer_id not in self.layers:
            raise EngramError(
                f"layer {layer_id} is not in this table; its layers are {sorted(self.layers)}"
            )
        return self.layers[layer_id]

    def chunk_span(self, layer_id: int, chunk_index: int) -> tuple[int, int]:
        """Rows ``[start, stop)`` of a chunk that lie inside the layer."""
        rows = self.layer(layer_id).rows
        n_chunks = self.layer(layer_id).n_chunks(self.chunk_rows)
        if not 0 <= chunk_index < n_chunks:
            raise EngramError(
                f"chunk {chunk_index} is out of range for layer {layer_id} ({n_chunks} chunks)"
            )
        start = chunk_index * self.chunk_rows
        return start, min(start + self.chunk_rows, rows)

    def recipe_dict(self) -> dict:
        """The fields that decide every value of a fresh table (compared when resuming)."""
        return {
            "layout": self.layout.to_dict(),
            "vocab_fingerprint": self.vocab_fingerprint,
            "dim": self.dim,
            "dtype": self.dtype,
            "chunk_rows": self.chunk_rows,
            "compressor": self.compressor,
            "init": self.init.to_dict(),
        }

    def to_dict(self) -> dict:
        return (
            {
                "format": FORMAT,
                "format_version": self.format_version,
                **self.recipe_dict(),
                "storage_dtype": str(self.storage_dtype),
                "row_width": self.row_width,
                "row_bytes": self.row_bytes,
                "lazy": self.lazy,
                "status": self.status,
                "layers": {str(k): v.to_dict() for k, v in self.layers.items()},
            }
            | ({"runs": list(self.runs)} if self.runs else {})
            | ({"sources": self.sources} if self.sources else {})
        )

    @classmethod
    def from_dict(cls, data: dict, *, where: str = "table") -> TableMeta:
        version = check_format_version(data, where=where)
        for name in ("dim", "chunk_rows"):
            if not _is_count(data.get(name)) or data[name] < 1:
                raise EngramError(
                    f"{where} has damaged metadata: {name} is {data.get(name)!r}, not a positive "
                    "integer; run engramctl verify"
                )
        try:
            layers = {
                int(k): LayerMeta(
                    int(k), int(v["rows"]), tuple(v["head_rows"]), tuple(v["head_offsets"])
                )
                for k, v in data["layers"].items()
            }
            return cls(
                layout=EngramLayout.from_dict(data["layout"]),
                vocab_fingerprint=data["vocab_fingerprint"],
                dim=int(data["dim"]),
                dtype=data["dtype"],
                chunk_rows=int(data["chunk_rows"]),
                compressor=data["compressor"],
                init=InitRecipe.from_dict(data["init"]),
                lazy=bool(data["lazy"]),
                status=data["status"],
                format_version=version,
                layers=layers,
                runs=tuple(dict(run) for run in data.get("runs") or ()),
                sources=data.get("sources"),
            )
        except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as exc:
            raise EngramError(
                f"{where} has damaged metadata ({type(exc).__name__}: {exc})"
            ) from exc
        except UsageError as exc:  # a recorded value, not a flag the user gave
            raise EngramError(f"{where} has damaged metadata ({exc})") from None

    def with_status(self, status: str) -> TableMeta:
        data = self.to_dict()
        data["status"] = status
        return TableMeta.from_dict(data)


def table_state(meta: TableMeta, manifest: dict) -> str:
    """A checksum of a table's content: its recipe (which fixes unwritten rows) and the CRC-32 of
    every written chunk. Two tables with the same state hold the same rows."""
    return json_digest({"recipe": meta.recipe_dict(), "manifest": manifest_to_json(manifest)})


def check_format_version(data, *, where: str) -> int:
    """The format version of an ``engramctl`` attribute; refuses another format or a newer one."""
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        found = data.get("format") if isinstance(data, dict) else data
        raise EngramError(f"{where} is not an engramctl table (format {found!r})")
    version = data.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise EngramError(
            f"{where} has table format version {version}, newer than this engramctl reads "
            f"({FORMAT_VERSION}); upgrade engramctl"
        )
    return version


def check_vocab_fingerprint(
    made_for: str | None,
    fingerprint: str | None,
    *,
    what: str = "the table",
    given: str = "the vocab given",
    advice: str = "pass the vocab the table was made with",
) -> None:
    """The one "was this table made for this vocab" check: refuse differing fingerprints.

    ``made_for`` is the fingerprint ``what`` (a table, an export of one) records; ``fingerprint``
    the one of ``given`` (a vocab, a model). The error names both and says what to do.
    """
    if fingerprint != made_for:
        raise EngramError(
            f"{what} was made for vocab fingerprint {made_for}, but {given} has {fingerprint}; "
            f"{advice}"
        )


def check_vocab(meta: TableMeta, vocab, *, where: str = "the table") -> None:
    """Refuse a vocab (``None``: nothing to check) other than the one the table was made for."""
    if vocab is not None:
        check_vocab_fingerprint(meta.vocab_fingerprint, vocab.fingerprint, what=where)


# --------------------------------------------------------------------------- the group
def read_group_attrs(path) -> tuple[dict, str]:
    """``(attributes, where)`` of a table's group, refusing anything that is not a table.

    ``path`` is a local path, an fsspec URL or a :class:`~engramctl.table.core.store.TableStore`.
    """

    store = open_store(path)
    where = store.url
    if not store.exists():
        raise EngramError(f"no table at {where}: the path does not exist")
    if store.is_local and not store.root.is_dir():
        raise EngramError(f"{where} is not an engramctl table (not a zarr v3 group)")
    try:
        doc = json.loads(store.read_bytes("zarr.json"))
    except (FileNotFoundError, IsADirectoryError):
        raise EngramError(f"{where} is not an engramctl table (not a zarr v3 group)") from None
    except (OSError, ValueError) as exc:
        raise EngramError(
            f"{where} is not an engramctl table: unreadable zarr.json ({exc})"
        ) from exc
    if not isinstance(doc, dict) or doc.get("zarr_format") != 3 or doc.get("node_type") != "group":
        raise EngramError(f"{where} is not an engramctl table (not a zarr v3 group)")
    attrs = doc.get("attributes") or {}
    if not isinstance(attrs, dict) or META_KEY not in attrs:
        raise EngramError(f"{where} is a zarr group but not an engramctl table (no metadata)")
    return attrs, where


def read_group(path, *, check: bool = True) -> tuple[TableMeta, dict]:
    """Read ``(meta, manifest)`` from a table's group attributes, refusing anything else.

    ``path`` is a local path, an fsspec URL or a :class:`~engramctl.table.core.store.TableStore`.
    ``check`` refuses metadata or a manifest that does not match its recorded checksum.
    """
    attrs, where = read_group_attrs(path)
    check_format_version(attrs[META_KEY], where=where)  # a newer format may checksum otherwise
    if check and (problems := checksum_problems(attrs)):
        raise EngramError(f"{where}: {problems[0]}")
    meta = TableMeta.from_dict(attrs[META_KEY], where=where)
    manifest = parse_manifest(attrs.get(MANIFEST_KEY) or {}, meta, where=where)
    return meta, manifest


def json_digest(value) -> str:
    """``sha256:<hex>`` of the canonical JSON of ``value`` (sorted keys, no spaces)."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


CHECKSUMMED = {
    META_KEY: "table metadata (the 'engramctl' attribute of zarr.json)",
    MANIFEST_KEY: "chunk manifest (the 'engramctl_manifest' attribute of zarr.json)",
}


def checksum_problems(attrs: dict) -> list[str]:
    """Why the group attributes do not match their recorded checksums (empty: they do).

    Attributes written by an engramctl older than the checksums have none; nothing is
    refused then (``verify`` warns, and the next write adds them).
    """
    sums = attrs.get(CHECKSUM_KEY)
    if sums is None:
        return []
    if not isinstance(sums, dict):
        return [f"the checksum record {CHECKSUM_KEY!r} of zarr.json is malformed: {sums!r}"]
    problems = []
    for key, what in CHECKSUMMED.items():
        try:
            actual = json_digest(attrs.get(key) or {})
        except (TypeError, ValueError):
            actual = None
        if sums.get(key) != actual:
            problems.append(
                f"the {what} does not match its checksum: it was edited or damaged, and the "
                "values or addresses of rows may be wrong; restore it or rebuild the table"
            )
    return problems


def parse_manifest(data, meta: TableMeta, *, where: str) -> dict[int, dict[int, list]]:
    """``{layer: {chunk: [crc32, nbytes, source]}}`` from its JSON form (string keys), every
    entry checked: a layer of the table, a chunk in range, two non-negative integers and a
    source name."""
    if not isinstance(data, dict):
        raise EngramError(f"{where} has a damaged chunk manifest (not an object)")
    manifest: dict[int, dict[int, list]] = {layer_id: {} for layer_id in meta.layers}
    for layer, chunks in data.items():
        try:
            layer_id = int(layer)
        except ValueError:
            layer_id = None
        if layer_id not in meta.layers or not isinstance(chunks, dict):
            raise EngramError(
                f"{where} has a damaged chunk manifest (layer entry {layer!r}); run engramctl "
                "verify"
            )
        n_chunks = meta.layers[layer_id].n_chunks(meta.chunk_rows)
        for chunk, entry in chunks.items():
            index = int(chunk) if chunk.isdigit() else -1
            if not (
                0 <= index < n_chunks
                and isinstance(entry, list)
                and len(entry) == 3
                and all(_is_count(v) for v in entry[:2])
                and isinstance(entry[2], str)
            ):
                raise EngramError(
                    f"{where} has a damaged chunk manifest (layer {layer_id} chunk {chunk!r}: "
                    f"{json.dumps(entry)[:60]}); run engramctl verify"
                )
            manifest[layer_id][index] = list(entry)
    return manifest


def _is_count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def manifest_to_json(manifest: dict[int, dict[int, list]]) -> dict:
    return {
        str(layer): {str(chunk): entry for chunk, entry in sorted(chunks.items())}
        for layer, chunks in sorted(manifest.items())
    }


def group_attrs(meta: TableMeta, manifest: dict) -> dict:
    """The group attributes of a table: metadata, manifest and the checksums of both."""
    meta_json, manifest_json = meta.to_dict(), manifest_to_json(manifest)
    return {
        META_KEY: meta_json,
        MANIFEST_KEY: manifest_json,
        CHECKSUM_KEY: {META_KEY: json_digest(meta_json), MANIFEST_KEY: json_digest(manifest_json)},
    }


def write_group_attrs(path, meta: TableMeta, manifest: dict) -> None:
    """Replace the group attributes (one atomic write of ``zarr.json``, local or remote)."""
    import zarr

    group = zarr.open_group(open_store(path).zarr_location(), mode="r+")
    group.attrs.put(group_attrs(meta, manifest))


def table_layout_source(path, *, vocab=None) -> LayoutSource:
    """A table's layout as the layout source of ``--table`` (its dim and dtype with it), refusing
    a vocab the table was not made for."""
    meta, _ = read_group(path)
    check_vocab(meta, vocab, where=str(path))
    return LayoutSource(meta.layout, meta.dim, meta.dtype, flag="--table", where=f"table {path}")


# --------------------------------------------------------------------------- chunk codec
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
