"""numba kernel that encodes float32 rows to float8_e4m3fn rows with ue8m0 block scales.

The numpy specification and test oracle is
:func:`engramctl.table.core.fp8.encode_fp8_rows_reference` (about 10x slower: it materializes
several temporaries per value). Same rounding: per block of 32 values the smallest power-of-two
scale with ``max|block| / scale <= 448``, then each scaled float32 value rounded to 3 mantissa
bits, nearest with ties to even, saturating at 448.
"""

from __future__ import annotations

import math

import numpy as np

from ..._numba import njit, prange
from ...errors import UsageError
from .fp8 import FP8_MAX, FP8_SCALE_BLOCK, UE8M0_BIAS


@njit(cache=True, inline="always")
def _block_scale(values, i, start):
    """ue8m0 scale byte of ``values[i, start:start+32]`` (NaN ignored; inf -> 254; 0 -> 0)."""
    amax = np.float32(0.0)
    for j in range(start, start + FP8_SCALE_BLOCK):
        a = abs(values[i, j])
        if a > amax:  # False for NaN
            amax = a
    if math.isinf(amax):
        return 254
    if amax == 0:
        return 0
    mantissa, exponent = math.frexp(np.float64(amax) / FP8_MAX)  # m * 2**e, m in [0.5, 1)
    if mantissa == 0.5:  # an exact power of two already fits
        exponent -= 1
    return min(max(exponent + UE8M0_BIAS, 1), 254)  # 0 means a zero scale to the engines


@njit(cache=True, inline="always")
def _e4m3_code(bits, magnitude):
    """float8_e4m3fn code (without sign) of a float32 given by its bits and magnitude."""
    m = bits & np.uint32(0x7FFFFFFF)
    if m > np.uint32(0x7F800000):  # NaN
        return 0x7F
    if m < np.uint32(0x3C800000):  # below 2**-6: e4m3 subnormals, multiples of 2**-9
        f = np.float64(magnitude) * 512.0
        code = math.floor(f)
        diff = f - code
        if diff > 0.5 or (diff == 0.5 and code % 2 == 1):  # ties to even
            code += 1.0
        return np.int64(code)
    # round the float32 mantissa to 3 bits (ties to even), then rebias the exponent 127 -> 7
    rounded = (m + np.uint32(0x7FFFF) + ((m >> 20) & np.uint32(1))) >> 20
    return min(np.int64(rounded) - ((127 - 7) << 3), 0x7E)  # saturate at 448


@njit(cache=True, parallel=True)
def _fp8_encode_kernel(values, out):
    """values (n, dim) float32; out (n, dim + dim/32) uint8: codes then scale bytes."""
    n, dim = values.shape
    for i in prange(n):
        scaled = np.empty(dim, np.float32)
        bits = scaled.view(np.uint32)
        for b in range(dim // FP8_SCALE_BLOCK):
            start = b * FP8_SCALE_BLOCK
            scale = _block_scale(values, i, start)
            out[i, dim + b] = scale
            factor = np.float32(math.ldexp(1.0, UE8M0_BIAS - scale))  # exact power of two
            for j in range(start, start + FP8_SCALE_BLOCK):
                scaled[j] = values[i, j] * factor
        for j in range(dim):
            code = np.uint8(_e4m3_code(bits[j], abs(scaled[j])))
            if code != 0x7F:  # NaN is always 0x7F, whatever its sign
                code |= np.uint8((bits[j] >> 24) & 0x80)
            out[i, j] = code


def encode_fp8_rows(values: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Encode float32 rows ``[n, dim]`` to fp8 rows ``[n, dim + dim/32]`` (values, scales)."""
    values = np.ascontiguousarray(values, dtype=np.float32)
    if values.ndim != 2 or values.shape[1] % FP8_SCALE_BLOCK:
        raise UsageError(
            f"fp8 rows must be [n, dim] with dim divisible by {FP8_SCALE_BLOCK}, got "
            f"{list(values.shape)}"
        )
    n, dim = values.shape
    if out is None:
        out = np.empty((n, dim + dim // FP8_SCALE_BLOCK), dtype=np.uint8)
    _fp8_encode_kernel(values, out)
    return out
