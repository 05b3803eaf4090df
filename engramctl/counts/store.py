"""The count memory on disk: a zarr v3 group whose attributes hold the metadata, and flat
``.npy`` arrays beside it that are memory-mapped, never read whole.

::

    C.zarr/
      zarr.json     group metadata; attributes["engramctl_counts"]: layout, layers, vocab
                    fingerprint, tokenizer, K, discounts, gate, corpus summary and the manifest
                    (per array file: bytes, shape, dtype, CRC-32), and the sha256 of the rest
      row_ids.npy   (N+1,)   int64  the occupied rows' ids, ascending; the last is 2**63-1
      tokens.npy    (N+1, K) int32  top-K continuations (raw ids) of each occupied row
      counts.npy    (N+1, K) uint32 their SpaceSaving counts (0: empty slot; slots fill in order)
      totals.npy    (N+1,)   uint64 the row's total (every continuation counted, kept or not)
      unigram.npy   (V,)     uint64 exact raw-id counts
      canonical.npy (V,)     int64  the vocab's canonical id map (the memory hashes on its own)

Row ids ``0..C-1`` are level 1 (keyed by the canonical id of the last token); then each counted
Engram layer's whole table (its heads at the layout's head offsets) from ``meta["layers"][L]``.
Only the N rows that were counted are stored (format 2), found by binary search on
``row_ids``; an absent row reads as the last, all-zero one. Format 1 (every row of the layout,
``row_ids.npy`` absent) is still read.
"""

from __future__ import annotations

import hashlib
import json
import os
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import EngramError
from ..layout import EngramLayout

META_KEY = "engramctl_counts"
FORMAT = "engramctl-counts"
FORMAT_VERSION = 2
ARRAYS_V1 = ("tokens", "counts", "totals", "unigram", "canonical")
ARRAYS = ("row_ids", *ARRAYS_V1)


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


def crc32_of_file(path: Path, block: int = 1 << 24) -> str:
    """CRC-32 of a file's bytes as 8 hex digits (what the manifest records)."""
    value = 0
    with open(path, "rb") as handle:
        while chunk := handle.read(block):
            value = zlib.crc32(chunk, value)
    return f"{value & 0xFFFFFFFF:08x}"


def crc32_combine(crc1: int, crc2: int, len2: int) -> int | None:
    """CRC-32 of ``A + B`` from ``crc32(A)``, ``crc32(B)`` and ``len(B)`` (zlib's
    ``crc32_combine``, which Python's :mod:`zlib` does not expose); None without libz."""
    global _COMBINE
    if _COMBINE is None:
        try:
            import ctypes

            lib = ctypes.CDLL("libz.so.1")
            lib.crc32_combine.restype = ctypes.c_ulong
            lib.crc32_combine.argtypes = [ctypes.c_ulong, ctypes.c_ulong, ctypes.c_long]
            _COMBINE = lib.crc32_combine
        except (OSError, AttributeError):
            _COMBINE = False
    return None if _COMBINE is False else int(_COMBINE(crc1, crc2, len2)) & 0xFFFFFFFF


_COMBINE = None


def _write_sparse(path: Path, array: np.ndarray, block: int = 1 << 22) -> str:
    """Write ``array`` as ``.npy``, leaving all-zero blocks as holes (most rows of a memory are
    empty: a sparse file takes the disk its data takes); the file's CRC-32."""
    array = np.ascontiguousarray(array)
    with open(path, "wb") as handle:
        header = np.lib.format.header_data_from_array_1_0(array)
        np.lib.format.write_array_header_1_0(handle, header)
        header_end = handle.tell()
    value = zlib.crc32(path.read_bytes())
    data = memoryview(array.reshape(-1).view(np.uint8))
    with open(path, "r+b") as handle:
        for lo in range(0, len(data), block):
            chunk = data[lo : lo + block]
            value = zlib.crc32(chunk, value)
            if np.frombuffer(chunk, dtype=np.uint8).any():
                handle.seek(header_end + lo)
                handle.write(chunk)
        handle.truncate(header_end + len(data))
    return f"{value & 0xFFFFFFFF:08x}"


