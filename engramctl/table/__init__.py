"""Engram tables on disk: a zarr v3 group with one ``[rows, dim]`` array per Engram layer.

``dtypes``/``fp8`` encode and decode rows (float32, bf16, fp16, fp8 e4m3 with ue8m0 scales);
``rowinit`` gives every row's deterministic init values; ``format`` holds the metadata, manifest
and lock; ``store`` abstracts local and fsspec storage; ``table`` opens a table and gathers rows
(memory-mapped, numba); ``create``/``create_dask`` write new tables, resumably; ``verify`` checks
them; ``safetensors`` streams them to and from safetensors files.
"""

from __future__ import annotations

from .._lazy import lazy_exports

_EXPORTS = {  # module -> the public names it holds
    ".table": ("Table", "TableInfo", "open_table", "table_info"),
    ".create": ("create_table", "CreateResult"),
    ".verify": ("verify_table", "VerifyReport"),
    ".safetensors": ("export_safetensors", "import_safetensors"),
    ".dtypes": ("decode_rows", "encode_rows", "to_torch", "row_bytes"),
    ".rowinit": ("InitRecipe",),
}
__all__ = sorted(name for names in _EXPORTS.values() for name in names)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
