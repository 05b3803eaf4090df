"""Held-out losses of a model during and after training: the curve's evenly spaced windows
(:func:`curve_windows`), the loss with the rows as trained so far (:func:`estimate_loss`), and
the mean next-token loss of any row source (:func:`heldout_loss`)."""

from __future__ import annotations

import numpy as np

from ...errors import EngramError


def estimate_loss(model, windows, model_vocab, *, hasher, tables: dict, config) -> float:
    """Mean held-out loss (nats/token) of ``windows`` with the rows as trained so far."""
    import torch

    return heldout_loss(
        model,
        windows,
        model_vocab,
        hasher=hasher,
        lookup=lambda layer, ids: tables[layer].lookup(ids),
        batch=config.batch,
        device=torch.device(config.device),
    )


def curve_windows(heldout: np.ndarray | None, config) -> np.ndarray | None:
    """The curve's held-out points (``config.eval_windows`` of them, evenly spaced): the same
    windows every time."""
    if heldout is None:
        return None
    picks = np.linspace(0, len(heldout) - 1, min(config.eval_windows, len(heldout)))
    return heldout[np.unique(picks.astype(np.int64))]


def heldout_loss(model, windows, model_vocab, *, hasher, lookup, batch: int, device) -> float:
    """Mean next-token loss (nats) over windows, rows from ``lookup(layer, row_ids_tensor)``."""
    import torch

    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(windows), batch):
            chunk = windows[start : start + batch]
            idx = torch.from_numpy(model_vocab.encode(chunk[:, :-1])).to(device)
            targets = torch.from_numpy(model_vocab.encode_targets(chunk[:, 1:])).to(device)
            rows = None
            if hasher is not None:
                rows = {
                    layer: lookup(layer, torch.from_numpy(ids).to(device)).flatten(2)
                    for layer, ids in hasher.hash(chunk[:, :-1], table_rows=True).items()
                }
            logits = model(idx, rows)
            loss = torch.nn.functional.cross_entropy(
                logits.flatten(0, 1), targets.flatten(), reduction="sum"
            )
            total += float(loss)
            count += targets.numel()
    if count == 0:
        raise EngramError("no held-out tokens to evaluate")
    return total / count
