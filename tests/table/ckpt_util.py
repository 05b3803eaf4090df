"""Writing small DeepSeek-style checkpoints for tests: config, index, shards with fp8 tables."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from engramctl.layout import EngramLayout
from engramctl.model_config import EngramModelConfig
from engramctl.table.formats.checkpoint_export import safetensors_header


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


def sparse_files_supported(directory: Path) -> bool:
    """Whether ``directory``'s file system keeps holes (a 64 MiB hole takes < 1 MiB on disk)."""
    probe = Path(directory) / ".sparse-probe"
    try:
        with open(probe, "wb") as handle:
            handle.truncate(64 * 2**20)
        return probe.stat().st_blocks * 512 < 2**20
    except OSError:
        return False
    finally:
        probe.unlink(missing_ok=True)


def write_sparse_checkpoint(
    path: Path, config: dict, layer_rows: dict[int, int], written: dict, *, dim: int = 256
) -> None:
    """A checkpoint at full size whose shards are holes except at ``written`` rows.

    ``written`` maps a layer to ``(row ids, fp8 rows [n, dim + dim/32])``. One shard per
    layer (its weight then its scale) plus a small shard of another tensor; the shards are
    ``ftruncate``d to their full size, and only the given rows are written (``pwrite``).
    """
    import os

    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(config))
    width = dim // 32
    weight_map = {"model.embed.weight": "model-00001-of-00003.safetensors"}
    with open(path / "model-00001-of-00003.safetensors", "wb") as handle:
        handle.write(safetensors_header([("model.embed.weight", "BF16", [2, 4], 16)]))
        handle.write(bytes(16))
    for i, (layer_id, rows) in enumerate(sorted(layer_rows.items())):
        name = f"model-{i + 2:05d}-of-00003.safetensors"
        weight, scale = (f"model.layers.{layer_id}.engram.embed.{p}" for p in ("weight", "scale"))
        header = safetensors_header(
            [
                (weight, "F8_E4M3", [rows, dim], rows * dim),
                (scale, "F8_E8M0", [rows, width], rows * width),
            ]
        )
        ids, data = written[layer_id]
        fd = os.open(path / name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(fd, header)
            os.ftruncate(fd, len(header) + rows * (dim + width))
            for row, values in zip(ids.tolist(), data, strict=True):
                os.pwrite(fd, values[:dim].tobytes(), len(header) + row * dim)
                os.pwrite(fd, values[dim:].tobytes(), len(header) + rows * dim + row * width)
        finally:
            os.close(fd)
        weight_map.update({weight: name, scale: name})
    index = {"metadata": {"total_size": 0}, "weight_map": weight_map}
    (path / "model.safetensors.index.json").write_text(json.dumps(index))
