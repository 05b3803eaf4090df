"""``engramctl edit --learn``: write a fact into a memory by training only the fact's rows.

:func:`learn_fact` takes a model and its table and a sentence (the *fact*), and trains the table
rows the fact's n-grams hash to (the rows ``lookup`` shows for it; those of its last token feed
no prediction inside the fact and are left as they are) with the training's sparse row Adam
(:class:`~engramctl.model.optim.SparseRowAdam`), the backbone frozen, until the model
*continues the fact*: given its first tokens (the *prompt*: the fact's first token, or
``prompt``), greedy decoding reproduces the rest. Every other row of the table and the model's
files are untouched. The rows are written as one commit (``history`` names it: the model, steps,
losses; ``revert`` undoes it); nothing is written if the model already continues the fact.

What is measured is what the table holds: after each step the trained rows are rounded to the
table's dtype (fp8 and bf16 tables lose small updates to rounding) and the fact's loss and its
greedy check are taken with those rounded rows, so the report after is what ``generate`` and
``eval`` will see. Greedy decoding reproduces the fact exactly when, with the fact as input,
every position's most likely token (the "unknown" class excluded, as ``generate`` does) is the
fact's next token: the model and the hashing are causal, so that check is one forward pass.

With ``benchmark`` the held-out metrics of ``engramctl eval --benchmark`` are taken before and
after (the table read as committed): what else the write moved.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..errors import EngramError, UsageError

DEFAULT_STEPS = 100
DEFAULT_LR = 0.05


@dataclass(frozen=True)
class FactCheck:
    """The fact as the model continues it: the mean loss of its continuation tokens
    (nats/token), whether greedy decoding from its prompt reproduces them, and what greedy
    decoding gives instead (as many tokens as the continuation has)."""

    loss: float
    continues: bool
    greedy: str


@dataclass(frozen=True)
class LearnResult:
    """What :func:`learn_fact` did. ``commit`` is ``None`` when nothing was written (the model
    continued the fact already); ``stopped``: ``"continues"`` (early, the fact is written),
    ``"steps"`` (``steps`` ran out first) or ``"already"``; ``losses``: the fact's loss after
    each step (rows as stored); ``benchmark``: ``{"path", "before", "after"}`` with the
    ``eval --benchmark`` metrics of each, or ``None``."""

    path: str
    model: str
    text: str
    prompt: str
    tokens: int
    prompt_tokens: int
    commit: str | None
    stopped: str
    steps: int
    lr: float
    rows: dict[int, int]  # rows written per layer
    before: FactCheck
    after: FactCheck
    losses: tuple[float, ...]
    benchmark: dict | None
    seconds: float

    def to_dict(self) -> dict:
        doc = asdict(self)
        doc["rows"] = {str(k): v for k, v in self.rows.items()}
        doc["losses"] = list(self.losses)
        return doc


def fact_ids(text: str, prompt: str | None, tokenizer, model_vocab, block_size: int):
    """The fact's raw token ids and its prompt's length in tokens, or one clear refusal: an
    empty fact, a prompt that is not how the fact starts or leaves nothing to continue, a fact
    longer than the model's window, or continuation tokens the model never predicts."""
    ids = np.asarray(tokenizer.encode(text, add_special_tokens=False).ids, dtype=np.int64)
    if ids.size < 2:
        raise UsageError(
            f"--text {text!r} is {ids.size} token(s): a fact to learn needs at least 2 (a "
            "prompt and what follows it)"
        )
    if ids.size > block_size:
        raise UsageError(
            f"--text is {ids.size} tokens; the model's window is {block_size}: give a shorter fact"
        )
    n_prompt = 1
    if prompt is not None:
        head = tokenizer.encode(prompt, add_special_tokens=False).ids
        if not head or list(ids[: len(head)]) != list(head) or len(head) >= ids.size:
            raise UsageError(
                f"--prompt {prompt!r} must be how --text starts (the same leading tokens), "
                "leaving at least one token to continue"
            )
        n_prompt = len(head)
    targets = model_vocab.encode_targets(ids[n_prompt:])
    unknown = [int(t) for t, m in zip(ids[n_prompt:], targets, strict=True) if m == 0]
    if unknown:
        words = ", ".join(repr(tokenizer.decode([t])) for t in unknown[:5])
        raise EngramError(
            f"the model never predicts {len(unknown)} of the fact's tokens ({words}): they are "
            "outside its output vocabulary, so no table row can make it continue the fact; "
            "phrase the fact with words the model was trained on"
        )
    return ids, n_prompt


