"""The reference model's parts against hand-computed or plain-torch versions."""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")

from engramctl.errors import UsageError  # noqa: E402
from engramctl.model.transformer import (  # noqa: E402
    DecodeCache,
    Engram,
    EngramLM,
    ModelConfig,
    RMSNorm,
    ShortConv,
    signed_sqrt,
)


def tiny_config(**overrides) -> ModelConfig:
    fields = dict(
        vocab_size=50,
        output_vocab_size=30,
        n_layer=3,
        n_head=2,
        n_embd=8,
        block_size=16,
        engram_layers=(1,),
        engram_heads=4,
        engram_dim=3,
        max_ngram=3,
    )
    fields.update(overrides)
    return ModelConfig(**fields)


def test_rmsnorm_hand_worked():
    norm = RMSNorm(2)
    x = torch.tensor([[3.0, 4.0]])  # rms = sqrt(12.5)
    expected = x / math.sqrt(12.5 + 1e-5)
    torch.testing.assert_close(norm(x), expected)


def test_signed_sqrt_values():
    out = signed_sqrt(torch.tensor([4.0, -9.0, 0.25]))
    torch.testing.assert_close(out, torch.tensor([2.0, -3.0, 0.5]))


def test_short_conv_matches_loop_and_is_causal():
    torch.manual_seed(0)
    B, T, G, C, dil = 2, 11, 2, 3, 3
    conv = ShortConv(C, hc_mult=G, kernel_size=4, dilation=dil)
    x = torch.randn(B, T, G, C)
    y = conv(x)
    normed = torch.cat([conv.norms[g](x[:, :, g]) for g in range(G)], dim=-1)  # (B, T, G*C)
    w = conv.conv.weight[:, 0, :]  # (G*C, 4): tap j multiplies x[t - (3 - j) * dil]
    expected = torch.zeros(B, T, G * C)
    for t in range(T):
        for j in range(4):
            src = t - (3 - j) * dil
            if src >= 0:
                expected[:, t] += w[:, j] * normed[:, src]
    expected = torch.nn.functional.silu(expected).reshape(B, T, G, C)
    torch.testing.assert_close(y, expected, rtol=1e-5, atol=1e-6)
    x2 = x.clone()
    x2[:, 7:] += 5.0  # the future must not change the past
    torch.testing.assert_close(conv(x2)[:, :7], y[:, :7])


def test_engram_gate_and_output_by_hand():
    torch.manual_seed(1)
    config = tiny_config(hc_mult=2, engram_value_zero_init=False)
    module = Engram(config)
    rows = torch.randn(2, 5, config.engram_heads * config.engram_dim)
    hidden = torch.randn(2, 5, 2, config.n_embd)
    out = module(rows, hidden)
    eps = torch.finfo(torch.float32).eps  # the reference's nn.RMSNorm(D) default
    for g in range(2):
        key = module.key_projs[g](rows)
        key = key / torch.sqrt(key.pow(2).mean(-1, keepdim=True) + eps)
        query = hidden[:, :, g]
        query = query / torch.sqrt(query.pow(2).mean(-1, keepdim=True) + eps)
        s = (key * query).sum(-1) / math.sqrt(config.n_embd)
        gate = torch.sigmoid(torch.sign(s) * torch.sqrt(s.abs()))
        torch.testing.assert_close(module.last_gate[:, :, g], gate, rtol=1e-5, atol=1e-6)
    value = module.last_gate.unsqueeze(-1) * module.value_proj(rows).unsqueeze(2)
    torch.testing.assert_close(out, value + module.short_conv(value))


def test_zero_init_engram_model_starts_as_the_baseline():
    torch.manual_seed(0)
    base = EngramLM(tiny_config(engram_layers=()))
    model = EngramLM(tiny_config())
    model.load_state_dict(base.state_dict(), strict=False)
    idx = torch.randint(0, 50, (2, 9))
    rows = {1: torch.randn(2, 9, 12)}
    torch.testing.assert_close(model(idx, rows), base(idx))


def test_model_is_causal_and_shapes():
    torch.manual_seed(0)
    model = EngramLM(tiny_config(engram_value_zero_init=False)).eval()
    idx = torch.randint(0, 50, (2, 10))
    rows = {1: torch.randn(2, 10, 12)}
    logits = model(idx, rows)
    assert logits.shape == (2, 10, 30)
    idx2, rows2 = idx.clone(), {1: rows[1].clone()}
    idx2[:, 6:] = 3
    rows2[1][:, 6:] = 0.0
    torch.testing.assert_close(model(idx2, rows2)[:, :6], logits[:, :6])
    assert set(model.last_gates()) == {1}


@pytest.mark.parametrize("hc_mult", [1, 4])
@pytest.mark.parametrize("short_conv", [True, False])
def test_decode_cache_gives_the_full_forward_pass(hc_mult, short_conv):
    """Feeding a sequence in pieces through a DecodeCache (a prefill, single tokens, a piece of
    three: the masked path) gives the logits of one forward pass over the whole sequence."""
    torch.manual_seed(1)
    config = tiny_config(engram_value_zero_init=False, hc_mult=hc_mult, short_conv=short_conv)
    model = EngramLM(config).eval()
    idx = torch.randint(0, 50, (2, 16))
    rows = {1: torch.randn(2, 16, 12)}
    with torch.inference_mode():
        whole = model(idx, rows)
        cache, pieces = DecodeCache(config.n_layer), []
        for start, stop in ((0, 5), (5, 6), (6, 7), (7, 10), (10, 11), (11, 16)):
            pieces.append(model(idx[:, start:stop], {1: rows[1][:, start:stop]}, cache))
    assert cache.length == 16
    torch.testing.assert_close(torch.cat(pieces, dim=1), whole, rtol=1e-5, atol=1e-5)
    # the cache really is used: a piece fed without it sees positions 0.. and differs
    alone = model(idx[:, 10:11], {1: rows[1][:, 10:11]})
    assert not torch.allclose(alone, whole[:, 10:11], atol=1e-3)
    with pytest.raises(UsageError, match="exceeds"):
        model(idx[:, :1], {1: rows[1][:, :1]}, cache)  # the window is full


def test_depth_must_exceed_engram_layers():
    with pytest.raises(UsageError, match="--depth 16"):
        tiny_config(n_layer=4, engram_layers=(1, 15))


def test_engram_model_needs_rows():
    model = EngramLM(tiny_config())
    with pytest.raises(UsageError, match="table rows"):
        model(torch.zeros(1, 3, dtype=torch.long))


def test_config_round_trip():
    config = tiny_config(hc_mult=2, extra={"note": "x"})
    assert ModelConfig.from_dict(config.to_dict()) == config
    with pytest.raises(UsageError, match="unknown fields"):
        ModelConfig.from_dict({**config.to_dict(), "bogus": 1})
