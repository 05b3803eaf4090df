"""The reference Engram model: transformer, data, checkpoints, the row pager, training, eval.

``train/`` trains (the loop, its inputs, the trainable rows, resume, checkpoints of a run);
``serve/`` reads a trained model (paging, opening, evaluate, generate, lm-evaluation-harness);
the model itself (transformer, data, checkpoint, optimizers, curves) sits beside them;
``learn.py`` (``edit --learn``) writes a fact into a table with pieces of both.

torch lives only in this subpackage; nothing is imported until a name is used, so ``import
engramctl.model`` stays cheap and ``import engramctl`` never pulls torch in.
"""

from __future__ import annotations

from .._lazy import lazy_exports

_EXPORTS = {  # module -> the public names it holds
    ".transformer": ("ModelConfig", "EngramLM"),
    ".checkpoint": ("Checkpoint", "save_checkpoint", "load_checkpoint"),
    ".serve.paging": ("RowPager", "ResidentRows"),
    ".train.run": ("TrainConfig",),
    ".train.loop": ("train_model",),
    ".serve.evaluate": ("evaluate", "EvalReport"),
    ".rowviews": ("to_torch",),
    ".learn": ("learn_fact", "LearnResult"),
}
__all__ = sorted(name for names in _EXPORTS.values() for name in names)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
