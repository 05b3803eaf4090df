"""The Engram module against a plain-torch transcription of the reference (DESIGN.md's formulas).

The transcription uses torch's own modules the way the reference does: ``nn.RMSNorm(D)`` with
its default epsilon for the gate's key and query norms, ``nn.RMSNorm(D, eps=1e-5)`` in the short
convolution, ``nn.Conv1d`` depthwise with left padding, the gate
``sigmoid(sign(s) * sqrt(|s|))`` with ``s = <norm1(key), norm2(hidden)> / sqrt(D)``. Weights are
copied across and the outputs must be bit-identical.
"""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from engramctl.model.transformer import Engram, ModelConfig  # noqa: E402


class ReferenceShortConv(nn.Module):
    def __init__(self, hidden_size, kernel_size=4, dilation=1, norm_eps=1e-5, hc_mult=4):
        super().__init__()
        total = hidden_size * hc_mult
        self.conv = nn.Conv1d(
            total,
            total,
            kernel_size=kernel_size,
            groups=total,
            bias=False,
            padding=(kernel_size - 1) * dilation,
            dilation=dilation,
        )
        self.norms = nn.ModuleList([nn.RMSNorm(hidden_size, eps=norm_eps) for _ in range(hc_mult)])
        self.act_fn = nn.SiLU()

    def forward(self, x):
        B, T, G, C = x.shape
        x_norm = torch.cat([self.norms[i](x[:, :, i, :]) for i in range(G)], dim=-1)
        y = self.conv(x_norm.transpose(1, 2))[..., :T]
        return self.act_fn(y).transpose(1, 2).view(B, T, G, C).contiguous()


class ReferenceEngram(nn.Module):
    def __init__(self, hidden_size, memory_dim, hc_mult, max_ngram, short_conv=True):
        super().__init__()
        self.hidden_size, self.hc_mult = hidden_size, hc_mult
        self.short_conv = (
            ReferenceShortConv(hidden_size, 4, max_ngram, hc_mult=hc_mult) if short_conv else None
        )
        self.value_proj = nn.Linear(memory_dim, hidden_size)
        self.key_projs = nn.ModuleList([nn.Linear(memory_dim, hidden_size) for _ in range(hc_mult)])
        self.norm1 = nn.ModuleList([nn.RMSNorm(hidden_size) for _ in range(hc_mult)])
        self.norm2 = nn.ModuleList([nn.RMSNorm(hidden_size) for _ in range(hc_mult)])

    def forward(self, hidden_states, embeddings):
        gates = []
        for hc_idx in range(self.hc_mult):
            normed_key = self.norm1[hc_idx](self.key_projs[hc_idx](embeddings))
            normed_query = self.norm2[hc_idx](hidden_states[:, :, hc_idx, :])
            gate = (normed_key * normed_query).sum(dim=-1) / math.sqrt(self.hidden_size)
            gate = gate.abs().clamp_min(1e-6).sqrt() * gate.sign()
            gates.append(gate.sigmoid().unsqueeze(-1))
        gates = torch.stack(gates, dim=2)
        value = gates * self.value_proj(embeddings).unsqueeze(2)
        if self.short_conv is None:
            return value
        return value + self.short_conv(value)


def copy_into_reference(ours: Engram, ref: ReferenceEngram) -> None:
    names = {"key_norms": "norm1", "hidden_norms": "norm2"}
    state = {}
    for name, value in ours.state_dict().items():
        head, _, rest = name.partition(".")
        state[f"{names.get(head, head)}.{rest}"] = value
    ref.load_state_dict(state, strict=True)


@pytest.mark.parametrize("hc_mult", [1, 4])
@pytest.mark.parametrize("short_conv", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_engram_is_bit_identical_to_the_reference(hc_mult, short_conv, dtype):
    torch.manual_seed(hc_mult)
    D, heads, dim, max_ngram = 16, 4, 6, 3
    config = ModelConfig(
        vocab_size=10,
        n_embd=D,
        n_head=2,
        hc_mult=hc_mult,
        engram_layers=(0,),
        engram_heads=heads,
        engram_dim=dim,
        max_ngram=max_ngram,
        short_conv=short_conv,
    )
    ours = Engram(config).to(dtype)
    with torch.no_grad():  # non-trivial weights everywhere (norm scales, conv taps, biases)
        for param in ours.parameters():
            param.copy_(torch.randn_like(param) * 0.5 + (1.0 if param.dim() == 1 else 0.0))
    ref = ReferenceEngram(D, heads * dim, hc_mult, max_ngram, short_conv=short_conv).to(dtype)
    copy_into_reference(ours, ref)
    rows = torch.randn(3, 11, heads * dim, dtype=dtype)
    # tiny hidden states: the norms' epsilon matters (1e-5 and the dtype's eps differ here)
    hidden = (
        torch.randn(3, 11, hc_mult, D, dtype=dtype)
        * torch.logspace(-4, 0, 11).to(dtype)[None, :, None, None]
    )
    expected = ref(hidden, rows)
    got = ours(rows, hidden)
    assert got.dtype == dtype
    assert torch.equal(got, expected)


def test_the_old_epsilon_would_differ():
    """The comparison above can fail: 1e-5 in the gate norms changes the output."""
    torch.manual_seed(0)
    config = ModelConfig(
        vocab_size=10, n_embd=16, n_head=2, engram_layers=(0,), engram_heads=2, engram_dim=4
    )
    legacy = ModelConfig.from_dict(
        {k: v for k, v in config.to_dict().items() if k != "gate_norm_eps"}
    )
    assert legacy.gate_norm_eps == 1e-5 and config.gate_norm_eps is None
    ours, old = Engram(config), Engram(legacy)
    old.load_state_dict(ours.state_dict())
    rows = torch.randn(2, 5, 8)
    hidden = torch.randn(2, 5, 1, 16) * 1e-3
    assert not torch.equal(ours.gates(rows, hidden), old.gates(rows, hidden))


def test_no_short_conv_has_no_conv_parameters():
    base = dict(vocab_size=10, n_embd=16, n_head=2, engram_layers=(0,), engram_heads=2)
    with_conv = Engram(ModelConfig(**base, engram_dim=4))
    without = Engram(ModelConfig(**base, engram_dim=4, short_conv=False))
    names = {n for n, _ in without.named_parameters()}
    assert not any(n.startswith("short_conv") for n in names)
    assert {n for n, _ in with_conv.named_parameters()} - names == {
        n for n, _ in with_conv.named_parameters() if n.startswith("short_conv")
    }
