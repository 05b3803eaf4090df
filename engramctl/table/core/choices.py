"""The names table options accept: chunk compressors and init kinds.

Plain tuples with no heavy imports (rowinit pulls in numba), so the CLI builds its choices from
them at start-up without paying for the kernels.
"""

from __future__ import annotations

COMPRESSORS = ("none", "zstd")  # none keeps chunks memory-mappable
INIT_KINDS = ("normal", "uniform", "zeros")
