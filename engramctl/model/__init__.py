"""The reference Engram model: transformer, data, checkpoints, the row pager, training, eval.

torch lives only in this subpackage; nothing is imported until a name is used, so ``import
engramctl.model`` stays cheap and ``import engramctl`` never pulls torch in.
"""

from __future__ import annotations

from .._lazy import lazy_exports

_EXPORTS = {
    "ModelConfig": ".transformer",
    "EngramLM": ".transformer",
    "Checkpoint": ".checkpoint",
    "save_checkpoint": ".checkpoint",
    "load_checkpoint": ".checkpoint",
    "RowPager": ".paging",
    "ResidentRows": ".paging",
    "TrainConfig": ".train",
    "train_model": ".train",
    "evaluate": ".evaluate",
    "EvalReport": ".evaluate",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
