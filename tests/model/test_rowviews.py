"""to_torch: gathered rows viewed as torch tensors, no copy, decoding as decode_rows does."""

from __future__ import annotations

import numpy as np
import pytest

from engramctl.table.core.dtypes import decode_rows, encode_rows

torch = pytest.importorskip("torch")

from engramctl.model.rowviews import to_torch  # noqa: E402


def test_to_torch_views_without_copy():
    rng = np.random.default_rng(4)
    stored = encode_rows(rng.standard_normal((5, 64)).astype(np.float32), "float8_e4m3fn")
    values, scales = to_torch(stored, "float8_e4m3fn", 64)
    assert values.dtype == torch.float8_e4m3fn and tuple(values.shape) == (5, 64)
    assert values.data_ptr() == stored.ctypes.data  # a view, not a copy
    decoded = values.float() * torch.exp2(scales.float() - 127).repeat_interleave(32, dim=1)
    np.testing.assert_array_equal(decoded.numpy(), decode_rows(stored, "float8_e4m3fn", 64))
    bf = encode_rows(rng.standard_normal((5, 8)).astype(np.float32), "bfloat16")
    tensor = to_torch(bf, "bfloat16", 8)
    assert tensor.dtype == torch.bfloat16 and tensor.data_ptr() == bf.ctypes.data
    assert to_torch(bf, "bf16", 8).dtype == torch.bfloat16  # the dtype's aliases too
    plain = rng.standard_normal((3, 4)).astype(np.float32)
    assert to_torch(plain, "float32", 4).data_ptr() == plain.ctypes.data
