"""Evaluating a checkpoint on a benchmark while paging its Engram rows from the table.

Two kinds of benchmark:

- language modelling on any corpus :mod:`engramctl.corpus.readers` reads: every token of the
  stream is scored once, in windows of the model's length; reports loss (nats/token), perplexity
  and bits per byte (summed nats / ln 2 / UTF-8 bytes of the text);
- multiple choice JSON Lines in the lm-evaluation-harness style, one
  ``{"context": str, "choices": [str, ...], "label": int}`` per line: the choice with the largest
  summed log-likelihood given the context wins (``acc``); ``acc_norm`` divides by choice bytes.

Rows come from a :class:`~engramctl.model.serve.paging.RowPager` (paged) or
:class:`~engramctl.model.serve.paging.ResidentRows` (``--resident``), opened with the checkpoint by
:func:`~engramctl.model.serve.opening.open_model`; the report carries their counters.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from ...corpus.stream import lm_windows
from ...errors import EngramError, UsageError
from .opening import ModelRunner, ModelSpec, open_model

MC_KEYS = ("context", "choices", "label")


@dataclass
class EvalReport:
    """Benchmark metrics and paging counters of one evaluation."""

    benchmark: str
    kind: str  # "lm" or "multiple_choice"
    metrics: dict  # lm: loss, perplexity, bits_per_byte, unknown_target_fraction; mc: acc, acc_norm
    tokens: int  # tokens run through the model
    seconds: float
    tokens_per_s: float
    device: str
    paging: dict | None = None  # PagingStats.to_dict() (None for a baseline model)
    model: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


# ------------------------------------------------------------------------------ benchmarks
def benchmark_kind(path: Path) -> str:
    """``multiple_choice`` when the first record of a ``.jsonl`` has context/choices/label."""
    path = Path(path)
    if path.is_file() and path.suffix == ".jsonl":
        # bad bytes fail json.loads below and are reported by the reader with their line number
        with open(path, encoding="utf-8", errors="replace") as handle:
            for line in handle:
                if line.strip():
                    try:
                        first = json.loads(line)
                    except json.JSONDecodeError:
                        break  # reported with its line number by the reader
                    if isinstance(first, dict) and "choices" in first:
                        return "multiple_choice"
                    break
    return "lm"


def read_multiple_choice(path: Path) -> list[dict]:
    """Validated multiple-choice records; one clear error naming the first bad line."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise EngramError(f"{path} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    records = []
    for number, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise EngramError(f"{where}: not valid JSON ({exc.msg})") from None
        if not isinstance(record, dict) or any(k not in record for k in MC_KEYS):
            raise EngramError(f"{where}: expected keys {', '.join(MC_KEYS)}")
        choices, label = record["choices"], record["label"]
        if not isinstance(record["context"], str):
            raise EngramError(f"{where}: 'context' must be a string")
        if (
            not isinstance(choices, list)
            or len(choices) < 2
            or not all(isinstance(c, str) and c for c in choices)
        ):
            raise EngramError(f"{where}: 'choices' must be a list of 2+ non-empty strings")
        if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label < len(choices):
            raise EngramError(
                f"{where}: 'label' must be an integer in 0..{len(choices) - 1}, got {label!r}"
            )
        records.append(record)
    if not records:
        raise EngramError(f"{path} holds no multiple-choice records")
    return records


def _batches(array: np.ndarray, batch: int):
    for start in range(0, len(array), batch):
        yield array[start : start + batch]


