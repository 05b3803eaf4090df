"""The hash-stats report: frozen dataclasses of integer counts, derived fractions, plain JSON.

Every stored figure is an integer count, so reports computed from the same corpus are equal
bit for bit whatever the batching; fractions and ideal-hash expectations are derived on the fly.
The JSON shape is the one of DESIGN.md ("Collision statistics"), with more keys; docs/hash-stats.md
documents each key.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

REPORT_FORMAT = "engramctl-hash-stats"
REPORT_FORMAT_VERSION = 1


def _fraction(part: int, whole: int) -> float:
    return part / whole if whole else 0.0


def expected_occupied_rows(rows: int, distinct: int) -> float:
    """Ideal uniform hashing: ``P (1 - (1 - 1/P)^d)``.

    >>> round(expected_occupied_rows(2, 2), 6)
    1.5
    """
    return -rows * math.expm1(distinct * math.log1p(-1.0 / rows))


def expected_colliding_fraction(rows: int, distinct: int) -> float:
    """Ideal uniform hashing: a distinct n-gram shares its row w.p. ``1 - (1 - 1/P)^(d-1)``.

    >>> expected_colliding_fraction(2, 2)
    0.5
    """
    if distinct < 1:
        return 0.0
    return -math.expm1((distinct - 1) * math.log1p(-1.0 / rows))


@dataclass(frozen=True)
class HeadStats:
    """One hash head (``rows`` a prime) of one (layer, order)."""

    rows: int  # rows of this head (P)
    occupied_rows: int  # rows holding at least one distinct n-gram
    collided_rows: int  # rows holding 2+ distinct n-grams
    colliding_distinct: int  # distinct n-grams sharing their row with another
    colliding_occurrences: int  # occurrences whose row holds another distinct n-gram
    max_row_load: int  # most distinct n-grams in one row
    distinct: int  # distinct n-grams of the order (the same for every head)
    occurrences: int  # occurrences of the order (the same for every head)
    row_load_histogram: tuple[int, ...] = ()  # rows holding 0, 1, 2, ... distinct n-grams

    @property
    def occupancy(self) -> float:
        return _fraction(self.occupied_rows, self.rows)

    @property
    def colliding_distinct_fraction(self) -> float:
        return _fraction(self.colliding_distinct, self.distinct)

    @property
    def colliding_occurrence_fraction(self) -> float:
        return _fraction(self.colliding_occurrences, self.occurrences)

    @property
    def expected_occupied_rows(self) -> float:
        """Ideal uniform hash: ``P (1 - (1 - 1/P)^d)``."""
        return expected_occupied_rows(self.rows, self.distinct)

    @property
    def expected_colliding_distinct_fraction(self) -> float:
        """Ideal uniform hash: ``1 - (1 - 1/P)^(d - 1)``."""
        return expected_colliding_fraction(self.rows, self.distinct)

    @property
    def expected_collided_rows(self) -> float:
        """Ideal uniform hash: rows minus empty rows minus rows holding exactly one n-gram."""
        P, d = self.rows, self.distinct
        if d == 0:
            return 0.0
        log_keep = math.log1p(-1.0 / P)
        single = d * math.exp((d - 1) * log_keep)  # P * d/P * (1-1/P)^(d-1)
        return max(0.0, self.expected_occupied_rows - single)

    def to_dict(self) -> dict:
        return {
            "rows": self.rows,
            "occupied_rows": self.occupied_rows,
            "occupancy": self.occupancy,
            "collided_rows": self.collided_rows,
            "colliding_distinct": self.colliding_distinct,
            "colliding_distinct_fraction": self.colliding_distinct_fraction,
            "colliding_occurrences": self.colliding_occurrences,
            "colliding_occurrence_fraction": self.colliding_occurrence_fraction,
            "max_row_load": self.max_row_load,
            "expected_occupied_rows": self.expected_occupied_rows,
            "expected_collided_rows": self.expected_collided_rows,
            "expected_colliding_distinct_fraction": self.expected_colliding_distinct_fraction,
            "row_load_histogram": list(self.row_load_histogram),
        }

    @classmethod
    def from_dict(cls, data: dict, *, distinct: int, occurrences: int) -> HeadStats:
        return cls(
            rows=data["rows"],
            occupied_rows=data["occupied_rows"],
            collided_rows=data["collided_rows"],
            colliding_distinct=data["colliding_distinct"],
            colliding_occurrences=data["colliding_occurrences"],
            max_row_load=data["max_row_load"],
            distinct=distinct,
            occurrences=occurrences,
            row_load_histogram=tuple(data.get("row_load_histogram", ())),
        )


@dataclass(frozen=True)
class OrderStats:
    """One n-gram order of one layer: its heads and the all-heads figure."""

    order: int  # n
    occurrences: int  # n-gram occurrences (one per token position)
    distinct: int  # distinct tuples of n canonical ids, pads included
    all_heads_colliding_occurrences: int  # occurrences colliding in every head of the order
    heads: tuple[HeadStats, ...]

    @property
    def all_heads_colliding_occurrence_fraction(self) -> float:
        return _fraction(self.all_heads_colliding_occurrences, self.occurrences)

    @property
    def mean_occupancy(self) -> float:
        """Occupancy averaged over the order's heads."""
        return sum(h.occupancy for h in self.heads) / len(self.heads) if self.heads else 0.0

    @property
    def mean_colliding_distinct_fraction(self) -> float:
        """Colliding distinct fraction averaged over the order's heads."""
        if not self.heads:
            return 0.0
        return sum(h.colliding_distinct_fraction for h in self.heads) / len(self.heads)

    @property
    def expected_all_heads_colliding_occurrence_fraction(self) -> float:
        """Ideal: independent uniform heads; an n-gram collides in all with the product."""
        if not self.heads:
            return 0.0
        return math.prod(h.expected_colliding_distinct_fraction for h in self.heads)

    def to_dict(self) -> dict:
        return {
            "occurrences": self.occurrences,
            "distinct": self.distinct,
            "all_heads_colliding_occurrences": self.all_heads_colliding_occurrences,
            "all_heads_colliding_occurrence_fraction": self.all_heads_colliding_occurrence_fraction,
            "expected_all_heads_colliding_occurrence_fraction": (
                self.expected_all_heads_colliding_occurrence_fraction
            ),
            "heads": [h.to_dict() for h in self.heads],
        }

    @classmethod
    def from_dict(cls, order: int, data: dict) -> OrderStats:
        return cls(
            order=order,
            occurrences=data["occurrences"],
            distinct=data["distinct"],
            all_heads_colliding_occurrences=data["all_heads_colliding_occurrences"],
            heads=tuple(
                HeadStats.from_dict(h, distinct=data["distinct"], occurrences=data["occurrences"])
                for h in data["heads"]
            ),
        )


