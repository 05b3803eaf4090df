"""The count memory on disk: a zarr v3 group whose attributes hold the metadata, and flat
``.npy`` arrays beside it that are memory-mapped, never read whole.

::

    C.zarr/
      zarr.json     group metadata; attributes["engramctl_counts"]: layout, layers, vocab
                    fingerprint, tokenizer, K, discounts, gate, corpus summary and the manifest
                    (per array file: bytes, shape, dtype, sha256), and the sha256 of the rest
      tokens.npy    (R, K) int32   top-K continuations (raw ids) of each row
      counts.npy    (R, K) uint32  their SpaceSaving counts (0: empty slot; slots fill in order)
      totals.npy    (R,)   uint64  the row's total (every continuation counted, kept or not)
      unigram.npy   (V,)   uint64  exact raw-id counts

Rows ``0..C-1`` are level 1 (keyed by the canonical id of the last token); then each counted
Engram layer's whole table (its heads at the layout's head offsets) from ``meta["layers"][L]``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import EngramError
from ..layout import EngramLayout

META_KEY = "engramctl_counts"
FORMAT = "engramctl-counts"
FORMAT_VERSION = 1
ARRAYS = ("tokens", "counts", "totals", "unigram")
DTYPES = {"tokens": np.int32, "counts": np.uint32, "totals": np.uint64, "unigram": np.uint64}
COUNT_MAX = 2**32 - 1  # a slot's count saturates here (totals are 64-bit)


def is_counts_store(path) -> bool:
    """Is ``path`` a directory holding a count memory's ``zarr.json``?"""
    doc = Path(path) / "zarr.json"
    if not doc.is_file():
        return False
    try:
        attrs = json.loads(doc.read_text()).get("attributes") or {}
    except (OSError, ValueError, AttributeError):
        return False
    return isinstance(attrs, dict) and META_KEY in attrs


def create_arrays(directory: Path, *, rows: int, top_k: int, vocab_size: int) -> dict:
    """New zero-filled memory-mapped arrays in ``directory`` (sparse files: no RAM, little disk
    until written)."""
    directory.mkdir(parents=True, exist_ok=True)
    shapes = {
        "tokens": (rows, top_k),
        "counts": (rows, top_k),
        "totals": (rows,),
        "unigram": (vocab_size,),
    }
    return {
        name: np.lib.format.open_memmap(
            directory / f"{name}.npy", mode="w+", dtype=DTYPES[name], shape=shape
        )
        for name, shape in shapes.items()
    }


def file_sha256(path: Path, block: int = 1 << 24) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(block):
            digest.update(chunk)
    return digest.hexdigest()


