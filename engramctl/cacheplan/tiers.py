"""``cache-plan``'s two-tier view: what the device cache, the host tier and storage each serve.

For a :class:`~engramctl.rowcache.tiers.TierConfig` (device rows ``D`` and host bytes, which
become ``H`` rows per layer by the config's own arithmetic), every counted access of a layer is
served by exactly one tier. Both caches follow the pager's policy over every distinct row of every
batch (:mod:`engramctl.rowcache.tiers`), so both hold the rows of highest (last batch, row id) and
one rank decides: the ``pager`` curve's cumulative hits ``hits(C)`` give device hits ``hits(D)``,
host hits ``hits(H) - hits(D)`` and storage reads ``accesses - hits(H)``. The pager counts the same
three numbers as it runs (``PagingStats``): a test holds them equal on one workload.

Static mode (``--host-static ROWS.npz``, or the warm-up's top rows that ``--host-static-out``
writes): the device cache is as above; the host tier holds a fixed set ``S``, so a device miss is
a host hit exactly when its row is in ``S``. The stream counts the pager ranks of ``S``'s accesses
apart (``set_hist``): host hits are ``S``'s counted accesses less those ranked below ``D``.

The links: storage -> host carries the rows read from the table, in the table's encoding (row
bytes); host -> device carries every device miss decoded to float32 (``dim x 4`` bytes), as the
pager copies them. Both per token of the counted batches.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from ..errors import UsageError
from ..rowcache.tiers import TierConfig


@dataclass(frozen=True)
class TierView:
    """What each tier serves of one layer (or all layers) under one configuration.

    ``refused``: why the pager would refuse this configuration (its counts are then None).
    """

    device_rows: int  # per layer (all layers: summed)
    host_rows: int
    accesses: int  # counted distinct rows per batch, summed
    device_hits: int | None
    host_hits: int | None
    storage_reads: int | None
    device_fraction: float | None
    host_fraction: float | None
    storage_fraction: float | None
    storage_to_host_bytes_per_token: float | None  # rows read from the table, stored bytes
    host_to_device_bytes_per_token: float | None  # device misses, float32 bytes
    refused: str | None = None
    host_mode: str = "lru"  # "lru" (admits every batch's rows) or "static" (a fixed set)

    def to_dict(self) -> dict:
        return asdict(self)


def tier_rows(config: TierConfig, layout, layer: int, row_nbytes: int) -> tuple[int, int]:
    """``(device rows, host rows)`` of ``layer`` as the pager sizes them (all the layout's layers
    share the budgets)."""
    n_layers = len(layout.layers)
    layer_rows = layout.layer_rows(layer)
    device = config.device_rows_per_layer(layer_rows, n_layers)
    host = config.host_rows_per_layer(layer_rows, n_layers, row_nbytes) if config.host_tier else 0
    return device, host


def refusal(
    config, layout, layer, device, host, *, pager_min: int, batch_rows: int, static=False
) -> str | None:
    """Why the pager would refuse these sizes for ``layer`` (None: it runs); ``static``: the host
    tier holds a fixed set (no batch goes through it)."""
    if device < pager_min:
        return (
            f"the device cache's {device:,} rows of layer {layer} are below the pager's minimum "
            f"{pager_min:,} (a batch's rows and those of the batches in flight)"
        )
    try:
        config.check_host_rows(host, device, layer, len(layout.layers), static=static)
    except UsageError as exc:
        return str(exc)
    if config.host_tier and host < batch_rows and not static:
        return (
            f"the host tier's {host:,} rows of layer {layer} are fewer than one batch's "
            f"{batch_rows:,} distinct rows"
        )
    return None


def tier_counts(cumulative: np.ndarray, device: int, host: int) -> tuple[int, int]:
    """``(device hits, host hits)`` from the pager curve's cumulative hits (``host`` 0: none).

    >>> tier_counts(np.array([0, 5, 8, 9, 9]), 1, 3)
    (5, 4)
    """
    last = len(cumulative) - 1
    device_hits = int(cumulative[min(device, last)])
    if host <= 0:
        return device_hits, 0
    return device_hits, int(cumulative[min(max(host, device), last)]) - device_hits


def static_tier_counts(
    cumulative: np.ndarray, set_hist: np.ndarray, set_accesses: int, device: int
) -> tuple[int, int]:
    """``(device hits, host hits)`` with a static host set: device hits from the pager curve,
    host hits the set's counted accesses the device cache misses (rank ``>= device``).

    >>> static_tier_counts(np.array([0, 5, 8, 9, 9]), np.array([2, 1, 0, 0]), 4, 1)
    (5, 2)
    """
    last = len(cumulative) - 1
    device_hits = int(cumulative[min(device, last)])
    return device_hits, int(set_accesses) - int(np.sum(set_hist[:device]))


def stream_tier_counts(stream, cumulative: np.ndarray, sizes: tuple[int, int]) -> tuple[int, int]:
    """The tiers' hits of a layer's stream (:class:`~.stream.LayerStream`): static mode when the
    stream counted a static host set, else the LRU mode's :func:`tier_counts`."""
    if stream.static_rows is None:
        return tier_counts(cumulative, *sizes)
    hist = stream.stacks.set_histogram(stream.distinct)
    return static_tier_counts(cumulative, hist, stream.static_accesses, sizes[0])


