"""Storage dtypes of table rows: bytes per row, and encoding to and from float32.

float8_e4m3fn rows carry one ue8m0 (power-of-two exponent) scale byte per block of
``FP8_SCALE_BLOCK`` values, stored right after the row's values so one row is one contiguous read
(DeepSeek-V4.1 serving format: 256 values + 8 scale bytes).
"""

from __future__ import annotations

import numpy as np

from ..errors import UsageError

FP8_SCALE_BLOCK = 32
DTYPE_ITEMSIZE = {"float32": 4, "bfloat16": 2, "float16": 2, "float8_e4m3fn": 1}
DTYPES = tuple(DTYPE_ITEMSIZE)


def parse_dtype(name: str) -> str:
    """Validate a storage dtype name.

    >>> parse_dtype("bfloat16")
    'bfloat16'
    """
    aliases = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16", "fp8": "float8_e4m3fn"}
    name = aliases.get(name, name)
    if name not in DTYPE_ITEMSIZE:
        raise UsageError(f"unknown dtype {name!r}; expected one of: {', '.join(DTYPES)}")
    return name


def row_bytes(dim: int, dtype: str) -> int:
    """Bytes of one stored row.

    >>> row_bytes(256, "float8_e4m3fn"), row_bytes(64, "float32")
    (264, 256)
    """
    dtype = parse_dtype(dtype)
    if dim < 1:
        raise UsageError(f"dim must be at least 1, got {dim}")
    if dtype == "float8_e4m3fn":
        if dim % FP8_SCALE_BLOCK:
            raise UsageError(
                f"float8_e4m3fn rows need dim divisible by {FP8_SCALE_BLOCK}, got {dim}"
            )
        return dim + dim // FP8_SCALE_BLOCK
    return dim * DTYPE_ITEMSIZE[dtype]


def format_bytes(n: float) -> str:
    """Human-readable binary size.

    >>> format_bytes(98 * 2**30)
    '98.0 GiB'
    """
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"  # pragma: no cover


# ------------------------------------------------------------------------- storage layout
# numpy dtype a row is stored as; bfloat16 as its raw 16 bits, fp8 rows as bytes (values, scales).
STORAGE_DTYPE = {
    "float32": "float32",
    "bfloat16": "uint16",
    "float16": "float16",
    "float8_e4m3fn": "uint8",
}
FP8_MAX = 448.0  # largest finite float8_e4m3fn value
UE8M0_BIAS = 127  # a ue8m0 scale byte s means 2**(s - 127)


def storage_dtype(dtype: str) -> np.dtype:
    """The numpy dtype a table of logical ``dtype`` stores (and gathers) rows as.

    >>> storage_dtype("bfloat16")
    dtype('uint16')
    """
    return np.dtype(STORAGE_DTYPE[parse_dtype(dtype)])


def row_width(dim: int, dtype: str) -> int:
    """Elements of the storage dtype per stored row (fp8: values then scale bytes).

    >>> row_width(256, "float8_e4m3fn"), row_width(64, "bfloat16")
    (264, 64)
    """
    return row_bytes(dim, dtype) // storage_dtype(dtype).itemsize


# --------------------------------------------------------------------------------- bfloat16
def float32_to_bf16_bits(values: np.ndarray) -> np.ndarray:
    """Round float32 to bfloat16 (nearest, ties to even) and return the raw ``uint16`` bits.

    >>> float32_to_bf16_bits(np.array([1.0, -2.0], np.float32)).tolist()
    [16256, 49152]
    """
    bits = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32)
    rounded = (bits + np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16)
    nan = np.isnan(values)
    rounded = rounded.astype(np.uint16)
    if nan.any():  # keep NaN a (quiet) NaN instead of rounding its payload into infinity
        rounded[nan] = ((bits[nan] >> np.uint32(16)) | np.uint32(0x0040)).astype(np.uint16)
    return rounded


