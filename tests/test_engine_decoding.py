"""fp8 rows decoded as the serving engines decode them (issue 24 §1, the docs' claims checked).

vLLM's lookup computes ``(float32(e4m3 code) * float32 with bits scale_byte << 23)`` and rounds it
to bfloat16; SGLang (fp8 tables) scales by ``torch.pow(2.0, scale_byte - 127.0)`` instead. The
claims: engramctl's ``decode_rows`` gives the engines' float32 values, rounding those to bfloat16
(``float32_to_bf16_bits``, nearest-even, as ``tensor.to(torch.bfloat16)``) gives vLLM's bf16 bits
for every code and scale byte, and SGLang differs only at scale byte 0 (2**-127, not 0).
"""

from __future__ import annotations

import numpy as np
import pytest

from engramctl.table.core.dtypes import decode_rows, float32_to_bf16_bits

torch = pytest.importorskip("torch")

DIM = 32  # one scale block per row: row r has scale byte r, and every one of the 256 codes


def _rows() -> np.ndarray:
    raw = np.empty((255, DIM * 8 + 8), dtype=np.uint8)  # dim 256: 8 blocks of 32 codes
    codes = np.arange(256, dtype=np.uint8)
    raw[:, : DIM * 8] = codes  # the 256 codes, once per row
    raw[:, DIM * 8 :] = np.arange(255, dtype=np.uint8)[:, None]  # scale byte = row (0..254)
    return raw


def _vllm_bf16(raw: np.ndarray) -> torch.Tensor:
    codes = torch.from_numpy(raw[:, :256].copy()).view(torch.float8_e4m3fn).float()
    bits = torch.from_numpy(raw[:, 256:].astype(np.int32) << 23)
    scale = bits.view(torch.float32).repeat_interleave(32, dim=1)
    return (codes * scale).to(torch.bfloat16)


def _sglang_bf16(raw: np.ndarray) -> torch.Tensor:
    codes = torch.from_numpy(raw[:, :256].copy()).view(torch.float8_e4m3fn).float()
    scale = torch.pow(2.0, torch.from_numpy(raw[:, 256:]).to(torch.float32) - 127.0)
    return (codes * scale.repeat_interleave(32, dim=1)).to(torch.bfloat16)


def _bits(values: torch.Tensor) -> np.ndarray:
    return values.view(torch.int16).numpy().view(np.uint16)


def test_decode_rows_rounded_to_bf16_is_vllms_bf16_bit_for_bit():
    raw = _rows()
    ours_f32 = decode_rows(raw, "float8_e4m3fn", 256)
    engine = _vllm_bf16(raw)
    # float32 first: the engines' product exactly (NaN codes 0x7F/0xFF are NaN on both sides)
    engine_f32 = (
        torch.from_numpy(raw[:, :256].copy()).view(torch.float8_e4m3fn).float()
        * torch.from_numpy(raw[:, 256:].astype(np.int32) << 23)
        .view(torch.float32)
        .repeat_interleave(32, dim=1)
    ).numpy()
    np.testing.assert_array_equal(ours_f32, engine_f32)
    ours, theirs = float32_to_bf16_bits(ours_f32), _bits(engine)
    nan = np.isnan(ours_f32)
    assert nan.sum() == 2 * 255 and torch.isnan(engine).numpy()[nan].all()
    np.testing.assert_array_equal(ours[~nan], theirs[~nan])
    assert ((ours[nan] & 0x7F80) == 0x7F80).all() and (ours[nan] & 0x007F).all()  # quiet NaN


def test_sglang_differs_only_at_scale_byte_zero():
    raw = _rows()
    vllm, sglang = _bits(_vllm_bf16(raw)), _bits(_sglang_bf16(raw))
    finite = ~np.isnan(decode_rows(raw, "float8_e4m3fn", 256))
    differ = (vllm != sglang) & finite
    assert np.flatnonzero(differ.any(axis=1)).tolist() == [0]  # the row of scale byte 0
    assert (vllm[0][finite[0]] & 0x7FFF == 0).all()  # vLLM (and engramctl): every value is 0
    largest = sglang[0][0x7E]  # code 0x7E = 448: 448 * 2**-127 in SGLang, a bf16 subnormal
    assert largest != 0 and float(
        torch.tensor(int(largest), dtype=torch.int16).view(torch.bfloat16)
    ) == pytest.approx(448 * 2.0**-127, rel=1e-2)
