"""``plan_cache``: the hit rates, bytes per token and bandwidth of caches of every size.

For each Engram layer: the workload's trace (:mod:`.trace`), then per policy the hits of each
requested size over the accesses after the warm-up: ``lru`` and ``pager`` from one pass each
(:mod:`.lru`), ``static`` from one ranking (:mod:`.static`), ``opt`` one simulation per size
(:mod:`.opt`). Sizes are rows per layer; ``all_layers`` adds the layers up (an ``eval
--cache-rows N`` run splits ``N`` evenly over the layers).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np

from ..errors import EngramError, UsageError
from .lru import cumulative_hits, hits_at, lru_histogram, pager_histogram
from .opt import opt_hits
from .static import access_ranks, static_ranks
from .trace import LayerTrace, Workload, batch_count, build_traces

POLICIES = ("lru", "pager", "static", "opt")
TARGETS = (0.5, 0.9, 0.99)  # hit rates whose smallest cache the plan names
DEFAULT_POINTS = 16


@dataclass(frozen=True)
class CurvePoint:
    """One cache size of one policy (``hit_rate`` None: the pager refuses a cache this small)."""

    cache_rows: int
    hit_rate: float | None
    hits: int | None
    bytes_per_token: float | None  # bytes paged in per token (misses x row bytes / tokens)
    bandwidth: float | None  # bytes/s at --tokens-per-s (None without it)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class LayerPlan:
    """The plan of one Engram layer."""

    layer: int
    table_rows: int
    distinct_rows: int  # rows the whole workload touches
    accesses: int  # counted accesses (distinct rows per batch, batches after the warm-up)
    lookups: int  # counted lookups (positions x heads)
    unique_rows_per_batch_mean: float
    unique_rows_per_batch_p99: float
    dedup_ratio: float  # lookups / unique rows
    rows_per_token: float  # accesses per token: the rows a token pages at 0% hits
    pager_min_rows: int  # the smallest cache the pager accepts (rows of batches in flight)
    curves: dict  # policy -> [CurvePoint]
    reach: dict  # policy -> {"50%": rows or None, ...} (exact, not limited to the sizes asked)
    seconds: dict  # policy -> seconds

    def to_dict(self) -> dict:
        doc = {k: v for k, v in asdict(self).items() if k not in ("curves", "layer")}
        for policy, points in self.curves.items():
            doc[policy] = [p.to_dict() for p in points]
        return doc


@dataclass
class CachePlan:
    """A cache plan: the workload, the row size, and one :class:`LayerPlan` per layer."""

    workload: list
    cut: str
    sequences: int
    tokens: int  # real tokens of the workload
    positions: int  # positions run through the model (EOS padding of the last window included)
    counted_positions: int  # positions of the batches after the warm-up
    batch: int
    seq_len: int | None
    batches: int
    warmup_batches: int
    warmup_fraction: float
    dtype: str
    dim: int
    row_bytes: int
    tokens_per_s: float | None
    sizes: list
    policies: list
    layout: dict
    layers: dict = field(default_factory=dict)  # layer id -> LayerPlan
    all_layers: dict = field(default_factory=dict)  # policy -> [CurvePoint], sizes x layers
    seconds: float = 0.0

    def to_dict(self) -> dict:
        doc = {k: v for k, v in asdict(self).items() if k not in ("layers", "all_layers")}
        doc["layers"] = {str(k): v.to_dict() for k, v in self.layers.items()}
        doc["all_layers"] = {p: [c.to_dict() for c in pts] for p, pts in self.all_layers.items()}
        return doc


# ------------------------------------------------------------------------------ checks
def check_sizes(sizes) -> tuple[int, ...]:
    """Cache sizes must be positive integers (rows per layer)."""
    sizes = tuple(int(s) for s in sizes)
    bad = [s for s in sizes if s < 1]
    if bad:
        raise UsageError(f"--sizes: cache sizes must be at least 1 row, got {bad[0]}")
    return tuple(sorted(set(sizes)))


def check_options(batch: int, warmup_fraction: float, tokens_per_s: float | None) -> None:
    """The numbers a plan takes, checked before any work."""
    if batch < 1:
        raise UsageError(f"--batch must be at least 1, got {batch}")
    if not 0 <= warmup_fraction < 1 or math.isnan(warmup_fraction):
        raise UsageError(f"--warmup-fraction must be in [0, 1), got {warmup_fraction}")
    if tokens_per_s is not None and not tokens_per_s > 0:
        raise UsageError(f"--tokens-per-s must be positive, got {tokens_per_s}")


def check_policies(policies) -> tuple[str, ...]:
    unknown = [p for p in policies if p not in POLICIES]
    if unknown or not policies:
        raise UsageError(f"--policy: expected some of {', '.join(POLICIES)}, got {policies!r}")
    return tuple(p for p in POLICIES if p in policies)


def default_sizes(traces: dict[int, LayerTrace], points: int) -> tuple[int, ...]:
    """``points`` log-spaced sizes from half a batch's distinct rows to every row touched."""
    if points < 2:
        raise UsageError(f"--points must be at least 2, got {points}")
    hi = max(t.distinct for t in traces.values())
    lo = max(1, min(int(t.unique_per_batch().mean()) // 2 for t in traces.values()))
    lo = min(lo, hi)
    return check_sizes(np.unique(np.round(np.geomspace(lo, hi, points))).astype(np.int64))


def _reach(cumulative_hits: np.ndarray, accesses: int, floor: int = 1) -> dict:
    """Smallest size whose hits reach each target (cumulative_hits[C] = hits of size C)."""
    out = {}
    for target in TARGETS:
        need = math.ceil(target * accesses - 1e-9)
        at = int(np.searchsorted(cumulative_hits, need, side="left"))
        key = f"{100 * target:g}%"
        out[key] = max(at, floor) if at < len(cumulative_hits) and accesses else None
    return out


def _static_reach(ranks: np.ndarray, accesses: int) -> dict:
    """Smallest static cache reaching each target: ``ranks`` sorted, one per hitting access."""
    out = {}
    for target in TARGETS:
        need = math.ceil(target * accesses - 1e-9)
        reached = 0 < need <= len(ranks)
        out[f"{100 * target:g}%"] = int(ranks[need - 1]) + 1 if reached else None
    return out


# ------------------------------------------------------------------------------- policies
def _layer_plan(trace: LayerTrace, *, warmup: int, sizes, policies, table_rows) -> LayerPlan:
    start = int(trace.bounds[warmup])
    accesses = len(trace.ids) - start
    unique = trace.unique_per_batch()
    lookups = int(trace.lookups[warmup:].sum())
    hits, reach, seconds = {}, {}, {}
    pager_min = 0
    for policy in policies:
        t0 = time.perf_counter()
        if policy == "lru":
            cumulative = cumulative_hits(lru_histogram(trace.ids, trace.distinct, count_from=start))
            hits[policy] = hits_at(cumulative, sizes)
            reach[policy] = _reach(cumulative, accesses)
        elif policy == "pager":
            hist, pager_min = pager_histogram(
                trace.ids, trace.bounds, trace.distinct, count_from_batch=warmup
            )
            cumulative = cumulative_hits(hist)
            found = hits_at(cumulative, sizes)
            hits[policy] = [
                None if s < pager_min else int(h) for s, h in zip(sizes, found, strict=True)
            ]
            reach[policy] = _reach(cumulative, accesses, floor=pager_min)
        elif policy == "static" and warmup > 0:
            ranked, _ = static_ranks(trace.warm_rows, trace.warm_lookups)
            ranks = access_ranks(ranked, trace.rows[trace.ids[start:]])
            hits[policy] = np.searchsorted(ranks, np.asarray(sizes, dtype=np.int64))
            reach[policy] = _static_reach(ranks, accesses)
        elif policy == "opt":
            hits[policy] = opt_hits(trace.ids, trace.distinct, sizes, count_from=start)
        seconds[policy] = time.perf_counter() - t0
    return LayerPlan(
        layer=trace.layer,
        table_rows=int(table_rows),
        distinct_rows=trace.distinct,
        accesses=accesses,
        lookups=lookups,
        unique_rows_per_batch_mean=float(unique[warmup:].mean()),
        unique_rows_per_batch_p99=float(np.percentile(unique[warmup:], 99)),
        dedup_ratio=lookups / accesses,
        rows_per_token=0.0,  # filled in by plan_cache, which knows the positions
        pager_min_rows=int(pager_min),
        curves=hits,  # hit counts for now; plan_cache turns them into CurvePoints
        reach=reach,
        seconds=seconds,
    )


def _points(sizes, hits, accesses, positions, row_bytes, tokens_per_s) -> list[CurvePoint]:
    out = []
    for size, h in zip(sizes, hits, strict=True):
        if h is None:
            out.append(CurvePoint(int(size), None, None, None, None))
            continue
        per_token = (accesses - int(h)) * row_bytes / positions
        out.append(
            CurvePoint(
                int(size),
                int(h) / accesses if accesses else 0.0,
                int(h),
                per_token,
                per_token * tokens_per_s if tokens_per_s else None,
            )
        )
    return out


def plan_cache(
    *,
    workload: Workload,
    workload_paths,
    hasher,
    layer_ids,
    dim: int,
    dtype: str,
    batch: int,
    seq_len: int | None,
    sizes=None,
    points: int = DEFAULT_POINTS,
    warmup_fraction: float = 0.1,
    tokens_per_s: float | None = None,
    policies=POLICIES,
    progress: Callable[[str, int, int], None] | None = None,
) -> CachePlan:
    """Plan the cache of every layer in ``layer_ids`` for a workload (see the module docstring).

    ``workload`` comes from :func:`engramctl.cacheplan.trace.read_workload`; ``hasher`` is an
    :class:`engramctl.hashing.NgramHasher` of the layout; ``dim``/``dtype`` give the row size;
    ``sizes`` are rows per layer (default: ``points`` log-spaced sizes); ``progress(stage, done,
    total)`` is called while hashing.
    """
    from ..table.dtypes import parse_dtype, row_bytes

    started = time.perf_counter()
    check_options(batch, warmup_fraction, tokens_per_s)
    if sizes is not None:
        sizes = check_sizes(sizes)
    policies = check_policies(policies)
    dtype = parse_dtype(dtype)
    nbytes = row_bytes(dim, dtype)
    batches = batch_count(workload, batch)
    warmup = math.ceil(warmup_fraction * batches)
    if batches - warmup < 2:
        raise EngramError(
            f"the workload makes {batches} batch(es) of {batch}; {warmup} go to warm-up, leaving "
            f"{batches - warmup}: give a longer workload, a smaller --batch or --warmup-fraction"
        )
    if warmup == 0:
        policies = tuple(p for p in policies if p != "static")
    traces = build_traces(
        workload,
        hasher,
        batch=batch,
        layers=layer_ids,
        warmup_batches=warmup,
        progress=(lambda d, t: progress("hashing", d, t)) if progress else None,
    )
    if sizes is None:
        sizes = default_sizes(traces, points)
    counted_positions = int(workload.sequences[warmup * batch :].size)
    layout = hasher.layout
    plan = CachePlan(
        workload=[str(p) for p in workload_paths],
        cut=workload.cut,
        sequences=len(workload.sequences),
        tokens=workload.tokens,
        positions=int(workload.sequences.size),
        counted_positions=counted_positions,
        batch=batch,
        seq_len=seq_len,
        batches=batches,
        warmup_batches=warmup,
        warmup_fraction=warmup_fraction,
        dtype=dtype,
        dim=dim,
        row_bytes=nbytes,
        tokens_per_s=tokens_per_s,
        sizes=list(sizes),
        policies=list(policies),
        layout=layout.to_dict(),
    )
    for layer, trace in traces.items():
        if progress:
            progress(f"layer {layer}", 0, 1)
        lp = _layer_plan(
            trace,
            warmup=warmup,
            sizes=sizes,
            policies=policies,
            table_rows=layout.layer_rows(layer),
        )
        lp.rows_per_token = lp.accesses / counted_positions
        lp.curves = {
            policy: _points(sizes, h, lp.accesses, counted_positions, nbytes, tokens_per_s)
            for policy, h in lp.curves.items()
        }
        plan.layers[layer] = lp
        traces[layer] = None  # free the trace before the next layer's policies run
    plan.all_layers = _all_layers(plan, sizes, nbytes, tokens_per_s, counted_positions)
    plan.seconds = time.perf_counter() - started
    return plan


def _all_layers(plan: CachePlan, sizes, nbytes, tokens_per_s, positions) -> dict:
    """Each policy summed over layers: a cache of ``size`` rows in every layer."""
    out = {}
    n_layers = len(plan.layers)
    total_accesses = sum(lp.accesses for lp in plan.layers.values())
    for policy in plan.policies:
        rows = []
        for i in range(len(sizes)):
            per_layer = [lp.curves[policy][i].hits for lp in plan.layers.values()]
            rows.append(None if any(h is None for h in per_layer) else sum(per_layer))
        points = _points(sizes, rows, total_accesses, positions, nbytes, tokens_per_s)
        out[policy] = [
            CurvePoint(p.cache_rows * n_layers, p.hit_rate, p.hits, p.bytes_per_token, p.bandwidth)
            for p in points
        ]
    return out


# ------------------------------------------------------------------------ entry point
def plan_workload(
    *,
    paths,
    vocab,
    layout,
    layer_ids=None,
    dim: int,
    dtype: str,
    tokenizer: str = "deepseek-v4",
    batch: int = 16,
    seq_len: int = 128,
    sizes=None,
    points: int = DEFAULT_POINTS,
    warmup_fraction: float = 0.1,
    tokens_per_s: float | None = None,
    policies=POLICIES,
    progress: Callable[[str, int, int], None] | None = None,
) -> CachePlan:
    """Read workload files (cut as ``eval`` cuts them) and plan their cache: ``cache-plan``.

    ``vocab`` is the canonical vocab of ``layout``; ``tokenizer`` must be the one it was built
    from (it encodes text and names the EOS id). Everything else is as in :func:`plan_cache`.
    Cheap arguments are checked before any file is read.
    """
    from ..hashing import NgramHasher
    from ..tokenizer import load_checked_tokenizer
    from .trace import read_workload

    check_options(batch, warmup_fraction, tokens_per_s)
    if sizes is not None:
        check_sizes(sizes)
    check_policies(policies)
    hasher = NgramHasher(layout, vocab)
    text_tokenizer, _ = load_checked_tokenizer(tokenizer, sha256=vocab.source_sha256)
    workload = read_workload(paths, tokenizer=text_tokenizer, seq_len=seq_len)
    return plan_cache(
        workload=workload,
        workload_paths=paths,
        hasher=hasher,
        layer_ids=layout.layers if layer_ids is None else layer_ids,
        dim=dim,
        dtype=dtype,
        batch=batch,
        seq_len=seq_len,
        sizes=sizes,
        points=points,
        warmup_fraction=warmup_fraction,
        tokens_per_s=tokens_per_s,
        policies=policies,
        progress=progress,
    )
