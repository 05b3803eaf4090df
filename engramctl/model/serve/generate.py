"""``engramctl generate``: decode one token at a time, rows paged per step.

The decode regime of serving engines: one new token per step. The prompt is hashed once (its
rows paged in one batch); after that each step hashes only the new token, the n-gram context
carried from the previous token by a :class:`~engramctl.hashing.HashStream`, and pages that
token's rows (``RowPager``, ``--cache-rows``; or ``--resident``). The rows of the tokens in the
model's window are kept on the device, so a step gathers one token's rows from the table at
most. While the text fits the model's window, a key/value cache (with the Engram short
convolution's recent inputs) makes a step cost one token's forward pass; past the window (learned
absolute positions) each step runs the whole window of the last ``block_size`` tokens.

While the text fits the model's window, greedy decoding here gives exactly the tokens of
decoding by re-running (and re-hashing from pad context) the whole text each step; past the
window the stream keeps the true n-gram context of the window's first tokens, where a fresh
window would start from pad context.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import numpy as np

from ...errors import EngramError, UsageError
from ...rowcache.policy import CacheTooSmall
from .opening import ModelSpec, open_model

PROMPT_BATCH = 4  # windows per forward pass when scoring a prompt longer than the window


@dataclass
class GenerateReport:
    prompt_tokens: int
    tokens: list  # generated raw token ids
    text: str  # the generated text (prompt not included)
    stopped: str  # "eos" or "max_tokens"
    seconds: float  # decoding time (after the prompt's rows and first forward)
    tokens_per_s: float
    device: str
    paging: dict | None
    counts: dict | None = None  # with --counts: the memory, and the mean λ over the steps

    def to_dict(self) -> dict:
        return asdict(self)


def pick_token(logits, *, temperature: float, top_k: int | None, generator) -> int:
    """Output-vocab index from one position's logits: argmax at temperature 0, else a sample
    from ``softmax(logits / temperature)`` over the ``top_k`` largest ("unknown" excluded)."""
    import torch

    logits = logits.float().clone()
    logits[0] = float("-inf")  # the "unknown" class is no token
    if temperature == 0:
        return int(logits.argmax())
    if top_k is not None and top_k < logits.numel() - 1:
        kth = torch.topk(logits, top_k).values[-1]
        logits[logits < kth] = float("-inf")
    probs = torch.softmax(logits / temperature, dim=-1).cpu()
    return int(torch.multinomial(probs, 1, generator=generator))


def generate(
    *,
    model: ModelSpec,
    prompt: str,
    max_tokens: int = 64,
    temperature: float = 0.0,
    top_k: int | None = None,
    seed: int = 0,
    stop_at_eos: bool = True,
    kv_cache: bool = True,
    counts=None,
) -> GenerateReport:
    """Decode up to ``max_tokens`` tokens after ``prompt`` with ``model`` (the checkpoint, its
    table and how its rows are served); see the module docstring.

    ``kv_cache=False`` runs the whole window at every step (the same tokens, slower).
    ``counts`` (a :class:`~engramctl.model.serve.mixing.CountsSpec`): each step picks from
    ``(1 - λ) P_model + λ P_counts`` over raw ids (:mod:`engramctl.model.serve.mixing`)."""
    import torch

    from ...corpus.stream import eos_id
    from ..transformer import DecodeCache

    if max_tokens <= 0:
        raise UsageError(f"--max-tokens must be at least 1, got {max_tokens}")
    if temperature < 0:
        raise UsageError(f"--temperature must be 0 (greedy) or more, got {temperature}")
    if top_k is not None and top_k < 1:
        raise UsageError(f"--top-k must be at least 1, got {top_k}")
    opened = open_model(model, stream=True)
    runner, tokenizer, source = opened.runner, opened.tokenizer, opened.pager
    ids = tokenizer.encode(prompt, add_special_tokens=False).ids
    if not ids:
        raise EngramError("--prompt: the text tokenizes to no tokens; give some text")
    lm, vocab = runner.model, runner.model_vocab
    window = lm.config.block_size
    eos = eos_id(tokenizer)
    generator = torch.Generator().manual_seed(seed)
    mixer = None
    if counts is not None:
        from .mixing import MixedDecoder, open_counts_for_model

        memory = open_counts_for_model(counts, opened.checkpoint)
        mixer = MixedDecoder(memory, vocab, counts.mix, eos)
    # with a gate reading recent_gain: the model's scores of the prompt's tokens (MixedDecoder)
    scoring = mixer is not None and mixer.reads_prompt
    if scoring:
        from .mixing import prompt_scored_from

        from_ = prompt_scored_from(len(ids), window)
    early: list = []  # a prompt longer than the window: its pieces (start, ids, rows)
    pending: list[np.ndarray] = []
    rows_of = None
    if source is not None:
        rows_of = source.iterate(_drain(pending))

    def fetch(piece: list[int]) -> dict | None:
        """Rows of the next piece of the text (hashed after the previous ones)."""
        if rows_of is None:
            return None
        pending.append(np.array([piece], dtype=np.int64))
        try:
            return next(rows_of)[1]
        except CacheTooSmall as exc:  # generate has no --batch: a piece is what it is
            raise exc.with_remedy(
                f"raise --cache-rows (generate pages the prompt in pieces of up to {window} "
                "tokens, then one token per step)"
            ) from None

    # The prompt: rows in pieces of the window (the stream carries context across them).
    text_ids = list(ids)
    kept: dict = {}
    for start in range(0, len(ids), window):
        piece = ids[start : start + window]
        new = fetch(piece)
        if scoring and len(ids) > window and from_ <= start < len(ids) - 1:  # eval's windows
            early.append((start, piece, new))
        kept = _append_rows(kept, new, window)
    made: list[int] = []
    stopped = "max_tokens"
    cache = DecodeCache(lm.config.n_layer) if kv_cache else None
    start_time = time.perf_counter()
    with torch.inference_mode():
        while len(made) < max_tokens:
            if cache is not None and len(text_ids) <= window:  # the new tokens only
                context = text_ids[cache.length :]
            else:  # past the window: positions shift, run the last window whole
                cache, context = None, text_ids[-window:]
            idx = torch.from_numpy(vocab.encode(np.array([context], dtype=np.int64)))
            # kept: the rows of the last min(len(text_ids), window) positions; context ends there
            rows = {layer: r[:, -len(context) :] for layer, r in kept.items()} or None
            out = lm(idx.to(runner.device), rows, cache)[0]
            logits = out[-1]
            if scoring and mixer.prompt_gain is None:  # the first step: the prompt's end
                mixer.start(ids, _score_prompt(lm, vocab, runner.device, ids, early, out,
                                               mixer.spread))  # fmt: skip
            if mixer is not None:
                token = mixer.pick(text_ids, logits, temperature=temperature, top_k=top_k,
                                   generator=generator)  # fmt: skip
            else:
                pick = pick_token(logits, temperature=temperature, top_k=top_k,
                                  generator=generator)  # fmt: skip
                token = int(vocab.output_ids[pick - 1])
            if stop_at_eos and token == eos:
                stopped = "eos"
                break
            made.append(token)
            text_ids.append(token)
            runner.tokens += 1
            if len(made) < max_tokens:
                kept = _append_rows(kept, fetch([token]), window)
    seconds = time.perf_counter() - start_time
    if rows_of is not None:
        rows_of.close()
    return GenerateReport(
        prompt_tokens=len(ids),
        tokens=made,
        text=tokenizer.decode(made, skip_special_tokens=False),
        stopped=stopped,
        seconds=seconds,
        tokens_per_s=len(made) / seconds if seconds else 0.0,
        device=str(runner.device),
        paging=opened.paging(),
        counts=None if mixer is None else mixer.report(counts.path),
    )


def _score_prompt(lm, vocab, device, ids: list[int], early: list, out, spread) -> np.ndarray:
    """``log P_model`` over raw ids of ``ids[1:]``, the prompt's tokens after its first (from
    :func:`~.mixing.prompt_scored_from` on), in eval's windows of the text
    (:func:`~engramctl.corpus.stream.lm_windows`).

    A prompt that fits the window is the first step's context: ``out``, that step's logits,
    are exactly eval's. A longer one is scored in the window-sized pieces it was paged in
    (``early``: each piece's start, ids and rows; from the horizon on), a few per pass; eval hashes
    a later window's first tokens from pad context where the stream has their true context,
    so there the two differ by what the Engram rows of those tokens change."""
    import torch

    from .mixing import raw_target_logp

    if out.shape[0] == len(ids):
        return raw_target_logp(out[:-1], ids[1:], vocab, spread)
    length = len(early[0][1])
    full = [e for e in early if len(e[1]) == length]
    groups = [full[at : at + PROMPT_BATCH] for at in range(0, len(full), PROMPT_BATCH)]
    groups += [[e] for e in early if len(e[1]) != length]  # the last piece, when shorter
    scores = []
    for group in groups:
        pieces = np.array([piece for _, piece, _ in group], dtype=np.int64)
        rows = None
        if group[0][2]:
            rows = {layer: torch.cat([r[layer] for *_, r in group]) for layer in group[0][2]}
        with torch.inference_mode():
            logits = lm(torch.from_numpy(vocab.encode(pieces)).to(device), rows)
        for k, (start, piece, _) in enumerate(group):
            targets = ids[start + 1 : start + len(piece) + 1]
            scores.append(raw_target_logp(logits[k, : len(targets)], targets, vocab, spread))
    return np.concatenate(scores)


def _drain(pending: list):
    """An endless batch iterator over what the decoder appends (one piece per step)."""
    while True:
        yield pending.pop(0)


def _append_rows(kept: dict, new: dict | None, window: int) -> dict:
    """The rows of the last ``window`` positions, per layer (``(1, T, H*d)`` on the device)."""
    import torch

    if not new:
        return kept
    out = {}
    for layer, rows in new.items():
        joined = rows if layer not in kept else torch.cat([kept[layer], rows], dim=1)
        out[layer] = joined[:, -window:]
    return out