def evaluate_lm(
    runner: ModelRunner,
    corpus,
    tokenizer,
    *,
    batch: int,
    on_progress=None,
    counts=None,
    mix=None,
    collect: list | None = None,
) -> dict:
    """Loss, perplexity and bits per byte over every token of a :class:`CorpusStream`.

    ``on_progress(done, total)`` is called after each batch with windows scored so far.
    ``counts`` (a :class:`~engramctl.counts.CountsModel`): also the model's, the memory's and
    the mixed losses over raw ids (:mod:`engramctl.model.serve.mixing`); ``loss`` is then the
    mixed one and the model's own figure is ``model_vocab_loss``. ``collect`` (with
    ``counts``): gets one ``(log P_model (raw ids), counts scores (P, 4), GateInputs)`` per
    batch of scored targets, what :mod:`engramctl.model.serve.gate_fit` fits on."""
    import torch

    from ...corpus.stream import eos_id
    from .mixing import MixPass

    stream = corpus.ids
    seq_len = runner.model.config.block_size
    # Pad with EOS (a real id, so hashing accepts it); padded targets are masked out.
    windows, mask = lm_windows(stream, seq_len, pad=eos_id(tokenizer))
    inputs = np.ascontiguousarray(windows[:, :-1])
    targets = runner.model_vocab.encode_targets(windows[:, 1:])
    mixing = None
    if counts is not None:
        mixing = MixPass(counts, stream, windows[:, 1:], runner.model_vocab, mix=mix,
                         eos=eos_id(tokenizer), everything=collect is not None)  # fmt: skip
    total_nats, scored, unknown = 0.0, 0, 0
    for i, (_, logits) in enumerate(runner.run(_batches(inputs, batch))):
        sl = slice(i * batch, i * batch + logits.shape[0])
        t = torch.from_numpy(targets[sl]).to(logits.device)
        m = torch.from_numpy(mask[sl]).to(logits.device)
        nats = torch.nn.functional.cross_entropy(
            logits.flatten(0, 1).float(), t.flatten(), reduction="none"
        )
        total_nats += float(nats[m.flatten()].double().sum())
        scored += int(m.sum())
        unknown += int(((t == 0) & m).sum())
        if mixing is not None:
            class_logp = -nats.double().view(t.shape).cpu().numpy()
            raw_logp, scores, gate_inputs, lam = mixing.batch(sl, logits, class_logp, targets[sl])
            keep = mask[sl].reshape(-1)
            mixing.totals.add(raw_logp[keep], scores[keep, 0], lam[keep])
            if collect is not None:
                collect.append((raw_logp[keep], scores[keep], gate_inputs.select(keep)))
        if on_progress is not None:
            on_progress(sl.start + logits.shape[0], len(inputs))
    n_bytes = corpus.text_bytes
    loss = total_nats / scored
    metrics = {
        "loss": loss,
        "perplexity": math.exp(loss),
        # None for pre-tokenized corpora: their text bytes are unknown
        "bits_per_byte": total_nats / math.log(2) / n_bytes if n_bytes else None,
        "scored_tokens": scored,
        "bytes": n_bytes,
        "unknown_target_fraction": unknown / scored,
    }
    if mixing is not None:
        mixed = mixing.totals.metrics(n_bytes)
        metrics = {
            "loss": mixed["mixed_loss"],
            "perplexity": math.exp(mixed["mixed_loss"]),
            "bits_per_byte": mixed["mixed_bits_per_byte"],
            **{
                k: v for k, v in metrics.items() if k not in ("loss", "perplexity", "bits_per_byte")
            },
            **mixed,
            "model_vocab_loss": loss,
            "model_vocab_bits_per_byte": metrics["bits_per_byte"],
        }
    return metrics


def choice_scores(
    runner: ModelRunner, records: list[dict], tokenizer, *, batch: int, on_progress=None,
    mixer=None,
) -> np.ndarray:  # fmt: skip
    """Summed log-likelihood of every choice's tokens after its context, records in order."""
    pairs = []
    for r, record in enumerate(records):
        context = tokenizer.encode(record["context"], add_special_tokens=False).ids
        for choice in record["choices"]:
            cont = tokenizer.encode(choice, add_special_tokens=False).ids
            if not cont:
                raise EngramError(f"record {r + 1}: a choice encodes to no tokens")
            pairs.append((context, cont))
    return score_continuations(runner, pairs, batch=batch, on_progress=on_progress,
                               mixer=mixer)[0]  # fmt: skip


