"""Structural checks of a table's metadata that every reader runs at open, and verify reports.

Cheap by design (O(layers), one small ``zarr.json`` per layer): the layer rows and head offsets
must follow from the layout, and each layer's array metadata must describe the chunk files the
table format promises. A table failing them would address rows wrongly or return the wrong shape.
"""

from __future__ import annotations

import json

from .meta import TableMeta
from .store import TableStore


def layout_problems(meta: TableMeta) -> list[str]:
    """Layers, rows, head rows and head offsets that do not follow from the layout."""
    layout = meta.layout
    problems = []
    if not meta.layers or not set(meta.layers) <= set(layout.layers):
        problems.append(
            f"layers {sorted(meta.layers)} are not among the layout's {sorted(layout.layers)}"
        )
    for layer_id, layer in meta.layers.items():
        if layer_id not in layout.layers:
            continue
        expected = (
            layout.layer_rows(layer_id),
            tuple(layout.head_rows(layer_id).tolist()),
            tuple(layout.head_offsets(layer_id).tolist()),
        )
        if (layer.rows, tuple(layer.head_rows), tuple(layer.head_offsets)) != expected:
            problems.append(
                f"layer {layer_id}: rows/head rows/head offsets differ from its layout "
                f"(rows {layer.rows} vs {expected[0]})"
            )
    return problems


def array_problems(store: TableStore, meta: TableMeta, layer_id: int) -> list[str]:
    """Ways a layer's zarr array metadata differs from what the table metadata implies."""
    layer = meta.layers[layer_id]
    key = f"{layer.array}/zarr.json"
    try:
        doc = json.loads(store.read_bytes(key))
    except (OSError, ValueError) as exc:
        return [f"layer {layer_id}: array metadata {store.where(key)} unreadable ({exc})"]
    if not isinstance(doc, dict):
        return [f"layer {layer_id}: array metadata {store.where(key)} is not a JSON object"]
    expected = {
        "shape": [layer.rows, meta.row_width],
        "data_type": str(meta.storage_dtype),
        "chunk_grid": {
            "name": "regular",
            "configuration": {"chunk_shape": [meta.chunk_rows, meta.row_width]},
        },
        "chunk_key_encoding": {"name": "default", "configuration": {"separator": "/"}},
    }
    problems = [
        f"layer {layer_id}: array {name} is {doc.get(name)!r}, expected {value!r}"
        for name, value in expected.items()
        if doc.get(name) != value
    ]
    codecs = doc.get("codecs")
    names = (
        [c.get("name") for c in codecs if isinstance(c, dict)] if isinstance(codecs, list) else []
    )
    wanted = ["bytes"] + (["zstd"] if meta.compressor == "zstd" else [])
    if names != wanted:
        problems.append(f"layer {layer_id}: codecs {names}, expected {wanted}")
    return problems


def metadata_problems(store: TableStore, meta: TableMeta) -> list[str]:
    """Every structural problem of the metadata: layout first, then each layer's array."""
    problems = layout_problems(meta)
    if meta.linked:  # rows live in a checkpoint's shards, not in zarr arrays (verify_linked)
        return problems
    for layer_id in meta.layers:
        problems += array_problems(store, meta, layer_id)
    return problems


def unfinished_reason(meta: TableMeta, *, writer: str | None = None) -> str | None:
    """Why a table cannot be read yet (``None``: it can), naming the command that resumes it.

    A copy ``import`` or a full ``init-table`` that was stopped leaves status ``initializing``:
    its unwritten chunks are not the rows it will hold, so no reader may take them for data.
    ``writer`` (``"pid N on HOST"``, the holder of the writer lock): the command is at work.
    """
    if meta.status != "initializing":
        return None
    imported = bool(meta.sources) and meta.sources.get("mode") == "copy"
    what, command = ("import", "import") if imported else ("init", "init-table")
    if writer is not None:
        return (
            f"is an unfinished {what}: `engramctl {command}` ({writer}) is writing it now; wait "
            "for it to finish"
        )
    return (
        f"is an unfinished {what}: the `engramctl {command}` that made it was interrupted before "
        f"its last chunk; rerun the same `engramctl {command}` command to resume it (or pass "
        "--overwrite to start again)"
    )
