"""Storage dtypes: fp8 e4m3fn with ue8m0 block scales, bfloat16, encode/decode of rows."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engramctl.errors import UsageError
from engramctl.table.core.dtypes import (
    bf16_bits_to_float32,
    decode_rows,
    encode_rows,
    float32_to_bf16_bits,
    row_width,
    storage_dtype,
)
from engramctl.table.core.fp8 import fp8_e4m3fn_decode, fp8_e4m3fn_encode, ue8m0_block_scales

torch = pytest.importorskip("torch")


def test_fp8_hand_worked_codes():
    # 1.0 = exponent 7 (bias 7), mantissa 0 -> 0b0_0111_000; 0.5 negative -> 0x80 | 0b0110_000
    values = np.array([1.0, -0.5, 448.0, 1000.0, 2.0**-9, 0.0, 1.0625, 1.1875], np.float32)
    # 1.0625 is halfway between 1.0 and 1.125: ties to even keeps 1.0 (code 56);
    # 1.1875 is halfway between 1.125 (57) and 1.25 (58): ties to even gives 58.
    assert fp8_e4m3fn_encode(values).tolist() == [56, 176, 126, 126, 1, 0, 56, 58]
    assert fp8_e4m3fn_encode(np.array([np.nan], np.float32)).tolist() == [0x7F]
    assert np.isnan(fp8_e4m3fn_decode(np.array([0x7F, 0xFF], np.uint8))).all()


def test_fp8_matches_torch_on_random_values():
    rng = np.random.default_rng(0)
    x = rng.standard_normal(50_000) * rng.choice([1e-4, 1e-2, 1.0, 50.0], 50_000)
    x = x.astype(np.float32)
    x = x[np.abs(x) <= 448]  # torch turns overflow into NaN; we saturate (scales avoid it)
    ours = fp8_e4m3fn_encode(x)
    theirs = torch.from_numpy(x).to(torch.float8_e4m3fn).view(torch.uint8).numpy()
    np.testing.assert_array_equal(ours, theirs)
    all_codes = np.arange(256, dtype=np.uint8)
    expected = torch.from_numpy(all_codes).view(torch.float8_e4m3fn).float().numpy()
    np.testing.assert_array_equal(fp8_e4m3fn_decode(all_codes), expected)


def test_bf16_matches_torch():
    rng = np.random.default_rng(1)
    x = (rng.standard_normal(50_000) * 10.0 ** rng.integers(-30, 30, 50_000)).astype(np.float32)
    theirs = torch.from_numpy(x).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    np.testing.assert_array_equal(float32_to_bf16_bits(x), theirs)
    back = torch.from_numpy(theirs.view(np.int16)).view(torch.bfloat16).float().numpy()
    np.testing.assert_array_equal(bf16_bits_to_float32(theirs), back)
    assert np.isnan(bf16_bits_to_float32(float32_to_bf16_bits(np.float32([np.nan])))).all()


def test_ue8m0_scales_hand_worked():
    block = np.zeros((3, 32), np.float32)
    block[0, 0] = 448.0  # fits exactly: scale 2**0 -> byte 127
    block[1, 5] = -449.0  # needs 2**1 -> 128
    block[2, :] = 0.0  # all zero: smallest scale byte
    assert ue8m0_block_scales(block).ravel().tolist() == [127, 128, 0]
    assert ue8m0_block_scales(np.full((1, 32), 0.02, np.float32)).tolist() == [[127 - 14]]


def test_fp8_rows_layout_and_accuracy():
    rng = np.random.default_rng(2)
    values = (rng.standard_normal((100, 256)) * 0.02).astype(np.float32)
    stored = encode_rows(values, "float8_e4m3fn")
    assert stored.shape == (100, 264) and stored.dtype == np.uint8
    assert row_width(256, "float8_e4m3fn") == 264
    # scales are the last 8 bytes of each row, one per block of 32 values
    np.testing.assert_array_equal(stored[:, 256:], ue8m0_block_scales(values))
    decoded = decode_rows(stored, "float8_e4m3fn", 256)
    # e4m3 keeps 3 mantissa bits: relative error <= 2**-4 for values in the normal range
    big = np.abs(values) > np.abs(values).max() / 16
    assert np.all(np.abs(decoded - values)[big] <= np.abs(values)[big] * 2.0**-4 + 1e-12)
    # decoded values survive another round trip exactly (the scale may halve when rounding
    # moved a block's max below a power of two, but the values stay representable)
    again = decode_rows(encode_rows(decoded, "float8_e4m3fn"), "float8_e4m3fn", 256)
    np.testing.assert_array_equal(again, decoded)


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16", "float8_e4m3fn"])
def test_decoded_rows_round_trip_exactly(dtype):
    rng = np.random.default_rng(3)
    values = rng.standard_normal((7, 64)).astype(np.float32)
    stored = encode_rows(values, dtype)
    assert stored.dtype == storage_dtype(dtype) and stored.shape == (7, row_width(64, dtype))
    decoded = decode_rows(stored, dtype, 64)
    np.testing.assert_array_equal(decode_rows(encode_rows(decoded, dtype), dtype, 64), decoded)


def test_decode_rejects_wrong_shapes():
    with pytest.raises(UsageError, match="expected stored float8_e4m3fn rows"):
        decode_rows(np.zeros((2, 64), np.uint8), "float8_e4m3fn", 64)
    with pytest.raises(UsageError, match="divisible by 32"):
        encode_rows(np.zeros((2, 48), np.float32), "float8_e4m3fn")


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(-1e4, 1e4, width=32), min_size=32, max_size=32), st.integers(-20, 20))
def test_fp8_scaling_invariance(values, exponent):
    """Scaling a row by a power of two changes only its scale bytes."""
    row = np.array([values], np.float32)
    factor = np.float32(2.0**exponent)
    a, b = encode_rows(row, "float8_e4m3fn"), encode_rows(row * factor, "float8_e4m3fn")
    if np.abs(row).max() > 2.0**-100:
        assert a[0, :32].tolist() == b[0, :32].tolist()
        assert int(b[0, 32]) - int(a[0, 32]) == exponent


def test_fp8_kernel_matches_numpy_reference():
    from engramctl.table.core._fp8_kernel import encode_fp8_rows
    from engramctl.table.core.fp8 import encode_fp8_rows_reference

    rng = np.random.default_rng(5)
    magnitudes = rng.choice([1e-30, 1e-6, 0.02, 1.0, 1e4, 1e36], (400, 1))
    x = (rng.standard_normal((400, 128)) * magnitudes).astype(np.float32)
    x[0, :5] = [np.nan, -0.0, 0.0, 1e38, -1e-45]
    x[1, :] = 0.0
    x[2, :32] = np.nan
    x[3, 3], x[4, 40] = np.inf, -np.inf
    x[5, :32] = 448.0 * 2.0**-20  # exact powers of two at the block max
    with np.errstate(over="ignore", invalid="ignore"):
        expected = encode_fp8_rows_reference(x)
    np.testing.assert_array_equal(encode_fp8_rows(x), expected)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(allow_nan=True, allow_infinity=True, width=32), min_size=64, max_size=64))
def test_fp8_kernel_matches_reference_on_any_floats(values):
    from engramctl.table.core._fp8_kernel import encode_fp8_rows
    from engramctl.table.core.fp8 import encode_fp8_rows_reference

    x = np.array([values], np.float32)
    with np.errstate(over="ignore", invalid="ignore"):
        expected = encode_fp8_rows_reference(x)
    np.testing.assert_array_equal(encode_fp8_rows(x), expected)
