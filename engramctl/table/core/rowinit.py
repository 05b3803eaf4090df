"""Deterministic initial values of table rows: a counter-based generator, numba and numpy.

Every value is a pure function of ``(seed, layer, row, column)``, so a table's init is the same
whatever the chunk size, the number of workers, or the order chunks are written in, and a lazy
table can produce the init values of any single row on demand.

The generator is splitmix64 used as a counter-based stream (the ``i``-th output of the splitmix64
sequence started at ``key`` is ``mix(key + (i + 1) * GAMMA)``):

* ``key = mix(mix(seed + GAMMA) ^ layer + GAMMA)`` - one stream per (seed, layer);
* element ``(row, col)`` of a ``dim``-wide layer has counter ``c = row * dim + col``;
  ``u(i) = ((mix(key + i * GAMMA) >> 11) + 0.5) / 2**53`` in (0, 1) (uint64, wrapping);
* ``normal``: elements ``2q`` and ``2q + 1`` share one Box-Muller draw, ``u1 = u(2q + 1)``,
  ``u2 = u(2q + 2)`` with ``q = c >> 1``: ``std * sqrt(-2 ln u1) * cos(2 pi u2)`` for even ``c``,
  ``... * sin(2 pi u2)`` for odd ``c`` (float64, then float32);
  ``uniform``: ``std * sqrt(3) * (2 u(2c + 1) - 1)`` (same standard deviation as ``normal``);
  ``zeros``: 0.

:func:`init_values_reference` is the readable numpy specification and the test oracle of
:func:`init_values`, which runs :func:`_init_rows_kernel` (numba, parallel over rows).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..._numba import njit, prange
from ...errors import UsageError
from .choices import INIT_KINDS

GAMMA = 0x9E3779B97F4A7C15  # splitmix64 increment (2**64 / golden ratio, odd)
MIX1 = 0xBF58476D1CE4E5B9
MIX2 = 0x94D049BB133111EB
_KIND_CODE = {kind: code for code, kind in enumerate(INIT_KINDS)}
ALGORITHM = "splitmix64-counter-v1"  # recorded in table metadata; bump if the recipe changes


@dataclass(frozen=True)
class InitRecipe:
    """How a table's rows are initialized (frozen; JSON via ``to_dict``/``from_dict``)."""

    kind: str = "normal"  # normal | uniform | zeros
    std: float = 0.02  # standard deviation of normal and uniform values
    seed: int = 0  # with the layer id, selects the random stream

    def __post_init__(self):
        if self.kind not in INIT_KINDS:
            raise UsageError(f"init must be one of {', '.join(INIT_KINDS)}, got {self.kind!r}")
        if not (math.isfinite(self.std) and self.std >= 0):
            raise UsageError(f"--std must be a finite number >= 0, got {self.std}")
        if not 0 <= self.seed < 2**63:
            raise UsageError(f"--init-seed must be in [0, 2**63), got {self.seed}")

    def to_dict(self) -> dict:
        return {"kind": self.kind, "std": self.std, "seed": self.seed, "algorithm": ALGORITHM}

    @classmethod
    def from_dict(cls, data: dict) -> InitRecipe:
        if data.get("algorithm", ALGORITHM) != ALGORITHM:
            raise UsageError(
                f"init algorithm {data.get('algorithm')!r} is unknown to this engramctl "
                f"(it knows {ALGORITHM!r}); upgrade engramctl"
            )
        return cls(kind=data["kind"], std=float(data["std"]), seed=int(data["seed"]))