def static_sets(tiers, layout, layer_ids, row_nbytes: int, *, static_out, warmup: int):
    """``(static_rows, static_top)`` for :func:`~.stream.stream_layers`: the rows of
    ``--host-static`` (checked against the layout and the host tier's rows), or the host tier's
    rows per layer to take from the warm-up's ranking (``--host-static-out``), or neither."""
    from ..rowcache.static import check_static_fits, load_static_rows

    path = None if tiers is None else tiers.host_static
    if static_out is None and path is None:
        return None, None
    if tiers is None or not tiers.host_tier:
        raise UsageError("--host-static-out writes the host tier's rows: give --host-cache SIZE")
    if static_out is not None and path is not None:
        raise UsageError("give --host-static (rows to plan with) or --host-static-out, not both")
    hosts = {layer: tier_rows(tiers, layout, layer, row_nbytes)[1] for layer in layer_ids}
    if path is None:
        if warmup < 1:
            raise UsageError(
                "--host-static-out ranks the warm-up batches' rows: give --warmup-fraction above 0"
            )
        return None, hosts
    rows = load_static_rows(path, layout, layers=tuple(layer_ids))
    for layer in layer_ids:
        check_static_fits(rows[layer], hosts[layer], layer, path)
    return rows, None


def tier_view(
    device: int, host: int, accesses: int, hits: tuple[int, int] | None, *, positions: int,
    row_nbytes: int, dim: int, refused: str | None = None, host_mode: str = "lru",
) -> TierView:  # fmt: skip
    """The view of counted ``hits`` (``(device, host)``; None when refused) over ``accesses``."""
    if hits is None or refused is not None:
        return TierView(device, host, accesses, *([None] * 8), refused=refused, host_mode=host_mode)
    device_hits, host_hits = hits
    storage = accesses - device_hits - host_hits

    def share(n):
        return n / accesses if accesses else 0.0

    return TierView(
        device_rows=device, host_rows=host, accesses=accesses, device_hits=device_hits,
        host_hits=host_hits, storage_reads=storage, device_fraction=share(device_hits),
        host_fraction=share(host_hits), storage_fraction=share(storage),
        storage_to_host_bytes_per_token=storage * row_nbytes / positions,
        host_to_device_bytes_per_token=(accesses - device_hits) * dim * 4 / positions,
        host_mode=host_mode,
    )  # fmt: skip


def all_layers_view(views, *, positions: int, row_nbytes: int, dim: int) -> TierView:
    """The layers' views summed (refused when any layer is)."""
    views = list(views)
    refused = next((v.refused for v in views if v.refused is not None), None)
    device = sum(v.device_rows for v in views)
    host = sum(v.host_rows for v in views)
    accesses = sum(v.accesses for v in views)
    hits = None
    if refused is None:
        hits = (sum(v.device_hits for v in views), sum(v.host_hits for v in views))
    return tier_view(
        device, host, accesses, hits, positions=positions, row_nbytes=row_nbytes, dim=dim,
        refused=refused, host_mode=views[0].host_mode if views else "lru",
    )  # fmt: skip