class FactRows:
    """The fact's rows of each layer as float32 training copies, with their sparse Adam.

    ``unique[layer]``: the table rows (sorted) the fact's input positions hash to;
    ``inverse[layer]``: each position's head rows as indices into them, ``(1, T, H)``.
    """

    def __init__(self, table, hashed: dict, device):
        import torch

        from ..table.core.dtypes import decode_rows
        from .optim import SparseRowAdam

        self.table, self.device = table, device
        self.unique, self.inverse, self.weight, self.optimizer = {}, {}, {}, {}
        for layer, row_ids in hashed.items():
            unique, inverse = np.unique(row_ids, return_inverse=True)
            values = decode_rows(table.gather(layer, unique), table.dtype, table.dim)
            self.unique[layer] = unique
            self.inverse[layer] = torch.from_numpy(inverse.reshape(row_ids.shape)).to(device)
            self.weight[layer] = torch.from_numpy(np.array(values, np.float32)).to(device)
            self.optimizer[layer] = SparseRowAdam(self.weight[layer])
        self.original = self.stored()

    def stored(self) -> dict:
        """The rows as the table would hold them now (rounded to its dtype), float32 numpy."""
        from ..table.core.dtypes import decode_rows, encode_rows

        dtype, dim = self.table.dtype, self.table.dim
        return {
            layer: np.array(  # a copy: a float32 table's decode is a view of the weights
                decode_rows(encode_rows(w.detach().cpu().numpy(), dtype), dtype, dim), np.float32
            )
            for layer, w in self.weight.items()
        }

    def model_rows(self, values: dict, *, grad: bool = False):
        """The model's input ``{layer: (1, T, H*d)}`` from per-layer unique rows; with ``grad``
        also the leaves (``{layer: (U, d)}``) whose gradient :meth:`step` reads."""
        import torch

        leaves, rows = {}, {}
        for layer, value in values.items():
            leaf = torch.as_tensor(value, device=self.device)
            if grad:
                leaf = leaf.clone().requires_grad_(True)
                leaves[layer] = leaf
            rows[layer] = leaf[self.inverse[layer]].flatten(2)
        return rows, leaves

    def step(self, leaves: dict, lr: float) -> None:
        import torch

        for layer, leaf in leaves.items():
            every = torch.arange(leaf.shape[0], device=self.device)
            self.optimizer[layer].step(every, leaf.grad, lr=lr)

    def changed(self) -> dict:
        """``{layer: (row ids, stored values)}`` of the rows whose stored value changed."""
        out = {}
        for layer, values in self.stored().items():
            moved = np.any(values != self.original[layer], axis=1)
            if moved.any():
                out[layer] = (self.unique[layer][moved], values[moved])
        return out


def fact_loss(model, idx, targets, rows: dict, n_prompt: int):
    """Mean cross-entropy of the continuation targets, and the logits ``(T, V)``."""
    import torch

    logits = model(idx, rows)[0]
    loss = torch.nn.functional.cross_entropy(logits[n_prompt - 1 :], targets[n_prompt - 1 :])
    return loss, logits


def continues(logits, targets, n_prompt: int) -> bool:
    """Whether every continuation position's most likely class (not "unknown") is its target:
    greedy decoding from the prompt then reproduces the fact."""
    best = logits[n_prompt - 1 :, 1:].argmax(dim=-1) + 1
    return bool((best == targets[n_prompt - 1 :]).all())