def score_continuations(
    runner: ModelRunner,
    pairs: list[tuple[list[int], list[int]]],
    *,
    batch: int,
    on_progress: Callable[[int, int], None] | None = None,
    mixer=None,
) -> tuple[np.ndarray, np.ndarray]:
    """Summed log-likelihood of each continuation's tokens after its context (raw token ids),
    and whether greedy decoding would produce every one of them.

    Context and continuation are concatenated as token lists (each encoded on its own); a
    sequence longer than the model's window keeps the continuation and drops the context's
    start. This is the scoring of ``eval --benchmark`` multiple choice and of the
    lm-evaluation-harness adapter (:mod:`engramctl.model.serve.lm_eval_adapter`).
    ``on_progress(done, total)`` is called after each batch with sequences scored so far.
    ``mixer`` (a :class:`~engramctl.model.serve.mixing.SequenceMixer`): each token's
    probability is the mix ``(1 - λ) P_model + λ P_counts`` over raw ids, and greedy means the
    mixed distribution's argmax.
    """
    import torch

    seq_len = runner.model.config.block_size
    sequences, spans = [], []
    for context, cont in pairs:
        ids = (list(context) + list(cont))[-(seq_len + 1) :]  # keep the continuation
        sequences.append(ids)
        spans.append(min(len(cont), len(ids) - 1))
    pad = 0
    inputs = np.full((len(sequences), seq_len), pad, dtype=np.int64)
    targets = np.zeros((len(sequences), seq_len), dtype=np.int64)
    score_mask = np.zeros((len(sequences), seq_len), dtype=bool)
    for s, ids in enumerate(sequences):
        n = len(ids) - 1
        inputs[s, :n] = ids[:-1]
        targets[s, :n] = runner.model_vocab.encode_targets(np.array(ids[1:], dtype=np.int64))
        score_mask[s, n - spans[s] : n] = True
    scores = np.zeros(len(sequences))
    greedy = np.zeros(len(sequences), dtype=bool)
    for i, (_, logits) in enumerate(runner.run(_batches(inputs, batch))):
        sl = slice(i * batch, i * batch + logits.shape[0])
        logp = torch.log_softmax(logits.float(), dim=-1)
        t = torch.from_numpy(targets[sl]).to(logp.device)
        picked = logp.gather(-1, t.unsqueeze(-1)).squeeze(-1)  # (B, T)
        m = torch.from_numpy(score_mask[sl]).to(logp.device)
        if mixer is not None:
            for k, s in enumerate(range(sl.start, sl.stop)):
                picked_k = picked[k].double().cpu().numpy()
                scores[s], greedy[s] = mixer.score(
                    sequences[s], logits[k : k + 1], picked_k, targets[s], score_mask[s]
                )
        else:
            scores[sl] = (picked * m).sum(-1).double().cpu().numpy()
            hits = (logp.argmax(-1) == t) | ~m
            greedy[sl] = hits.all(-1).cpu().numpy()
        if on_progress is not None:
            on_progress(sl.start + logits.shape[0], len(sequences))
    return scores, greedy


def evaluate_multiple_choice(
    runner: ModelRunner, records: list[dict], tokenizer, *, batch: int, on_progress=None,
    mixer=None,
) -> dict:  # fmt: skip
    """Accuracy by summed log-likelihood of each choice given its context (``acc``), and by
    log-likelihood per byte of the choice (``acc_norm``); ``mixer``: of the mixed
    distribution (:class:`~engramctl.model.serve.mixing.SequenceMixer`)."""
    scores = choice_scores(runner, records, tokenizer, batch=batch, on_progress=on_progress,
                           mixer=mixer)  # fmt: skip
    return _choice_accuracy(records, scores)


def _choice_accuracy(records: list[dict], scores: np.ndarray) -> dict:
    """``acc`` and ``acc_norm`` of summed choice log-likelihoods, records in order."""
    correct = correct_norm = 0
    offset = 0
    for record in records:
        k = len(record["choices"])
        record_scores = scores[offset : offset + k]
        lengths = np.array([len(c.encode("utf-8")) for c in record["choices"]])
        correct += int(np.argmax(record_scores) == record["label"])
        correct_norm += int(np.argmax(record_scores / lengths) == record["label"])
        offset += k
    return {
        "acc": correct / len(records),
        "acc_norm": correct_norm / len(records),
        "examples": len(records),
        "chance": float(np.mean([1 / len(r["choices"]) for r in records])),
    }


