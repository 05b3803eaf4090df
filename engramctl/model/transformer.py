"""The reference transformer with Engram modules (nanoGPT order: norm ... config, model).

The Engram module follows the reference semantics (DESIGN.md, "Reference model and paging"): the
rows of every hash head (all n-gram orders) are concatenated, a value projection and, per residual
branch, a key projection read them; the gate is
``sigmoid(signed_sqrt(<RMSNorm(key), RMSNorm(hidden)> / sqrt(d)))``; a depthwise causal short
convolution (RMSNorm, kernel 4, dilation ``max_ngram``, SiLU) of the gated value is added to it
(unless ``short_conv`` is off, DeepSeek-V4.1's variant); the block adds the result to its residual
stream before attention. The gate's RMSNorms use torch's default epsilon like the reference's
``nn.RMSNorm(D)`` (the dtype's machine epsilon); the short convolution's use 1e-5, as there.

The model never owns table rows: callers pass the looked-up rows, ``{layer_id: (B, T, H*d)}``,
so that the same forward pass runs from a resident table, a paged one, or trainable embeddings.
This module imports torch at import time; import it lazily from the CLI.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UsageError

LEGACY_GATE_NORM_EPS = 1e-5  # gate norms of checkpoints whose config predates gate_norm_eps


class RMSNorm(nn.Module):
    """Root-mean-square norm with a learned scale: ``x / rms(x) * weight``.

    ``eps=None`` is torch's default (``nn.RMSNorm``): the machine epsilon of the input's dtype.
    """

    def __init__(self, dim: int, eps: float | None = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)


class ShortConv(nn.Module):
    """Per branch RMSNorm, depthwise causal conv1d (kernel ``k``, dilation ``dil``), SiLU.

    Input and output ``(B, T, HC, D)``; position ``t`` sees ``t, t-dil, ..., t-(k-1)*dil``.
    """

    def __init__(self, dim: int, hc_mult: int = 1, kernel_size: int = 4, dilation: int = 1):
        super().__init__()
        channels = dim * hc_mult
        self.norms = nn.ModuleList([RMSNorm(dim) for _ in range(hc_mult)])
        self.conv = nn.Conv1d(
            channels,
            channels,
            kernel_size,
            groups=channels,
            bias=False,
            padding=(kernel_size - 1) * dilation,
            dilation=dilation,
        )

    def forward(self, x: torch.Tensor, cache: dict | None = None) -> torch.Tensor:
        """``cache`` (decoding): a dict holding the normed inputs of the positions before
        ``x`` that the kernel still reaches; read and updated in place."""
        B, T, G, C = x.shape
        normed = torch.cat([self.norms[g](x[:, :, g, :]) for g in range(G)], dim=-1)  # (B, T, G*C)
        if cache is not None:
            reach = (self.conv.kernel_size[0] - 1) * self.conv.dilation[0]
            past = cache.get("conv")
            if past is not None:
                normed = torch.cat([past, normed], dim=1)
            cache["conv"] = normed[:, -reach:]
        y = self.conv(normed.transpose(1, 2))[..., : normed.shape[1]]  # left padding: causal
        return F.silu(y[..., -T:]).transpose(1, 2).reshape(B, T, G, C)


def signed_sqrt(x: torch.Tensor) -> torch.Tensor:
    """``sign(x) * sqrt(|x|)`` with a floor that keeps the gradient finite at 0."""
    return x.abs().clamp_min(1e-6).sqrt() * x.sign()


class Engram(nn.Module):
    """Gated memory read: rows ``(B, T, H*d)``, hidden ``(B, T, HC, D)`` -> ``(B, T, HC, D)``."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        D, hc = config.n_embd, config.hc_mult
        memory_dim = config.engram_heads * config.engram_dim
        eps = config.gate_norm_eps
        self.value_proj = nn.Linear(memory_dim, D)
        self.key_projs = nn.ModuleList([nn.Linear(memory_dim, D) for _ in range(hc)])
        self.key_norms = nn.ModuleList([RMSNorm(D, eps) for _ in range(hc)])
        self.hidden_norms = nn.ModuleList([RMSNorm(D, eps) for _ in range(hc)])
        self.short_conv = (
            ShortConv(D, hc, kernel_size=4, dilation=config.max_ngram)
            if config.short_conv
            else None
        )
        self.sqrt_d = math.sqrt(D)
        self.last_gate: torch.Tensor | None = None  # (B, T, HC), kept for --explain

    def gates(self, rows: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        """Gate per position and branch, ``(B, T, HC, 1)`` in (0, 1)."""
        gates = []
        for g in range(hidden.shape[2]):
            key = self.key_norms[g](self.key_projs[g](rows))
            query = self.hidden_norms[g](hidden[:, :, g, :])
            score = (key * query).sum(-1) / self.sqrt_d  # (B, T)
            gates.append(torch.sigmoid(signed_sqrt(score)))
        return torch.stack(gates, dim=2).unsqueeze(-1)

    def forward(
        self, rows: torch.Tensor, hidden: torch.Tensor, cache: dict | None = None
    ) -> torch.Tensor:
        gate = self.gates(rows, hidden)
        self.last_gate = gate.detach().squeeze(-1)
        value = gate * self.value_proj(rows).unsqueeze(2)  # (B, T, HC, D)
        if self.short_conv is None:  # DeepSeek-V4.1's variant
            return value
        return value + self.short_conv(value, cache)


class CausalSelfAttention(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.n_head = config.n_head
        self.qkv = nn.Linear(config.n_embd, 3 * config.n_embd, bias=False)
        self.proj = nn.Linear(config.n_embd, config.n_embd, bias=False)

    def forward(self, x: torch.Tensor, cache: dict | None = None) -> torch.Tensor:
        """``cache`` (decoding): the keys and values of the positions before ``x``; read and
        extended in place. Each new position attends to every cached one and causally to the
        new ones."""
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        past = 0
        if cache is not None:
            if "k" in cache:
                past = cache["k"].shape[2]
                k = torch.cat([cache["k"], k], dim=2)
                v = torch.cat([cache["v"], v], dim=2)
            cache["k"], cache["v"] = k, v
        if past == 0:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, nh, T, hs)
        elif T == 1:  # one new token sees everything before it
            y = F.scaled_dot_product_attention(q, k, v)
        else:
            mask = torch.ones(T, past + T, dtype=torch.bool, device=x.device).tril(past)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.proj(y.transpose(1, 2).reshape(B, T, C))


class MLP(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.fc = nn.Linear(config.n_embd, config.mlp_ratio * config.n_embd, bias=False)
        self.proj = nn.Linear(config.mlp_ratio * config.n_embd, config.n_embd, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(F.gelu(self.fc(x)))


class Block(nn.Module):
    """Pre-norm block over ``hc_mult`` residual branches ``(B, T, HC, D)``.

    With ``hc_mult > 1`` attention and MLP read the mean of the branches and their output is
    added to every branch (a plain stand-in for hyper-connections); the Engram module gates
    each branch separately, as in the reference.
    """

    def __init__(self, config: ModelConfig, layer_id: int):
        super().__init__()
        self.engram = Engram(config) if layer_id in config.engram_layers else None
        self.ln_1 = RMSNorm(config.n_embd)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = RMSNorm(config.n_embd)
        self.mlp = MLP(config)

    def forward(
        self, h: torch.Tensor, rows: torch.Tensor | None, cache: dict | None = None
    ) -> torch.Tensor:
        if self.engram is not None and rows is not None:
            h = h + self.engram(rows, h, None if cache is None else cache.setdefault("engram", {}))
        x = h.mean(dim=2) if h.shape[2] > 1 else h[:, :, 0, :]
        attn_cache = None if cache is None else cache.setdefault("attn", {})
        h = h + self.attn(self.ln_1(x), attn_cache).unsqueeze(2)
        x = h.mean(dim=2) if h.shape[2] > 1 else h[:, :, 0, :]
        return h + self.mlp(self.ln_2(x)).unsqueeze(2)


@dataclass(frozen=True)
class ModelConfig:
    """Shape of the reference model (JSON round trip through ``to_dict``/``from_dict``)."""

    vocab_size: int  # input vocabulary: token ids seen in training plus one unknown id
    output_vocab_size: int = 0  # predicted ids plus unknown (0: same as vocab_size)
    n_layer: int = 4  # transformer blocks
    n_head: int = 4  # attention heads
    n_embd: int = 192  # hidden width D
    block_size: int = 256  # longest sequence (learned positions)
    mlp_ratio: int = 4  # MLP hidden width / D
    hc_mult: int = 1  # parallel residual branches (reference hyper-connection count)
    engram_layers: tuple[int, ...] = ()  # blocks carrying an Engram module (empty: baseline)
    engram_heads: int = 0  # hash heads per Engram layer over all orders, (max_ngram-1)*heads
    engram_dim: int = 0  # values per table row d
    max_ngram: int = 3  # largest n-gram order (short-conv dilation)
    engram_value_zero_init: bool = (
        True  # value projection starts at 0: the model starts as the baseline
    )
    short_conv: bool = True  # the gated value's short convolution (DeepSeek-V4.1 drops it)
    gate_norm_eps: float | None = None  # gate RMSNorms; None: dtype eps, as the reference
    extra: dict = field(default_factory=dict, compare=False)  # free-form notes kept in config.json

    def __post_init__(self):
        object.__setattr__(self, "engram_layers", tuple(int(v) for v in self.engram_layers))
        self.validate()

    def validate(self) -> None:
        if self.vocab_size < 2:
            raise UsageError(f"model vocab size must be at least 2, got {self.vocab_size}")
        if self.output_vocab_size == 0:
            object.__setattr__(self, "output_vocab_size", self.vocab_size)
        for name in ("n_layer", "n_head", "n_embd", "block_size", "mlp_ratio", "hc_mult"):
            if getattr(self, name) < 1:
                raise UsageError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.n_embd % self.n_head:
            raise UsageError(
                f"width {self.n_embd} must be divisible by the attention heads {self.n_head}"
            )
        if self.engram_layers:
            too_deep = [layer for layer in self.engram_layers if layer >= self.n_layer]
            if too_deep:
                raise UsageError(
                    f"the table has Engram layers {list(self.engram_layers)} but the model has "
                    f"{self.n_layer} blocks (ids 0..{self.n_layer - 1}); pass --depth "
                    f"{max(self.engram_layers) + 1} or more, or a table with lower layer ids"
                )
            if self.engram_heads < 1 or self.engram_dim < 1:
                raise UsageError(
                    f"Engram layers need heads and row width >= 1, got {self.engram_heads} "
                    f"and {self.engram_dim}"
                )

    @property
    def has_engram(self) -> bool:
        return bool(self.engram_layers)

    def to_dict(self) -> dict:
        data = asdict(self)
        data["engram_layers"] = list(self.engram_layers)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> ModelConfig:
        known = set(cls.__dataclass_fields__)
        unknown = set(data) - known
        data = {"gate_norm_eps": LEGACY_GATE_NORM_EPS, **data}  # configs from before the field
        if unknown:
            raise UsageError(f"model config has unknown fields {sorted(unknown)}")
        return cls(**data)


class DecodeCache:
    """What a decoding step reuses from the positions before it: per block the attention keys
    and values and the Engram short convolution's inputs (``EngramLM.forward(..., cache=)``).
    Positions are absolute (learned), so a cache holds at most ``block_size`` of them."""

    def __init__(self, n_layer: int):
        self.length = 0
        self.blocks: list[dict] = [{} for _ in range(n_layer)]


class EngramLM(nn.Module):
    """Decoder-only language model; ``forward(idx, rows)`` -> logits ``(B, T, output vocab)``.

    ``rows`` maps each Engram layer id to its looked-up table rows ``(B, T, H*d)`` float32;
    ``None`` (or a baseline config) runs the backbone alone.
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.wpe = nn.Embedding(config.block_size, config.n_embd)
        self.blocks = nn.ModuleList([Block(config, i) for i in range(config.n_layer)])
        self.ln_f = RMSNorm(config.n_embd)
        self.lm_head = nn.Linear(config.n_embd, config.output_vocab_size, bias=False)
        self.apply(self._init_weights)
        for name, param in self.named_parameters():
            if name.endswith("proj.weight") and "engram" not in name:  # GPT-2 residual scaling
                nn.init.normal_(param, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))
        if config.engram_value_zero_init:
            for block in self.blocks:
                if block.engram is not None:
                    nn.init.zeros_(block.engram.value_proj.weight)
                    nn.init.zeros_(block.engram.value_proj.bias)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def engram_modules(self) -> dict[int, Engram]:
        return {i: b.engram for i, b in enumerate(self.blocks) if b.engram is not None}

    def forward(
        self,
        idx: torch.Tensor,
        rows: dict[int, torch.Tensor] | None = None,
        cache: DecodeCache | None = None,
    ) -> torch.Tensor:
        """Logits of the positions of ``idx``. With ``cache`` (decoding) ``idx`` continues the
        positions the cache holds: its keys/values and short-conv inputs are reused and
        extended, so a step costs the new tokens only."""
        B, T = idx.shape
        past = 0 if cache is None else cache.length
        if past + T > self.config.block_size:
            raise UsageError(
                f"sequence of {past + T} tokens exceeds the model's {self.config.block_size}"
            )
        if self.config.has_engram and rows is None:
            raise UsageError("this model has Engram layers; pass their table rows")
        pos = torch.arange(past, past + T, device=idx.device)
        x = self.wte(idx) + self.wpe(pos)  # (B, T, D)
        h = x.unsqueeze(2).expand(B, T, self.config.hc_mult, x.shape[-1]).contiguous()
        for i, block in enumerate(self.blocks):
            layer_rows = rows.get(i) if (rows is not None and block.engram is not None) else None
            h = block(h, layer_rows, None if cache is None else cache.blocks[i])
        if cache is not None:
            cache.length += T
        x = h.mean(dim=2) if h.shape[2] > 1 else h[:, :, 0, :]
        return self.lm_head(self.ln_f(x))  # (B, T, output vocab)

    def last_gates(self) -> dict[int, torch.Tensor]:
        """Gate values ``(B, T, HC)`` of each Engram layer from the last forward pass."""
        return {i: m.last_gate for i, m in self.engram_modules().items() if m.last_gate is not None}