def greedy_tokens(model, model_vocab, hasher, lookup, prompt_ids, n: int, device) -> list[int]:
    """``n`` tokens of greedy decoding after ``prompt_ids`` (the whole text run each step; rows
    from ``lookup(layer, table row ids)`` -> float32 ``(..., d)``)."""
    import torch

    text = [int(t) for t in prompt_ids]
    for _ in range(n):
        ids = np.asarray([text], dtype=np.int64)
        hashed = hasher.hash(ids, table_rows=True)
        rows = {layer: torch.from_numpy(lookup(layer, r)).to(device).flatten(2)
                for layer, r in hashed.items()}  # fmt: skip
        idx = torch.from_numpy(model_vocab.encode(ids)).to(device)
        logits = model(idx, rows)[0, -1].clone()
        logits[0] = float("-inf")
        text.append(int(model_vocab.output_ids[int(logits.argmax()) - 1]))
    return text[len(prompt_ids) :]


def table_lookup(table, fact: FactRows, values: dict):
    """``lookup(layer, row_ids)``: rows from the table, the fact's rows from ``values``."""
    from ..table.core.dtypes import decode_rows

    def lookup(layer, row_ids):
        unique, inverse = np.unique(row_ids, return_inverse=True)
        out = decode_rows(table.gather(layer, unique), table.dtype, table.dim).astype(np.float32)
        own = fact.unique[layer]
        where = np.minimum(np.searchsorted(own, unique), len(own) - 1)
        hit = own[where] == unique
        out[hit] = values[layer][where[hit]]
        return out[inverse.reshape(row_ids.shape)]

    return lookup


