"""Table metadata: :class:`TableMeta` and :class:`LayerMeta` (the ``engramctl`` attribute of a
table's ``zarr.json``), the format version, and the "was this table made for this vocab" check.

A table is a zarr v3 group. One 2-D array per Engram layer, ``layer_<id>`` (:func:`array_name`),
of shape ``(rows, row_width)`` with row-block chunks ``(chunk_rows, row_width)``. The metadata
records the layout, the vocab fingerprint, the dtype, the chunking, the init recipe of rows never
written, the format version, the runs that wrote rows and a linked checkpoint's sources. The
manifest and the checksums are :mod:`engramctl.table.core.manifest`; chunk files
:mod:`engramctl.table.core.codec`. See docs/format.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ...errors import EngramError, UsageError
from ...layout import EngramLayout
from .choices import COMPRESSORS
from .dtypes import parse_dtype, row_bytes, row_width, storage_dtype
from .rowinit import InitRecipe

FORMAT = "engramctl-table"
FORMAT_VERSION = 1


def array_name(layer_id: int) -> str:
    """Name of a layer's zarr array: ``layer_<id>``."""
    return f"layer_{layer_id}"


def is_count(value) -> bool:
    """A non-negative ``int`` (not a ``bool``), as counts in the metadata must be."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


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
            if not is_count(data.get(name)) or data[name] < 1:
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
