"""Optimizers of the reference model: AdamW groups for the backbone, sparse Adam for table rows.

:func:`configure_optimizers` is the one place that decides which parameters decay (matrices) and
which do not (norm scales, biases), and gives each trained table layer its sparse ("lazy") Adam,
the way sparse embedding tables are usually trained. :func:`lr_at` is the schedule both follow.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

BACKBONE_BETAS = (0.9, 0.95)
TABLE_BETAS = (0.9, 0.99)


def lr_at(step: int, *, peak: float, warmup: int, total: int) -> float:
    """Linear warm-up then cosine decay to 10% of ``peak``.

    >>> lr_at(0, peak=1.0, warmup=10, total=100), lr_at(100, peak=1.0, warmup=10, total=100)
    (0.1, 0.1)
    """
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


class SparseRowAdam:
    """Lazy Adam on the rows a step gathered: state and updates touch only those rows.

    ``weight`` is a ``(rows, d)`` float32 tensor; :meth:`step` takes the unique row ids of the
    batch and the gradient of their gathered copy.
    """

    def __init__(self, weight, *, betas=TABLE_BETAS, eps: float = 1e-8):
        import torch

        self.weight = weight
        self.exp_avg = torch.zeros_like(weight)
        self.exp_avg_sq = torch.zeros_like(weight)
        self.steps = torch.zeros(weight.shape[0], dtype=torch.int32, device=weight.device)
        self.betas, self.eps = betas, eps

    def step(self, row_ids, grad, *, lr: float, weight_decay: float = 0.0) -> None:
        import torch

        with torch.no_grad():
            t = self.steps[row_ids] + 1
            self.steps[row_ids] = t
            m = self.exp_avg[row_ids]
            v = self.exp_avg_sq[row_ids]
            rows = self.weight[row_ids]
            adam_rows_update(
                rows,
                m,
                v,
                t,
                grad,
                lr=lr,
                weight_decay=weight_decay,
                betas=self.betas,
                eps=self.eps,
            )
            self.exp_avg[row_ids] = m
            self.exp_avg_sq[row_ids] = v
            self.weight[row_ids] = rows

    def state_dict(self) -> dict:
        """The state of the rows stepped so far: ``ids`` and their moments and step counts."""
        import torch

        ids = torch.nonzero(self.steps > 0).flatten()
        return {
            "ids": ids.cpu().numpy(),
            "exp_avg": self.exp_avg[ids].cpu().numpy(),
            "exp_avg_sq": self.exp_avg_sq[ids].cpu().numpy(),
            "steps": self.steps[ids].cpu().numpy(),
        }

    def load_state_dict(self, state: dict) -> None:
        """Put back the moments and step counts of ``state["ids"]`` (from :meth:`state_dict`)."""
        import torch

        device = self.weight.device
        ids = torch.as_tensor(state["ids"]).to(device)
        for name in ("exp_avg", "exp_avg_sq", "steps"):
            getattr(self, name)[ids] = torch.as_tensor(state[name]).to(device)


def adam_rows_update(rows, m, v, t, grad, *, lr, weight_decay, betas, eps) -> None:
    """One lazy-Adam step on gathered rows, in place: ``rows``, ``m``, ``v`` are ``(U, d)``.

    ``t`` is each row's step count after this step (``(U,)`` integers). The arithmetic is the
    same whether the rows and moments live in memory or were gathered from a store.
    """
    b1, b2 = betas
    m.mul_(b1).add_(grad, alpha=1 - b1)
    v.mul_(b2).addcmul_(grad, grad, value=1 - b2)
    t = t.to(grad.dtype).unsqueeze(1)
    m_hat = m / (1 - b1**t)
    v_hat = v / (1 - b2**t)
    if weight_decay:
        rows.mul_(1 - lr * weight_decay)
    rows.sub_(lr * m_hat / (v_hat.sqrt() + eps))


@dataclass
class Optimizers:
    """The backbone's AdamW (``None`` when the backbone is frozen) and the table layers' rows."""

    backbone: object | None
    tables: dict = field(default_factory=dict)  # {layer_id: rows object with .step(...)}

    def set_lr(self, lr: float) -> None:
        if self.backbone is not None:
            for group in self.backbone.param_groups:
                group["lr"] = lr


def configure_optimizers(
    model, *, lr: float, weight_decay: float, tables: dict | None = None, frozen: bool = False
) -> Optimizers:
    """AdamW over the model (decay on matrices, none on vectors), plus each table layer's rows.

    ``tables`` maps a layer id to its trainable rows (anything with a sparse ``step``);
    ``frozen=True`` trains no model parameter (table-only adaptation) and returns no AdamW.
    """
    import torch

    if frozen:
        for param in model.parameters():
            param.requires_grad_(False)
        return Optimizers(None, dict(tables or {}))
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=lr,
        betas=BACKBONE_BETAS,
    )
    return Optimizers(optimizer, dict(tables or {}))
