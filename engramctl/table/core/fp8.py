"""float8_e4m3fn with ue8m0 block scales: the constants and the plain-numpy specification.

A stored fp8 row is ``dim`` e4m3fn codes followed by one ue8m0 scale byte per block of
``FP8_SCALE_BLOCK`` values. :func:`encode_fp8_rows_reference` is the oracle of the numba kernel in
:mod:`engramctl.table.core._fp8_kernel`; :mod:`engramctl.table.core.dtypes` encodes and decodes rows
of every storage dtype on top of this module.
"""

from __future__ import annotations

import numpy as np

FP8_SCALE_BLOCK = 32
FP8_MAX = 448.0  # largest finite float8_e4m3fn value
UE8M0_BIAS = 127  # a ue8m0 scale byte s means 2**(s - 127) (s = 0: a zero scale)


def _fp8_lut() -> np.ndarray:
    """float32 value of each of the 256 float8_e4m3fn bit patterns (0x7F and 0xFF are NaN)."""
    codes = np.arange(256, dtype=np.int64)
    sign = np.where(codes & 0x80, -1.0, 1.0)
    exponent = (codes >> 3) & 0xF
    mantissa = codes & 0x7
    normal = (1.0 + mantissa / 8.0) * np.exp2(exponent - 7.0)
    subnormal = (mantissa / 8.0) * 2.0**-6
    values = sign * np.where(exponent == 0, subnormal, normal)
    values[(codes & 0x7F) == 0x7F] = np.nan
    return values.astype(np.float32)


FP8_LUT = _fp8_lut()


def fp8_e4m3fn_encode(values: np.ndarray) -> np.ndarray:
    """Round float32 to float8_e4m3fn bits (nearest, ties to even; saturates at +-448).

    >>> fp8_e4m3fn_encode(np.array([1.0, -0.5, 448.0, 1000.0], np.float32)).tolist()
    [56, 176, 126, 126]
    """
    x = np.asarray(values, dtype=np.float32)
    sign = (x.view(np.uint32) >> np.uint32(24)).astype(np.uint8) & np.uint8(0x80)
    mag = np.abs(x)
    bits = mag.view(np.uint32)
    # normal range: round float32 to 3 mantissa bits, then rebias the exponent (127 -> 7)
    rounded = (bits + np.uint32(0x7FFFF) + ((bits >> np.uint32(20)) & np.uint32(1))) >> np.uint32(
        20
    )
    normal = rounded.astype(np.int64) - ((127 - 7) << 3)
    # subnormal range (below 2**-6): multiples of 2**-9, rint rounds ties to even
    small = np.where(mag < 2.0**-6, mag, 0.0)  # NaN and large values would not fit the cast
    subnormal = np.rint(small.astype(np.float64) * 2.0**9).astype(np.int64)
    code = np.where(mag < 2.0**-6, subnormal, normal)
    code = np.minimum(code, 0x7E)  # saturate: 0x7E is 448, the largest finite value
    out = code.astype(np.uint8) | sign
    nan = np.isnan(x)
    if nan.any():
        out[nan] = 0x7F
    return out


def fp8_e4m3fn_decode(codes: np.ndarray) -> np.ndarray:
    """float32 values of float8_e4m3fn bits (exact).

    >>> fp8_e4m3fn_decode(np.array([56, 176, 126], np.uint8)).tolist()
    [1.0, -0.5, 448.0]
    """
    return FP8_LUT[np.asarray(codes, dtype=np.uint8)]


def ue8m0_block_scales(values: np.ndarray) -> np.ndarray:
    """Scale byte per block of ``FP8_SCALE_BLOCK`` values: the smallest power of two ``2**e``
    with ``max|block| / 2**e <= 448``, stored as ``e + 127`` (``[..., dim / 32]`` uint8).

    NaN is ignored for the block maximum; an all-zero (or all-NaN) block gets 0, a block with
    an infinity 254, any other block at least 1 (engines decode 0 as a zero scale).

    >>> ue8m0_block_scales(np.full((1, 32), 448.0, np.float32)).tolist()
    [[127]]
    """
    blocks = np.asarray(values, dtype=np.float32)
    blocks = blocks.reshape(*blocks.shape[:-1], -1, FP8_SCALE_BLOCK)
    amax = np.fmax.reduce(np.abs(blocks), axis=-1).astype(np.float64)  # NaN ignored
    finite = np.isfinite(amax) & (amax > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        mantissa, exponent = np.frexp(np.where(finite, amax, 1.0) / FP8_MAX)
    exponent = np.where(mantissa == 0.5, exponent - 1, exponent)  # exact powers of two
    exponent = np.where(finite, exponent, np.where(np.isinf(amax), 254, 0) - UE8M0_BIAS)
    # a nonzero block gets at least 1: engines decode byte 0 as a zero scale
    return np.clip(exponent + UE8M0_BIAS, np.where(finite, 1, 0), 254).astype(np.uint8)


def encode_fp8_rows_reference(values: np.ndarray) -> np.ndarray:
    """Plain-numpy fp8 row encoding: the spec of
    :func:`engramctl.table.core._fp8_kernel.encode_fp8_rows`.

    >>> encode_fp8_rows_reference(np.full((1, 32), 0.5, np.float32))[0, [0, 32]].tolist()
    [120, 118]
    """
    values = np.asarray(values, dtype=np.float32)
    n, dim = values.shape
    scales = ue8m0_block_scales(values)  # (n, dim/32)
    factor = np.exp2(UE8M0_BIAS - scales.astype(np.float32))  # 1 / scale, exact power of two
    with np.errstate(over="ignore"):
        scaled = values.reshape(n, -1, FP8_SCALE_BLOCK) * factor[:, :, None]
    out = np.empty((n, dim + dim // FP8_SCALE_BLOCK), dtype=np.uint8)
    out[:, :dim] = fp8_e4m3fn_encode(scaled.reshape(n, dim))
    out[:, dim:] = scales
    return out


def ue8m0_scales(scale_bytes: np.ndarray) -> np.ndarray:
    """float32 scales of ue8m0 bytes exactly as the serving engines compute them: the byte
    shifted into a float32 exponent (bits ``e << 23``), so ``e`` means ``2**(e - 127)`` for
    ``e`` in 1..254, and ``e = 0`` gives 0.0 (not the subnormal ``2**-127``).

    >>> ue8m0_scales(np.array([127, 128, 0], np.uint8)).tolist()
    [1.0, 2.0, 0.0]
    """
    return (np.asarray(scale_bytes, dtype=np.uint8).astype(np.uint32) << np.uint32(23)).view(
        np.float32
    )
