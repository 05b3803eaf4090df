"""``plan_cache``: the hit rates, bytes per token and bandwidth of caches of every size.

For each Engram layer: the workload's trace (:mod:`.trace`), then per policy the hits of each
requested size over the accesses after the warm-up: ``lru`` and ``pager`` from one pass each
(:mod:`.lru`), ``static`` from one ranking (:mod:`.static`), ``opt`` one simulation per size
(:mod:`.opt`). Sizes are rows per layer; ``all_layers`` adds the layers up (an ``eval
--cache-rows N`` run splits ``N`` evenly over the layers).
"""

from __future__ import annotations

import json
import math
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..errors import EngramError, UsageError
from .lru import cumulative_hits, hits_at
from .opt import opt_hits_spilled
from .stream import LayerStream, stream_layers
from .tiers import (
    TierView,
    all_layers_view,
    refusal,
    static_sets,
    stream_tier_counts,
    tier_rows,
    tier_view,
)
from .trace import Workload, batch_count

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
    seconds: dict  # policy -> seconds (lru and pager share one streamed pass: each shows it)
    tiers: dict | None = None  # the two-tier view (TierView.to_dict) when a TierConfig is given

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
    tiers: dict | None = None  # {"config": TierConfig, "all_layers": TierView} (--host-cache)

    def to_dict(self) -> dict:
        doc = {k: v for k, v in asdict(self).items() if k not in ("layers", "all_layers")}
        doc["layers"] = {str(k): v.to_dict() for k, v in self.layers.items()}
        doc["all_layers"] = {p: [c.to_dict() for c in pts] for p, pts in self.all_layers.items()}
        return doc

    def to_json(self) -> str:
        """The plan as one indented JSON document (what ``cache-plan --json`` prints)."""
        return json.dumps(self.to_dict(), indent=2)


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


def check_spill_dir(spill_dir) -> None:
    """``--spill-dir`` must be an existing directory (None: the system's temporary directory)."""
    if spill_dir is not None and not Path(spill_dir).is_dir():
        raise UsageError(f"--spill-dir {spill_dir} is not a directory; create it or pick another")


def check_tiers(tiers, policies) -> None:
    """The two-tier view models the pager: it needs the ``pager`` policy."""
    if tiers is not None and "pager" not in policies:
        raise UsageError(
            "the tiers' view (--cache-rows, --host-cache) models the pager: keep pager in --policy"
        )


def check_policies(policies) -> tuple[str, ...]:
    unknown = [p for p in policies if p not in POLICIES]
    if unknown or not policies:
        raise UsageError(f"--policy: expected some of {', '.join(POLICIES)}, got {policies!r}")
    return tuple(p for p in POLICIES if p in policies)