def bf16_bits_to_float32(bits: np.ndarray) -> np.ndarray:
    """Widen raw bfloat16 bits (``uint16``) to float32 exactly.

    >>> bf16_bits_to_float32(np.array([16256], np.uint16)).tolist()
    [1.0]
    """
    wide = np.asarray(bits, dtype=np.uint16).astype(np.uint32) << np.uint32(16)
    return wide.view(np.float32)


# -------------------------------------------------------------------------- float8 e4m3fn
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


def encode_rows(values: np.ndarray, dtype: str) -> np.ndarray:
    """Encode float rows ``[n, dim]`` to stored rows ``[n, row_width]`` of the storage dtype.

    float32/float16 round with numpy, bfloat16 rounds to nearest-even bits, float8_e4m3fn takes a
    ue8m0 scale per block of 32 values and appends the ``dim / 32`` scale bytes to each row.
    """
    dtype = parse_dtype(dtype)
    values = np.asarray(values, dtype=np.float32)
    if values.ndim != 2:
        raise UsageError(f"rows must be 2-D [n, dim], got shape {list(values.shape)}")
    if dtype == "float32":
        return np.ascontiguousarray(values)
    if dtype == "float16":
        with np.errstate(over="ignore"):
            return values.astype(np.float16)
    if dtype == "bfloat16":
        return float32_to_bf16_bits(values)
    row_bytes(values.shape[1], dtype)  # validates dim % 32
    from .fp8 import encode_fp8_rows  # numba kernel, imported on first use

    return encode_fp8_rows(values)


def encode_fp8_rows_reference(values: np.ndarray) -> np.ndarray:
    """Plain-numpy fp8 row encoding: the spec of :func:`engramctl.table.fp8.encode_fp8_rows`.

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


def decode_rows(raw: np.ndarray, dtype: str, dim: int) -> np.ndarray:
    """Decode stored rows ``[n, row_width]`` (as gathered) to float32 ``[n, dim]``.

    float32 input is returned without a copy.

    >>> decode_rows(encode_rows(np.ones((1, 32)), "float8_e4m3fn"), "float8_e4m3fn", 32)[0, :2]
    array([1., 1.], dtype=float32)
    """
    dtype = parse_dtype(dtype)
    raw = np.asarray(raw)
    expected = (row_width(dim, dtype),)
    if raw.ndim != 2 or raw.shape[1:] != expected or raw.dtype != storage_dtype(dtype):
        raise UsageError(
            f"expected stored {dtype} rows [n, {expected[0]}] of {storage_dtype(dtype)}, got "
            f"{list(raw.shape)} of {raw.dtype}"
        )
    if dtype in ("float32", "float16"):
        return raw.astype(np.float32, copy=False)  # float32 rows come back as they are
    if dtype == "bfloat16":
        return bf16_bits_to_float32(raw)
    n = raw.shape[0]
    values = fp8_e4m3fn_decode(raw[:, :dim]).reshape(n, -1, FP8_SCALE_BLOCK)
    scales = ue8m0_scales(raw[:, dim:])
    with np.errstate(over="ignore"):  # 448 * 2**127 is inf in float32, as on the engines
        return (values * scales[:, :, None]).reshape(n, dim)


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


def to_torch(raw: np.ndarray, dtype: str, dim: int):
    """View gathered rows as torch tensors without copying (torch is imported here, lazily).

    Returns one tensor ``[n, dim]`` of ``torch.float32``/``float16``/``bfloat16``, or for
    float8_e4m3fn a pair ``(values [n, dim] torch.float8_e4m3fn, scales [n, dim/32] uint8)``,
    both views into ``raw`` (strided: a row's values and scales sit side by side).
    """
    import torch

    dtype = parse_dtype(dtype)
    tensor = torch.from_numpy(np.asarray(raw))
    if dtype == "bfloat16":
        return tensor.view(torch.bfloat16)
    if dtype == "float8_e4m3fn":
        return tensor[:, :dim].view(torch.float8_e4m3fn), tensor[:, dim:]
    return tensor
