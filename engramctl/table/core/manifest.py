"""The chunk manifest and the group attributes that hold it, with their checksums.

A table's ``zarr.json`` attributes hold three plain-JSON keys: ``engramctl`` (the
:class:`~engramctl.table.core.meta.TableMeta`), ``engramctl_manifest`` (per layer, per written
chunk: CRC-32, size and source) and ``engramctl_checksum`` (SHA-256 of each of the other two, so
an edit of either is refused). This module reads and writes them (local or remote, one atomic
write of ``zarr.json``), parses and checks the manifest, and gives a table's content checksum
(:func:`table_state`).
"""

from __future__ import annotations

import hashlib
import json

from ...errors import EngramError
from ...layout import LayoutSource
from .lock import LOCK_NAME
from .meta import TableMeta, check_format_version, check_vocab, is_count
from .store import open_store

META_KEY = "engramctl"
MANIFEST_KEY = "engramctl_manifest"
CHECKSUM_KEY = "engramctl_checksum"


def read_group_attrs(path) -> tuple[dict, str]:
    """``(attributes, where)`` of a table's group, refusing anything that is not a table.

    ``path`` is a local path, an fsspec URL or a :class:`~engramctl.table.core.store.TableStore`.
    """

    store = open_store(path)
    where = store.url
    if not store.exists():
        raise EngramError(f"no table at {where}: the path does not exist")
    try:
        doc = json.loads(store.read_bytes("zarr.json"))
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):  # a file, not a group
        if _is_table_slot(store):
            raise EngramError(
                f"{where} is not a table yet: the `engramctl import` or `init-table` creating it "
                "was interrupted before the table was in place (or is running now); rerun that "
                "command to create it"
            ) from None
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


def _is_table_slot(store) -> bool:
    """A local directory holding a writer lock and at most the layer directories of a table
    being created: the slot an interrupted ``import`` or ``init-table`` leaves, not user data."""
    if not store.is_local or not (store.root / LOCK_NAME).is_file():
        return False
    try:
        entries = list(store.root.iterdir())
    except OSError:
        return False
    return all(e.name == LOCK_NAME or (e.name.startswith("layer_") and e.is_dir()) for e in entries)


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
                and all(is_count(v) for v in entry[:2])
                and isinstance(entry[2], str)
            ):
                raise EngramError(
                    f"{where} has a damaged chunk manifest (layer {layer_id} chunk {chunk!r}: "
                    f"{json.dumps(entry)[:60]}); run engramctl verify"
                )
            manifest[layer_id][index] = list(entry)
    return manifest


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


def table_state(meta: TableMeta, manifest: dict) -> str:
    """A checksum of a table's content: its recipe (which fixes unwritten rows) and the CRC-32 of
    every written chunk. Two tables with the same state hold the same rows."""
    return json_digest({"recipe": meta.recipe_dict(), "manifest": manifest_to_json(manifest)})