# ------------------------------------------------------------------------ specification
def mix_reference(z: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer on uint64 arrays (wrapping): the specification of the kernel's
    ``_mix`` and the oracle of its tests."""
    z = (z ^ (z >> np.uint64(30))) * np.uint64(MIX1)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(MIX2)
    return z ^ (z >> np.uint64(31))


def stream_key(seed: int, layer_id: int) -> int:
    """The uint64 key of the (seed, layer) stream.

    >>> stream_key(0, 1) != stream_key(0, 2) != stream_key(1, 1)
    True
    """
    with np.errstate(over="ignore"):
        first = mix_reference(np.array([seed], np.uint64) + np.uint64(GAMMA))
        key = mix_reference((first ^ np.uint64(layer_id)) + np.uint64(GAMMA))
    return int(key[0])


def init_values_reference(
    recipe: InitRecipe, layer_id: int, row_ids: np.ndarray, dim: int
) -> np.ndarray:
    """Plain-numpy init values of ``row_ids`` of one layer -> float32 ``[n, dim]``."""
    rows = np.asarray(row_ids, dtype=np.uint64)[:, None]
    if recipe.kind == "zeros":
        return np.zeros((rows.shape[0], dim), np.float32)
    key = np.uint64(stream_key(recipe.seed, layer_id))
    counter = rows * np.uint64(dim) + np.arange(dim, dtype=np.uint64)[None, :]
    one, two, gamma = np.uint64(1), np.uint64(2), np.uint64(GAMMA)
    if recipe.kind == "uniform":
        with np.errstate(over="ignore"):
            h1 = mix_reference(key + (two * counter + one) * gamma)
        u1 = ((h1 >> np.uint64(11)).astype(np.float64) + 0.5) * 2.0**-53
        return (recipe.std * math.sqrt(3.0) * (2.0 * u1 - 1.0)).astype(np.float32)
    pair = counter >> one  # elements 2q and 2q + 1 share one Box-Muller draw
    with np.errstate(over="ignore"):
        h1 = mix_reference(key + (two * pair + one) * gamma)
        h2 = mix_reference(key + (two * pair + two) * gamma)
    u1 = ((h1 >> np.uint64(11)).astype(np.float64) + 0.5) * 2.0**-53
    u2 = ((h2 >> np.uint64(11)).astype(np.float64) + 0.5) * 2.0**-53
    radius = recipe.std * np.sqrt(-2.0 * np.log(u1))
    angle = 2.0 * np.pi * u2
    normal = np.where(counter & one, radius * np.sin(angle), radius * np.cos(angle))
    return normal.astype(np.float32)


# ------------------------------------------------------------------------------- kernel
@njit(cache=True, inline="always")
def _mix(z):
    z = (z ^ (z >> np.uint64(30))) * np.uint64(MIX1)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(MIX2)
    return z ^ (z >> np.uint64(31))


@njit(cache=True, inline="always")
def _init_row(key, kind, std, row, out_row):
    """Fill one row (``dim`` float32 values) of the (seed, layer) stream ``key``."""
    dim = out_row.shape[0]
    gamma = np.uint64(GAMMA)
    one = np.uint64(1)
    two = np.uint64(2)
    scale = 2.0**-53
    base = np.uint64(row) * np.uint64(dim)
    j = 0
    while j < dim:
        c = base + np.uint64(j)
        if kind == 1:
            h1 = _mix(key + (two * c + one) * gamma)
            u1 = (np.float64(h1 >> np.uint64(11)) + 0.5) * scale
            out_row[j] = np.float32(std * math.sqrt(3.0) * (2.0 * u1 - 1.0))
            j += 1
            continue
        q = c >> one  # the Box-Muller pair of elements 2q (cos) and 2q + 1 (sin)
        h1 = _mix(key + (two * q + one) * gamma)
        h2 = _mix(key + (two * q + two) * gamma)
        u1 = (np.float64(h1 >> np.uint64(11)) + 0.5) * scale
        u2 = (np.float64(h2 >> np.uint64(11)) + 0.5) * scale
        radius = std * math.sqrt(-2.0 * math.log(u1))
        angle = 2.0 * math.pi * u2
        if c & one:
            out_row[j] = np.float32(radius * math.sin(angle))
            j += 1
        else:
            out_row[j] = np.float32(radius * math.cos(angle))
            if j + 1 < dim:  # the pair's sine is the next element of this row
                out_row[j + 1] = np.float32(radius * math.sin(angle))
            j += 2


@njit(cache=True, parallel=True)
def _init_rows_kernel(key, kind, std, row_ids, out):
    """key uint64; kind 0 normal / 1 uniform; row_ids (n,) int64; out (n, dim) float32."""
    for i in prange(out.shape[0]):
        _init_row(key, kind, std, row_ids[i], out[i])


@njit(cache=True, nogil=True)
def _init_rows_serial_kernel(key, kind, std, row_ids, out):
    """:func:`_init_rows_kernel` on one thread without the GIL, for a pool of chunk writers
    (numba's default threading layer must not be entered from several threads at once)."""
    for i in range(out.shape[0]):
        _init_row(key, kind, std, row_ids[i], out[i])


# --------------------------------------------------------------------------- public API
def init_values(
    recipe: InitRecipe,
    layer_id: int,
    row_ids: np.ndarray,
    dim: int,
    out: np.ndarray | None = None,
    *,
    parallel: bool = True,
) -> np.ndarray:
    """Init values of the given rows of one layer, float32 ``[n, dim]``.

    Parameters
    ----------
    recipe : InitRecipe
        Kind, standard deviation and seed.
    layer_id : int
        The Engram layer (each layer has its own stream).
    row_ids : ndarray of int
        Rows of the layer table (``>= 0``).
    dim : int
        Values per row.
    out : ndarray, optional
        A C-contiguous float32 ``[n, dim]`` buffer to fill.
    parallel : bool
        Use all numba threads; ``False`` runs on the calling thread without holding the GIL
        (for thread pools that each fill one chunk).
    """
    row_ids = np.ascontiguousarray(row_ids, dtype=np.int64).reshape(-1)
    if row_ids.size and row_ids.min() < 0:
        raise UsageError(f"row ids must be >= 0, got {int(row_ids.min())}")
    if out is None:
        out = np.empty((row_ids.size, dim), dtype=np.float32)
    elif out.shape != (row_ids.size, dim) or out.dtype != np.float32 or not out.flags.c_contiguous:
        raise UsageError(f"out must be C-contiguous float32 [{row_ids.size}, {dim}]")
    if recipe.kind == "zeros":
        out[:] = 0
        return out
    key = np.uint64(stream_key(recipe.seed, layer_id))
    kernel = _init_rows_kernel if parallel else _init_rows_serial_kernel
    kernel(key, _KIND_CODE[recipe.kind], float(recipe.std), row_ids, out)
    return out