def learn_fact(
    path,
    text: str,
    *,
    model: Path,
    steps: int = DEFAULT_STEPS,
    lr: float = DEFAULT_LR,
    prompt: str | None = None,
    benchmark: Path | None = None,
    device: str = "cpu",
    batch: int = 16,
    vocab=None,
    on_step=None,
) -> LearnResult:
    """Train the rows of ``table`` that the fact's n-grams hash to until ``model`` continues it,
    as one commit (see the module docstring).

    Parameters
    ----------
    path : str or Path
        The model's table (opened for writing: a locked or read-only table is refused).
    text : str
        The fact, a sentence.
    model : Path
        The checkpoint directory (``engramctl train --out``); its files are only read.
    steps : int
        At most this many optimizer steps (it stops as soon as the model continues the fact).
    lr : float
        The rows' learning rate (sparse Adam, constant).
    prompt : str, optional
        How the fact starts: the part the model is given (default: its first token).
    benchmark : Path, optional
        A held-out file (as ``eval --benchmark``) measured before and after.
    device, batch
        Where the model runs; the benchmark's batch size.
    vocab : CanonicalVocab, optional
        Refused unless it is the model's vocab.
    on_step : callable, optional
        ``on_step(done, steps, loss)`` after each step.
    """
    import torch

    from ..hashing import NgramHasher
    from ..table.sources.table import open_table
    from .checkpoint import load_checkpoint
    from .device import resolve_device
    from .serve.opening import check_model_table, load_model_tokenizer
    from .train.loop import reproducible_torch

    if steps < 1:
        raise UsageError(f"--steps must be at least 1, got {steps}")
    if not (lr > 0 and np.isfinite(lr)):
        raise UsageError(f"--lr must be a positive number, got {lr}")
    if benchmark is not None and not Path(benchmark).exists():
        raise EngramError(f"benchmark not found: {benchmark}")
    started = time.perf_counter()
    torch_device = resolve_device(device)
    with open_table(path, mode="r+") as table:  # first: a locked or read-only table is refused
        checkpoint = load_checkpoint(model, device=torch_device)
        if checkpoint.layout is None:
            raise UsageError(f"{model} is a --no-engram model: it reads no table, so --learn has "
                             "no rows to train; give an Engram model")  # fmt: skip
        if vocab is not None and vocab.fingerprint != checkpoint.vocab.fingerprint:
            raise EngramError(f"--vocab is not the vocab of {model}; drop --vocab (--learn uses "
                              "the model's)")  # fmt: skip
        check_model_table(checkpoint, table)
        lm, model_vocab = checkpoint.model, checkpoint.model_vocab
        tokenizer = load_model_tokenizer(checkpoint, None)
        ids, n_prompt = fact_ids(text, prompt, tokenizer, model_vocab, lm.config.block_size)
        where = table.store.url
        bench_before = _benchmark(model, path, benchmark, device, batch)
        hasher = NgramHasher(checkpoint.layout, checkpoint.vocab)
        inputs = ids[None, :-1]
        idx = torch.from_numpy(model_vocab.encode(inputs)).to(torch_device)
        targets = torch.from_numpy(model_vocab.encode_targets(ids[1:])).to(torch_device)
        with reproducible_torch(str(torch_device), 1):
            lm.eval()
            for param in lm.parameters():
                param.requires_grad_(False)
            fact = FactRows(table, hasher.hash(inputs, table_rows=True), torch_device)

            def check(values: dict) -> FactCheck:
                with torch.no_grad():
                    loss, logits = fact_loss(lm, idx, targets, fact.model_rows(values)[0],
                                             n_prompt)  # fmt: skip
                made = greedy_tokens(lm, model_vocab, hasher, table_lookup(table, fact, values),
                                     ids[:n_prompt], ids.size - n_prompt, torch_device)  # fmt: skip
                return FactCheck(float(loss), continues(logits, targets, n_prompt),
                                 tokenizer.decode(made, skip_special_tokens=False))  # fmt: skip

            before = check(fact.original)
            losses: list[float] = []
            stopped = "already" if before.continues else "steps"
            done = 0
            while stopped == "steps" and done < steps:
                rows, leaves = fact.model_rows(
                    {k: w.detach() for k, w in fact.weight.items()}, grad=True
                )
                loss, _ = fact_loss(lm, idx, targets, rows, n_prompt)
                loss.backward()
                fact.step(leaves, lr)
                done += 1
                with torch.no_grad():  # the loss and check with the rows as stored
                    stored_loss, logits = fact_loss(
                        lm, idx, targets, fact.model_rows(fact.stored())[0], n_prompt
                    )
                losses.append(float(stored_loss))
                if continues(logits, targets, n_prompt):
                    stopped = "continues"
                if on_step is not None:
                    on_step(done, steps, losses[-1])
            after = check(fact.stored()) if done else before
        changed = fact.changed()
        commit = None
        if changed:
            made_by = {
                "kind": "edit", "operation": "learn", "model": str(model), "steps": done,
                "lr": lr, "prompt_tokens": n_prompt, "continues": after.continues,
                "losses": {"before": before.loss, "after": after.loss},
            }  # fmt: skip
            with table.edit(text, made_by=made_by) as block:
                for layer, (row_ids, values) in changed.items():
                    block.write_rows(layer, row_ids, values)
            commit = table.commits[-1].id
    bench_after = _benchmark(model, path, benchmark, device, batch) if changed else bench_before
    return LearnResult(
        path=where, model=str(model), text=text,
        prompt=tokenizer.decode(ids[:n_prompt].tolist(), skip_special_tokens=False),
        tokens=int(ids.size), prompt_tokens=n_prompt, commit=commit, stopped=stopped,
        steps=done, lr=lr, rows={k: int(v[0].size) for k, v in changed.items()}, before=before,
        after=after, losses=tuple(losses),
        benchmark=None if benchmark is None else {
            "path": str(benchmark), "before": bench_before, "after": bench_after},
        seconds=time.perf_counter() - started,
    )  # fmt: skip


def _benchmark(model, path, benchmark, device, batch) -> dict | None:
    """``eval --benchmark``'s metrics with the table as committed now (read-only)."""
    if benchmark is None:
        return None
    from ..table.sources.table import open_table
    from .serve.evaluate import evaluate
    from .serve.opening import ModelSpec

    with open_table(path) as table:
        report = evaluate(model=ModelSpec(Path(model), table, device), benchmark=benchmark,
                          batch=batch)  # fmt: skip
    return report.metrics


__all__ = ["DEFAULT_LR", "DEFAULT_STEPS", "FactCheck", "LearnResult", "fact_ids", "learn_fact"]
