"""Engram tables on disk: a zarr v3 group with one ``[rows, dim]`` array per Engram layer.

The package is a facade over five rooms, imports running downward:

- ``formats/``: interchange (safetensors, DeepSeek checkpoint import and export, linked-source
  verification);
- ``build/``: new tables (create, create on Dask, chunk writing, replacing a table atomically);
- ``sources/``: where a row's bytes come from (chunk files, a linked checkpoint) and the
  :class:`Table` that reads them;
- ``edits/``: the commits over a read-only base (segments, the log, reading through them);
- ``core/``: the format itself (metadata, manifest, codec, dtypes, fp8, init values, storage,
  the writer lock).

``lookup``, ``verify``, ``commits`` (history, revert, compact) and ``intobase`` (compact
--into-base) sit on top of them.
"""

from __future__ import annotations

from .._lazy import lazy_exports

_EXPORTS = {  # module -> the public names it holds
    ".sources.table": ("Table", "TableInfo", "open_table", "table_info"),
    ".build.create": ("create_table", "CreateResult"),
    ".verify": ("verify_table", "VerifyReport"),
    ".commits": ("table_history", "revert_table", "compact_table"),
    ".intobase": ("compact_into_base",),
    ".formats.safetensors": ("export_safetensors",),
    ".formats.safetensors_import": ("import_safetensors",),
    ".core.dtypes": ("decode_rows", "encode_rows", "row_bytes"),
    ".core.rowinit": ("InitRecipe",),
}
__all__ = sorted(name for names in _EXPORTS.values() for name in names)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