def evaluate(
    *,
    model: ModelSpec | None,
    benchmark: Path,
    batch: int = 16,
    on_progress: Callable[[int, int], None] | None = None,
    counts=None,
) -> EvalReport:
    """Evaluate a checkpoint (``model``: it, its table and how its rows are served) on a
    benchmark file; see the module docstring for the metrics.

    ``on_progress(done, total)``: called after each batch (windows or choice sequences).
    ``counts`` (a :class:`~engramctl.model.serve.mixing.CountsSpec`): mix a count memory into
    the model's distribution, or (``model`` None) score the count memory alone."""
    from ...corpus.stream import read_corpus_stream

    if batch < 1:
        raise UsageError(f"--batch must be at least 1, got {batch}")
    benchmark = Path(benchmark)
    if not benchmark.exists():
        raise EngramError(f"benchmark not found: {benchmark}")
    kind = benchmark_kind(benchmark)
    records = read_multiple_choice(benchmark) if kind == "multiple_choice" else None
    if model is None:
        return _evaluate_counts_alone(counts, benchmark, kind, records)
    opened = open_model(model)
    runner, tokenizer = opened.runner, opened.tokenizer
    counts_model = None
    if counts is not None:
        from .mixing import open_counts_for_model

        counts_model = open_counts_for_model(counts, opened.checkpoint)
    corpus = read_corpus_stream(benchmark, tokenizer) if kind == "lm" else None
    start = time.perf_counter()
    if kind == "lm":
        metrics = evaluate_lm(
            runner, corpus, tokenizer, batch=batch, on_progress=on_progress,
            counts=counts_model, mix=None if counts is None else counts.mix,
        )  # fmt: skip
    else:
        mixer = None
        if counts_model is not None:
            from ...corpus.stream import eos_id
            from .mixing import SequenceMixer

            mixer = SequenceMixer(counts_model, runner.model_vocab, counts.mix, eos_id(tokenizer))
        metrics = evaluate_multiple_choice(
            runner, records, tokenizer, batch=batch, on_progress=on_progress, mixer=mixer
        )
    seconds = time.perf_counter() - start
    described = opened.describe()
    if counts is not None:
        described["counts"] = str(counts.path)
        described["mix"] = "gate" if counts.mix is None else counts.mix
        if counts.mix is None:  # was the gate fitted for this model? (None: yes)
            from .mixing import gate_model_mismatch

            gate = counts_model.store.meta.get("gate")
            described["gate_warning"] = gate_model_mismatch(gate, model.model_dir)
    return EvalReport(
        benchmark=str(benchmark),
        kind=kind,
        metrics=metrics,
        tokens=runner.tokens,
        seconds=seconds,
        tokens_per_s=runner.tokens / seconds if seconds else 0.0,
        device=str(runner.device),
        paging=opened.paging(),
        model=described,
    )


def _evaluate_counts_alone(counts, benchmark: Path, kind: str, records) -> EvalReport:
    """The count memory as a language model on its own (``eval --counts`` without --model)."""
    from ...corpus.stream import read_corpus_stream
    from .mixing import evaluate_counts_lm, open_counts_alone

    if counts is None:
        raise UsageError("give --model (with --table) or --counts to evaluate")
    counts_model, tokenizer = open_counts_alone(counts)
    start = time.perf_counter()
    if kind == "lm":
        corpus = read_corpus_stream(benchmark, tokenizer)
        metrics = evaluate_counts_lm(counts_model, corpus)
        tokens = int(len(corpus.ids))
    else:
        scores, tokens = [], 0
        for record in records:
            context = tokenizer.encode(record["context"], add_special_tokens=False).ids
            for choice in record["choices"]:
                cont = tokenizer.encode(choice, add_special_tokens=False).ids
                if not cont:
                    raise EngramError("a choice encodes to no tokens")
                ids = np.array(context + cont, dtype=np.int64)
                p = counts_model.score_stream(ids)[:, 0][-len(cont) :]
                scores.append(float(np.log(p).sum()))
                tokens += len(ids)
        metrics = _choice_accuracy(records, np.array(scores))
    seconds = time.perf_counter() - start
    return EvalReport(
        benchmark=str(benchmark), kind=kind, metrics=metrics, tokens=tokens, seconds=seconds,
        tokens_per_s=tokens / seconds if seconds else 0.0, device="cpu", paging=None,
        model={"path": None, "counts": str(counts.path)},
    )  # fmt: skip


