"""Writing small DeepSeek-style checkpoints for tests: config, index, shards with fp8 tables."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from engramctl.layout import EngramLayout, EngramModelConfig
from engramctl.table.checkpoint_export import safetensors_header


def small_layout(vocab, **overrides) -> EngramLayout:
    fields = (
        dict(ngram_vocab=(50, 60), max_ngram=3, heads=2, layers=(1, 4), seed=0, pad_id=0)
        | overrides
    )
    return EngramLayout(vocab_size=vocab.canonical_vocab_size, **fields)


def random_fp8_rows(rng, rows: int, dim: int) -> np.ndarray:
    """Valid fp8 rows: codes without NaN (0x7F/0xFF), scales in 100..140."""
    codes = rng.integers(0, 256, size=(rows, dim), dtype=np.uint8)
    codes[(codes & 0x7F) == 0x7F] = 0x11
    scales = rng.integers(100, 141, size=(rows, dim // 32), dtype=np.uint8)
    return np.concatenate([codes, scales], axis=1)


def write_checkpoint(
    path: Path,
    layout: EngramLayout,
    *,
    dim: int = 64,
    seed: int = 0,
    prefix: str = "",
    single: bool = False,
    config_overrides: dict | None = None,
    dtypes: dict | None = None,
    extra_tensors: bool = True,
    skip: tuple = (),
) -> dict[int, np.ndarray]:
    """A checkpoint directory; returns the fp8 rows ``[rows, dim + dim/32]`` of each layer.

    Each layer's weight and scale go to a shard of their own (plus a shard of other tensors),
    so a checkpoint has 3 shards for 2 layers; ``single`` writes one ``model.safetensors``.
    """
    rng = np.random.default_rng(seed)
    path.mkdir(parents=True, exist_ok=True)
    config = EngramModelConfig.from_layout(layout, head_dim=dim).to_dict()
    config.update(config_overrides or {})
    (path / "config.json").write_text(json.dumps({"model_type": "deepseek_v4", **config}))
    rows_of, shards = {}, []
    other = [(f"{prefix}embed.weight", "BF16", [4, 8], np.zeros(64, np.uint8))]
    if extra_tensors:
        shards.append(other)
    for layer_id in layout.layers:
        rows = random_fp8_rows(rng, layout.layer_rows(layer_id), dim)
        rows_of[layer_id] = rows
        shard = []
        for part, data, dtype in (
            ("weight", rows[:, :dim], "F8_E4M3"),
            ("scale", rows[:, dim:], "F8_E8M0"),
        ):
            name = f"{prefix}layers.{layer_id}.engram.embed.{part}"
            if name in skip:
                continue
            shard.append((name, (dtypes or {}).get(name, dtype), list(data.shape), data))
        shards.append(shard)
    if single:
        shards = [[t for shard in shards for t in shard]]
    weight_map = {}
    for i, shard in enumerate(shards):
        name = (
            "model.safetensors" if single else f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        )
        header = safetensors_header([(n, d, s, a.nbytes) for n, d, s, a in shard])
        with open(path / name, "wb") as handle:
            handle.write(header)
            for *_, data in shard:
                handle.write(np.ascontiguousarray(data).tobytes())
        weight_map.update(dict.fromkeys((t[0] for t in shard), name))
    if not single:
        index = {"metadata": {"total_size": 0}, "weight_map": weight_map}
        (path / "model.safetensors.index.json").write_text(json.dumps(index))
    return rows_of