def _meta_checksum(meta: dict) -> str:
    body = {k: v for k, v in meta.items() if k != "meta_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def write_metadata(directory: Path, meta: dict) -> None:
    """Record each array's manifest entry, checksum the metadata and write ``zarr.json``."""
    manifest = {}
    for name in ARRAYS:
        path = directory / f"{name}.npy"
        array = np.load(path, mmap_mode="r")
        manifest[name] = {
            "file": path.name,
            "bytes": path.stat().st_size,
            "shape": list(array.shape),
            "dtype": str(array.dtype),
            "sha256": file_sha256(path),
        }
        del array
    meta = {**meta, "manifest": manifest}
    meta["meta_sha256"] = _meta_checksum(meta)
    doc = {"zarr_format": 3, "node_type": "group", "attributes": {META_KEY: meta}}
    (directory / "zarr.json").write_text(json.dumps(doc, indent=1))


@dataclass(frozen=True)
class CountsStore:
    """An open count memory: its metadata and memory-mapped arrays (read-only)."""

    path: Path
    meta: dict
    tokens: np.ndarray
    counts: np.ndarray
    totals: np.ndarray
    unigram: np.ndarray

    @property
    def layout(self) -> EngramLayout:
        return EngramLayout.from_dict(self.meta["layout"])

    @property
    def layer_ids(self) -> tuple[int, ...]:
        return tuple(int(layer) for layer in self.meta["layers"])

    @property
    def top_k(self) -> int:
        return int(self.meta["top_k"])

    @property
    def discounts(self) -> np.ndarray:
        return np.asarray(self.meta["discounts"], dtype=np.float64)

    def layer_base(self, layer_id: int) -> int:
        return int(self.meta["layers"][str(layer_id)]["base"])


def read_metadata(path) -> dict:
    """The metadata of the count memory at ``path``; one line naming what is wrong otherwise."""
    path = Path(path)
    if not path.exists():
        raise EngramError(f"no count memory at {path}: the path does not exist")
    doc_path = path / "zarr.json"
    try:
        doc = json.loads(doc_path.read_text())
        meta = doc["attributes"][META_KEY]
    except FileNotFoundError:
        raise EngramError(f"{path} is not a count memory (no zarr.json)") from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise EngramError(
            f"{path} is not a count memory or is damaged: unreadable zarr.json ({exc}); "
            f"build it again with engramctl build-counts"
        ) from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise EngramError(f"{path} is not a count memory (format {meta.get('format')!r})")
    if meta.get("format_version", 0) > FORMAT_VERSION:
        raise EngramError(
            f"{path} has count-memory format {meta['format_version']}; this engramctl reads up "
            f"to {FORMAT_VERSION}: upgrade engramctl"
        )
    if meta.get("meta_sha256") != _meta_checksum(meta):
        raise EngramError(
            f"{path} is damaged: its metadata does not match its checksum (engramctl verify "
            f"{path} says more); build it again"
        )
    return meta


def open_counts(path) -> CountsStore:
    """Open a count memory read-only (arrays memory-mapped), checking shapes against the
    manifest; ``engramctl verify`` checks the bytes (:func:`verify_counts`)."""
    path = Path(path)
    meta = read_metadata(path)
    arrays = {}
    for name in ARRAYS:
        entry = meta["manifest"][name]
        file = path / entry["file"]
        try:
            array = np.load(file, mmap_mode="r")
        except (OSError, ValueError) as exc:
            raise EngramError(
                f"{path} is damaged: {entry['file']} cannot be read ({exc}); run engramctl "
                f"verify {path}, then build it again"
            ) from None
        if list(array.shape) != entry["shape"] or str(array.dtype) != entry["dtype"]:
            raise EngramError(
                f"{path} is damaged: {entry['file']} is {array.dtype}{list(array.shape)}, the "
                f"manifest says {entry['dtype']}{entry['shape']}; build it again"
            )
        arrays[name] = array
    return CountsStore(path, meta, **arrays)


def verify_counts(path) -> list[str]:
    """Every problem found by re-reading the arrays against the manifest (empty: intact)."""
    path = Path(path)
    try:
        meta = read_metadata(path)
    except EngramError as exc:
        return [str(exc)]
    problems = []
    for name in ARRAYS:
        entry = meta["manifest"][name]
        file = path / entry["file"]
        if not file.is_file():
            problems.append(f"{entry['file']} is missing")
        elif file.stat().st_size != entry["bytes"]:
            problems.append(
                f"{entry['file']} has {file.stat().st_size:,} bytes, expected {entry['bytes']:,}"
            )
        elif file_sha256(file) != entry["sha256"]:
            problems.append(f"{entry['file']} does not match its sha256 (its bytes changed)")
    return problems


def describe_counts(path) -> dict:
    """What ``engramctl info`` shows of a count memory (metadata, no array read)."""
    meta = read_metadata(path)
    corpus = meta.get("corpus", {})
    size = sum(entry["bytes"] for entry in meta["manifest"].values())
    tokens = corpus.get("tokens") or 0
    return {
        "kind": "counts",
        "path": str(path),
        "layers": [int(layer) for layer in meta["layers"]],
        "layout": meta["layout"],
        "top_k": meta["top_k"],
        "rows": meta["rows"],
        "vocab_fingerprint": meta["vocab_fingerprint"],
        "tokenizer": meta.get("tokenizer"),
        "discounts": meta["discounts"],
        "gate": meta.get("gate"),
        "corpus": corpus,
        "bytes": size,
        "bytes_per_corpus_token": size / tokens if tokens else None,
    }