def default_sizes(streams: dict[int, LayerStream], points: int) -> tuple[int, ...]:
    """``points`` log-spaced sizes from half a batch's distinct rows to every row touched."""
    if points < 2:
        raise UsageError(f"--points must be at least 2, got {points}")
    hi = max(t.distinct for t in streams.values())
    lo = max(1, min(int(np.mean(t.unique)) // 2 for t in streams.values()))
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


# ------------------------------------------------------------------------------- policies
def _layer_plan(
    stream: LayerStream, *, warmup: int, sizes, policies, table_rows, tier_sizes=None
) -> LayerPlan:
    accesses = stream.accesses - stream.counted_from
    unique = np.asarray(stream.unique, dtype=np.int64)
    lookups = int(np.sum(stream.lookups[warmup:]))
    hits, reach, seconds = {}, {}, {}
    pager_min = 0
    tier_hits = None
    for policy in policies:
        t0 = time.perf_counter()
        if policy == "lru":
            cumulative = cumulative_hits(stream.stacks.histogram(stream.distinct))
            hits[policy] = hits_at(cumulative, sizes)
            reach[policy] = _reach(cumulative, accesses)
        elif policy == "pager":
            pager_min = stream.stacks.pager_min_rows
            cumulative = cumulative_hits(stream.stacks.histogram(stream.distinct, pager=True))
            found = hits_at(cumulative, sizes)
            hits[policy] = [
                None if s < pager_min else int(h) for s, h in zip(sizes, found, strict=True)
            ]
            reach[policy] = _reach(cumulative, accesses, floor=pager_min)
            if tier_sizes is not None:
                tier_hits = stream_tier_counts(stream, cumulative, tier_sizes)
        elif policy == "static" and stream.static is not None:
            cumulative = stream.static.cumulative()
            hits[policy] = hits_at(cumulative, sizes)
            reach[policy] = _reach(cumulative, accesses)
        elif policy == "opt":
            hits[policy] = opt_hits_spilled(
                stream.spill, stream.distinct, sizes, count_from=stream.counted_from
            )
        seconds[policy] = time.perf_counter() - t0
        # plus the streamed part (lru and pager share one pass: each is given its time)
        part = {"lru": "stacks", "pager": "stacks", "static": "static", "opt": "spill"}[policy]
        seconds[policy] += stream.seconds[part]
    return LayerPlan(
        layer=stream.layer,
        table_rows=int(table_rows),
        distinct_rows=stream.distinct,
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
        tiers=None if tier_hits is None else {"hits": tier_hits},  # plan_cache: the full view
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
    spill_dir=None,
    progress: Callable[[str, int, int], None] | None = None,
    tiers=None,
    host_static_out=None,
) -> CachePlan:
    """Plan the cache of every layer in ``layer_ids`` for a workload (see the module docstring).

    ``tiers`` (a :class:`~engramctl.rowcache.tiers.TierConfig`) adds the two-tier view
    (:mod:`.tiers`): what its device cache, its host tier and storage each serve; it needs the
    ``pager`` policy. With ``tiers.host_static`` the host tier is that static set; with
    ``host_static_out`` (a path) it is the warm-up's top rows, as many per layer as the host tier
    holds, written there (:func:`engramctl.rowcache.static.save_static_rows`) for ``eval
    --host-static``.

    ``workload`` comes from :func:`engramctl.cacheplan.trace.read_workload`; ``hasher`` is an
    :class:`engramctl.hashing.NgramHasher` of the layout; ``dim``/``dtype`` give the row size;
    ``sizes`` are rows per layer (default: ``points`` log-spaced sizes); ``progress(stage, done,
    total)`` is called while hashing. Memory is O(distinct rows touched): the batches stream
    through the policies (:mod:`.stream`); OPT's trace is spilled to a temporary directory under
    ``spill_dir`` (default: the system's temporary directory), removed when the plan ends, on
    error too.
    """
    from ..rowcache.static import save_static_rows
    from ..table.core.dtypes import parse_dtype, row_bytes

    started = time.perf_counter()
    check_options(batch, warmup_fraction, tokens_per_s)
    check_spill_dir(spill_dir)
    if sizes is not None:
        sizes = check_sizes(sizes)
    policies = check_policies(policies)
    check_tiers(tiers, policies)
    dtype = parse_dtype(dtype)
    batches = batch_count(workload, batch)
    warmup = math.ceil(warmup_fraction * batches)
    if batches - warmup < 2:
        raise EngramError(
            f"the workload makes {batches} batch(es) of {batch}; {warmup} go to warm-up, leaving "
            f"{batches - warmup}: give a longer workload, a smaller --batch or --warmup-fraction"
        )
    if warmup == 0:
        policies = tuple(p for p in policies if p != "static")
    layout = hasher.layout
    static_rows, static_top = static_sets(
        tiers, layout, layer_ids, row_bytes(dim, dtype), static_out=host_static_out, warmup=warmup
    )
    with tempfile.TemporaryDirectory(prefix="engramctl-cache-plan-", dir=spill_dir) as spill:
        streams = stream_layers(
            workload,
            hasher,
            batch=batch,
            layers=layer_ids,
            warmup=warmup,
            policies=policies,
            spill_dir=spill if "opt" in policies else None,
            table_rows=layout.layer_rows,
            progress=(lambda d, t: progress("hashing", d, t)) if progress else None,
            static_rows=static_rows,
            static_top=static_top,
        )
        if host_static_out is not None:
            rows = {layer: stream.static_rows for layer, stream in streams.items()}
            save_static_rows(host_static_out, rows, layout)
        plan = _plan_streams(
            streams, workload, workload_paths, batch=batch, seq_len=seq_len, sizes=sizes,
            points=points, warmup=warmup, warmup_fraction=warmup_fraction, dtype=dtype, dim=dim,
            tokens_per_s=tokens_per_s, policies=policies, layout=layout, progress=progress,
            tiers=tiers,
        )  # fmt: skip
    plan.seconds = time.perf_counter() - started
    return plan


def _plan_streams(
    streams, workload, workload_paths, *, batch, seq_len, sizes, points, warmup,
    warmup_fraction, dtype, dim, tokens_per_s, policies, layout, progress, tiers=None,
) -> CachePlan:  # fmt: skip
    """The plan from the layers' streamed state (the second half of :func:`plan_cache`)."""
    from ..table.core.dtypes import row_bytes

    nbytes = row_bytes(dim, dtype)
    if sizes is None:
        sizes = default_sizes(streams, points)
    counted_positions = int(workload.sequences[warmup * batch :].size)
    plan = CachePlan(
        workload=[str(p) for p in workload_paths],
        cut=workload.cut,
        sequences=len(workload.sequences),
        tokens=workload.tokens,
        positions=int(workload.sequences.size),
        counted_positions=counted_positions,
        batch=batch,
        seq_len=seq_len,
        batches=len(next(iter(streams.values())).unique),
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
    for layer, stream in streams.items():
        if progress:
            progress(f"layer {layer}", 0, 1)
        sizes_of_tiers = None if tiers is None else tier_rows(tiers, layout, layer, nbytes)
        lp = _layer_plan(
            stream,
            warmup=warmup,
            sizes=sizes,
            policies=policies,
            table_rows=layout.layer_rows(layer),
            tier_sizes=sizes_of_tiers,
        )
        if tiers is not None:
            static = stream.static_rows is not None
            refused = refusal(
                tiers, layout, layer, *sizes_of_tiers, pager_min=lp.pager_min_rows,
                batch_rows=int(np.max(stream.unique)), static=static,
            )  # fmt: skip
            lp.tiers = tier_view(
                *sizes_of_tiers, lp.accesses, lp.tiers["hits"], positions=counted_positions,
                row_nbytes=nbytes, dim=dim, refused=refused,
                host_mode="static" if static else "lru",
            ).to_dict()  # fmt: skip
        lp.rows_per_token = lp.accesses / counted_positions
        lp.curves = {
            policy: _points(sizes, h, lp.accesses, counted_positions, nbytes, tokens_per_s)
            for policy, h in lp.curves.items()
        }
        plan.layers[layer] = lp
        streams[layer] = None  # free the layer's state before the next layer's policies run
    plan.all_layers = _all_layers(plan, sizes, nbytes, tokens_per_s, counted_positions)
    if tiers is not None:
        views = [TierView(**lp.tiers) for lp in plan.layers.values()]
        total = all_layers_view(views, positions=counted_positions, row_nbytes=nbytes, dim=dim)
        plan.tiers = {"config": tiers.to_dict(), "all_layers": total.to_dict()}
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
    spill_dir=None,
    progress: Callable[[str, int, int], None] | None = None,
    tiers=None,
    host_static_out=None,
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
    check_spill_dir(spill_dir)
    if sizes is not None:
        check_sizes(sizes)
    check_tiers(tiers, check_policies(policies))
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
        spill_dir=spill_dir,
        progress=progress,
        tiers=tiers,
        host_static_out=host_static_out,
    )
