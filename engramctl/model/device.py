"""The device a model runs on: what ``--device`` accepts and how ``auto`` resolves (shared by
training and serving)."""

from __future__ import annotations

from ..errors import EngramError, UsageError

DEVICES = ("auto", "cpu", "cuda")  # what --device accepts (auto: cuda when available)


def resolve_device(name: str):
    """``auto`` -> cuda when available else cpu; refuse ``cuda`` without CUDA."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise EngramError(
            "--device cuda: this machine has no CUDA device (use --device cpu or auto)"
        )
    if name != "cpu" and not name.startswith("cuda"):
        raise UsageError(f"--device: expected auto, cpu or cuda, got {name!r}")
    return torch.device(name)