def layers_to_dict(layers: dict[int, dict[int, OrderStats]]) -> dict:
    return {
        str(layer): {"orders": {str(n): o.to_dict() for n, o in orders.items()}}
        for layer, orders in layers.items()
    }


def layers_from_dict(data: dict) -> dict[int, dict[int, OrderStats]]:
    return {
        int(layer): {int(n): OrderStats.from_dict(int(n), o) for n, o in entry["orders"].items()}
        for layer, entry in data.items()
    }


@dataclass(frozen=True)
class SweepPoint:
    """The same figures for one candidate table size (rows per head of every order)."""

    ngram_vocab: tuple[int, ...]
    layers: dict  # {layer id: {order: OrderStats}}

    def to_dict(self) -> dict:
        return {"ngram_vocab": list(self.ngram_vocab), "layers": layers_to_dict(self.layers)}

    @classmethod
    def from_dict(cls, data: dict) -> SweepPoint:
        return cls(tuple(data["ngram_vocab"]), layers_from_dict(data["layers"]))


@dataclass(frozen=True)
class HashStatsReport:
    """Everything ``engramctl hash-stats`` reports; :meth:`to_dict` is the ``--json`` document."""

    tokens: int  # tokens counted
    documents: int  # documents started
    partial: bool  # stopped early (Ctrl-C or --limit-tokens): figures cover what was read
    layout: dict  # EngramLayout.to_dict() of the analysed layout
    layers: dict  # {layer id: {order: OrderStats}}
    sweep: tuple[SweepPoint, ...] = ()
    files: tuple[str, ...] = ()  # inputs, in the order read
    bytes_read: int = 0  # bytes of input read (compressed size for .gz/.zst)
    seconds: float = 0.0  # wall time of the pass and finalization
    memory_estimate_bytes: int = 0  # the up-front bound printed before the pass
    stopped_reason: str = ""  # "", "interrupted" or "limit-tokens"
    warnings: dict = field(default_factory=dict)  # {kind: {"count": n, "first": "where"}}
    partitions_counted: int = 0  # stopped during partitioned counting: the partitions finalized
    estimated: bool = False  # --estimate: distinct counts from sketches, ideal-hash figures
    relative_standard_error: float = 0.0  # of each estimated distinct count (0: exact)
    extrapolation: dict = field(default_factory=dict)  # --extrapolate: fit, check, predictions

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict:
        return {
            "format": REPORT_FORMAT,
            "format_version": REPORT_FORMAT_VERSION,
            "tokens": self.tokens,
            "documents": self.documents,
            "partial": self.partial,
            "stopped_reason": self.stopped_reason,
            "files": list(self.files),
            "bytes_read": self.bytes_read,
            "seconds": self.seconds,
            "tokens_per_second": self.tokens_per_second,
            "memory_estimate_bytes": self.memory_estimate_bytes,
            "estimated": self.estimated,
            "relative_standard_error": self.relative_standard_error,
            "warnings": self.warnings,
            **({"partitions_counted": self.partitions_counted} if self.partitions_counted else {}),
            "layout": self.layout,
            "layers": layers_to_dict(self.layers),
            "sweep": [point.to_dict() for point in self.sweep],
            **({"extrapolation": self.extrapolation} if self.extrapolation else {}),
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)

    @classmethod
    def from_dict(cls, data: dict) -> HashStatsReport:
        return cls(
            tokens=data["tokens"],
            documents=data["documents"],
            partial=data["partial"],
            layout=data.get("layout", {}),
            layers=layers_from_dict(data["layers"]),
            sweep=tuple(SweepPoint.from_dict(p) for p in data.get("sweep", [])),
            files=tuple(data.get("files", ())),
            bytes_read=data.get("bytes_read", 0),
            seconds=data.get("seconds", 0.0),
            memory_estimate_bytes=data.get("memory_estimate_bytes", 0),
            stopped_reason=data.get("stopped_reason", ""),
            warnings=data.get("warnings", {}),
            partitions_counted=data.get("partitions_counted", 0),
            estimated=data.get("estimated", False),
            relative_standard_error=data.get("relative_standard_error", 0.0),
            extrapolation=data.get("extrapolation", {}),
        )