def _meta_checksum(meta: dict) -> str:
    body = {k: v for k, v in meta.items() if k != "meta_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def write_metadata(directory: Path, meta: dict, arrays: dict, suffix: str = "",
                   crcs: dict | None = None) -> dict:  # fmt: skip
    """Write the arrays given (files already written are read back, unless ``crcs`` has
    their CRC-32, taken as they were written), record each file's manifest entry (bytes,
    shape, dtype, CRC-32), checksum the metadata, write ``zarr.json`` (under a temporary name,
    then renamed: the commit). Array files are ``<name><suffix>.npy``. The metadata written
    is returned."""
    manifest = {}
    crcs = crcs or {}
    for name in ARRAYS:
        path = directory / f"{name}{suffix}.npy"
        array = arrays.get(name)
        if array is None:  # written already (the row arrays, appended by the build)
            crc = crcs.get(name) or crc32_of_file(path)
            array = np.load(path, mmap_mode="r")
        else:
            crc = _write_sparse(path, array)
        manifest[name] = {
            "file": path.name,
            "bytes": path.stat().st_size,
            "shape": list(array.shape),
            "dtype": str(array.dtype),
            "crc32": crc,
        }
    meta = {**meta, "manifest": manifest}
    meta["meta_sha256"] = _meta_checksum(meta)
    doc = {"zarr_format": 3, "node_type": "group", "attributes": {META_KEY: meta}}
    tmp = directory / "zarr.json.tmp"
    tmp.write_text(json.dumps(doc, indent=1))
    os.replace(tmp, directory / "zarr.json")
    return meta


@dataclass(frozen=True)
class CountsStore:
    """An open count memory: its metadata and memory-mapped arrays (read-only)."""

    path: Path
    meta: dict
    tokens: np.ndarray
    counts: np.ndarray
    totals: np.ndarray
    unigram: np.ndarray
    canonical: np.ndarray
    row_ids: np.ndarray | None = None  # format 2: the occupied rows' ids (None: every row)

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

    def vocab(self):
        """The canonical vocab the memory was built with (its id map; no token strings)."""
        from ..vocab import CanonicalVocab

        tok = self.meta.get("tokenizer") or {}
        vocab = CanonicalVocab(
            canonical_ids=np.asarray(self.canonical, dtype=np.int64), tokens=[], keys=[],
            source_sha256=tok.get("sha256", ""), source_name=tok.get("name", ""),
        )  # fmt: skip
        if vocab.fingerprint != self.meta["vocab_fingerprint"]:
            raise EngramError(f"{self.path} is damaged: its id map does not match its vocab "
                              f"fingerprint; run engramctl verify {self.path}")  # fmt: skip
        return vocab


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


def write_gate(path, gate: dict) -> dict:
    """Replace the gate in the metadata of the count memory at ``path`` as one commit:
    ``zarr.json`` is written under a temporary name, then renamed over the old one (an
    interrupted write leaves the old gate). The new metadata is returned."""
    path = Path(path)
    meta = {**read_metadata(path), "gate": gate}
    meta["meta_sha256"] = _meta_checksum(meta)
    doc = {"zarr_format": 3, "node_type": "group", "attributes": {META_KEY: meta}}
    tmp = path / "zarr.json.tmp"
    try:
        tmp.write_text(json.dumps(doc, indent=1))
        os.replace(tmp, path / "zarr.json")
    finally:
        tmp.unlink(missing_ok=True)
    return meta


def open_counts(path) -> CountsStore:
    """Open a count memory read-only (arrays memory-mapped), checking shapes against the
    manifest; ``engramctl verify`` checks the bytes (:func:`verify_counts`)."""
    path = Path(path)
    meta = read_metadata(path)
    arrays = {}
    names = ARRAYS if meta.get("format_version", 1) >= 2 else ARRAYS_V1
    missing = [name for name in names if name not in meta.get("manifest", {})]
    if missing:
        raise EngramError(
            f"{path} is damaged or incomplete: its manifest lacks {', '.join(missing)}; build it "
            "again with engramctl build-counts"
        )
    for name in names:
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
    names = ARRAYS if meta.get("format_version", 1) >= 2 else ARRAYS_V1
    problems = [f"the manifest lacks {name}" for name in names if name not in meta["manifest"]]
    for name in names:
        if name not in meta["manifest"]:
            continue
        entry = meta["manifest"][name]
        file = path / entry["file"]
        if not file.is_file():
            problems.append(f"{entry['file']} is missing")
        elif file.stat().st_size != entry["bytes"]:
            problems.append(
                f"{entry['file']} has {file.stat().st_size:,} bytes, expected {entry['bytes']:,}"
            )
        elif crc32_of_file(file) != entry["crc32"]:
            problems.append(f"{entry['file']} does not match its CRC-32 (its bytes changed)")
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
        "occupied_rows": meta.get("occupied_rows"),
        "vocab_fingerprint": meta["vocab_fingerprint"],
        "tokenizer": meta.get("tokenizer"),
        "discounts": meta["discounts"],
        "gate": meta.get("gate"),
        "corpus": corpus,
        "bytes": size,
        "bytes_per_corpus_token": size / tokens if tokens else None,
        "bytes_per_occupied_row": size / meta["occupied_rows"]
        if meta.get("occupied_rows")
        else None,
    }
