"""Engram tables on disk: a zarr v3 group with one ``[rows, dim]`` array per Engram layer.

``dtypes``/``fp8`` encode and decode rows (float32, bf16, fp16, fp8 e4m3 with ue8m0 scales);
``rowinit`` gives every row's deterministic init values; ``format`` holds the metadata, manifest
and lock; ``store`` abstracts local and fsspec storage; ``table`` opens a table and gathers rows
(memory-mapped, numba); ``create``/``create_dask`` write new tables, resumably; ``verify`` checks
them; ``safetensors`` streams them to and from safetensors files.
"""

from __future__ import annotations

from .._lazy import lazy_exports

_EXPORTS = {
    "Table": ".table",
    "TableInfo": ".table",
    "open_table": ".table",
    "table_info": ".table",
    "create_table": ".create",
    "CreateResult": ".create",
    "verify_table": ".verify",
    "VerifyReport": ".verify",
    "export_safetensors": ".safetensors",
    "import_safetensors": ".safetensors",
    "decode_rows": ".dtypes",
    "encode_rows": ".dtypes",
    "to_torch": ".dtypes",
    "row_bytes": ".dtypes",
    "InitRecipe": ".rowinit",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
