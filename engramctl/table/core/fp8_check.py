"""Finding invalid fp8 rows: NaN value codes (``0x7F``/``0xFF``) and NaN scales (ue8m0 ``255``).

A checkpoint's e4m3 codes and E8M0 scales are taken as they are, except these: a NaN code or a
scale byte of 255 (NaN in E8M0) would turn a whole row into NaN on every engine, so an import
refuses them and names the first offending row. :func:`first_invalid_row_reference` is the
plain-numpy specification of the kernel.
"""

from __future__ import annotations

import numpy as np

from ..._numba import njit
from ...errors import EngramError

NAN_CODE = 0x7F  # e4m3fn NaN, with either sign bit
NAN_SCALE = 0xFF  # E8M0 NaN


class InvalidRowsError(EngramError):
    """Rows holding NaN codes or NaN scales (bad data, not a failed write)."""


def first_invalid_row_reference(rows: np.ndarray, dim: int) -> tuple[int, int]:
    """``(row, column)`` of the first NaN code or NaN scale in fp8 rows, or ``(-1, -1)``.

    >>> rows = np.zeros((3, 33), np.uint8); rows[2, 32] = 255
    >>> first_invalid_row_reference(rows, 32)
    (2, 32)
    """
    bad = np.zeros(rows.shape, dtype=bool)
    bad[:, :dim] = (rows[:, :dim] & 0x7F) == NAN_CODE
    bad[:, dim:] = rows[:, dim:] == NAN_SCALE
    if not bad.any():
        return -1, -1
    row, column = np.unravel_index(int(np.argmax(bad)), bad.shape)
    return int(row), int(column)


@njit(cache=True, nogil=True)
def _first_invalid_row_kernel(rows, dim):
    """rows (n, dim + dim/32) uint8 -> (row, column) of the first NaN code/scale, or (-1, -1)."""
    n, width = rows.shape
    for i in range(n):
        for j in range(dim):
            if rows[i, j] & 0x7F == 0x7F:
                return i, j
        for j in range(dim, width):
            if rows[i, j] == 0xFF:
                return i, j
    return -1, -1


def first_invalid_row(rows: np.ndarray, dim: int) -> tuple[int, int]:
    """The kernel's answer for C-contiguous uint8 fp8 rows ``[n, dim + dim/32]``."""
    rows = np.ascontiguousarray(rows)
    if rows.dtype != np.uint8 or rows.ndim != 2 or rows.shape[1] != dim + dim // 32:
        raise EngramError(f"fp8 rows must be uint8 [n, {dim + dim // 32}], got {rows.shape}")
    row, column = _first_invalid_row_kernel(rows, np.int64(dim))
    return int(row), int(column)


def check_fp8_rows(rows: np.ndarray, dim: int, *, first_row: int, where: str) -> None:
    """Raise naming the first row (``first_row`` + its index) holding a NaN code or scale."""
    row, column = first_invalid_row(rows, dim)
    if row < 0:
        return
    if column < dim:
        what = f"value {column} is a NaN code (0x{int(rows[row, column]):02X})"
    else:
        what = f"scale byte {column - dim} is 255 (NaN in E8M0)"
    raise InvalidRowsError(
        f"{where}: row {first_row + row}: {what}; a NaN row would poison every lookup of it, "
        "so the checkpoint is refused"
    )