def explain_gates(*, model: ModelSpec, text: str, counts=None) -> dict:
    """Tokens of ``text`` and each Engram layer's gate value per token (mean over branches);
    with ``counts`` (a :class:`~engramctl.model.serve.mixing.CountsSpec`) also, per token after
    the first, the count memory's λ there and ``P_model``, ``P_counts`` and the mix of the
    actual token (raw ids, as eval mixes them; ``None`` at the first token, which nothing
    predicts).

    One window of rows, paged whatever ``model`` says (a small cache, no prefetch)."""
    opened = open_model(
        replace(model, resident=False, cache_rows=1 << 16, tiers=None), prefetch=False
    )
    runner, tokenizer = opened.runner, opened.tokenizer
    if not runner.model.config.has_engram:
        raise UsageError("--explain needs an Engram model (this one was trained with --no-engram)")
    ids = tokenizer.encode(text, add_special_tokens=False).ids[: runner.model.config.block_size]
    if not ids:
        raise EngramError("--explain: the text encodes to no tokens")
    mixer = None
    if counts is not None:
        from .mixing import open_counts_for_model

        mixer = open_counts_for_model(counts, opened.checkpoint)
    logits = [out for _, out in runner.run([np.array([ids], dtype=np.int64)])][-1]
    gates = {
        layer: gate[0].mean(-1).float().cpu().numpy().tolist()
        for layer, gate in runner.model.last_gates().items()
    }
    pieces = [tokenizer.decode([i], skip_special_tokens=False) for i in ids]
    out = {"tokens": pieces, "ids": ids, "gates": gates}
    if mixer is not None:
        out["counts"] = _explain_mix(mixer, counts.mix, runner, tokenizer, ids, logits)
    return out


def _explain_mix(counts, mix, runner, tokenizer, ids: list[int], logits) -> dict:
    """λ, ``P_model``, ``P_counts`` and the mix of each token of one window (eval's mix)."""
    import torch

    from ...corpus.stream import eos_id
    from .mixing import MixPass

    eos = eos_id(tokenizer)
    raw_targets = np.array([[*ids[1:], eos]], dtype=np.int64)  # the last position: nothing
    targets = runner.model_vocab.encode_targets(raw_targets)
    logq = torch.log_softmax(logits.float(), dim=-1)
    class_logp = logq.gather(-1, torch.from_numpy(targets).to(logq.device).unsqueeze(-1))
    class_logp = class_logp.squeeze(-1).double().cpu().numpy()
    mixing = MixPass(counts, np.array(ids, np.int64), raw_targets, runner.model_vocab,
                     mix=mix, eos=eos)  # fmt: skip
    raw_logp, scores, _, lam = mixing.batch(slice(0, 1), logits, class_logp, targets)
    n = len(ids) - 1
    p_model, p_counts = np.exp(raw_logp[:n]), scores[:n, 0]
    mixed = (1 - lam[:n]) * p_model + lam[:n] * p_counts

    def column(values):
        return [None, *(float(v) for v in values)]

    return {"mix": "gate" if mix is None else mix, "lambda": column(lam[:n]),
            "p_model": column(p_model), "p_counts": column(p_counts),
            "p_mixed": column(mixed)}  # fmt: skip
