"""The count memory: next-token counts in the Engram layout, mixed into a model's output.

- :mod:`.reference`: the plain estimator (exact dicts), the specification and test oracle;
- :mod:`.smoothing`: the estimator's formula (interpolated absolute discounting, count-min over
  heads) as a numba query kernel and a numpy whole-distribution function;
- :mod:`.store`: the memory on disk (zarr group metadata + memory-mapped arrays), verify, info;
- :mod:`.build`: ``build-counts``, one streaming pass with the SpaceSaving kernel;
- :mod:`.build_dask`: the same build on Dask workers (``--scheduler``), bit for bit;
- :mod:`.gate`: λ(context), fitted at build time on a held-out slice;
- :mod:`.query`: :class:`~.query.CountsModel`, scoring raw-id streams and whole distributions.

See docs/counts.md.
"""

from .build import BuildCountsJob, BuildCountsReport, build_counts
from .gate import check_mix
from .query import CountsModel
from .store import CountsStore, describe_counts, is_counts_store, open_counts, verify_counts

__all__ = [
    "BuildCountsJob", "BuildCountsReport", "build_counts", "check_mix", "CountsModel",
    "CountsStore", "describe_counts", "is_counts_store", "open_counts", "verify_counts",
]  # fmt: skip
