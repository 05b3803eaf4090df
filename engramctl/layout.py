"""Hash layouts: everything that fixes where an n-gram's rows live.

An :class:`EngramLayout` holds the n-gram vocab size per order, the max n-gram order, heads per
order, Engram layer ids, seed, pad id and the canonical vocab size. From it follow, exactly as in
DESIGN.md ("Layout"), per-layer multipliers, per-head prime row counts and head offsets.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

import numpy as np

from .errors import UsageError

# Row-address fields of each preset, and the embedding width per head row it is served with.
PRESETS: dict[str, dict] = {
    "demo-v1": {
        "ngram_vocab": (646400, 646400),
        "max_ngram": 3,
        "heads": 8,
        "layers": (1, 15),
        "seed": 0,
        "pad_id": 2,
    },
    "deepseek-v4.1": {
        "ngram_vocab": (16000000, 16000000, 16000000),
        "max_ngram": 4,
        "heads": 8,
        "layers": (1, 14),
        "seed": 0,
        "pad_id": 2,
    },
}
# Values per head row a preset is served with (demo-v1: 512 per order / 8 heads).
PRESET_HEAD_DIM = {"demo-v1": 64, "deepseek-v4.1": 256}
PRESET_DTYPE = {"demo-v1": "float32", "deepseek-v4.1": "float8_e4m3fn"}
LAYER_SEED_PRIME = 10007
# Sanity bounds: beyond them a layout is a typo, and the prime search would run for minutes.
MAX_NGRAM_LIMIT = 16
MAX_HEADS = 1024
INT64_MAX = 2**63 - 1
# Deterministic Miller-Rabin witnesses, exact for every n < 3.3e24 (so every int64).
_MR_BASES = (2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41)


def is_prime(n: int) -> bool:
    """Deterministic primality test for 64-bit integers.

    >>> [k for k in range(20) if is_prime(k)]
    [2, 3, 5, 7, 11, 13, 17, 19]
    """
    if n < 2:
        return False
    for p in _MR_BASES:
        if n % p == 0:
            return n == p
    d, s = n - 1, 0
    while d % 2 == 0:
        d //= 2
        s += 1
    for a in _MR_BASES:
        x = pow(a, d, n)
        if x in (1, n - 1):
            continue
        for _ in range(s - 1):
            x = x * x % n
            if x == n - 1:
                break
        else:
            return False
    return True


def next_unused_prime(start: int, used: set[int]) -> int:
    """The smallest prime greater than ``start`` not in ``used``.

    >>> next_unused_prime(10, {11})
    13
    """
    candidate = start + 1
    while not (is_prime(candidate) and candidate not in used):
        candidate += 1
    return candidate


def _as_int(name: str, value) -> int:
    """A layout field as a Python int: integers (numpy's too) pass, anything else is refused.

    >>> _as_int("heads", np.int64(8))
    8
    """
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise UsageError(f"layout {name}: expected an integer, got {value!r}")
    return int(value)


def parse_int_list(text: str, *, name: str) -> tuple[int, ...]:
    """Parse ``"646400,646400"`` (``k``/``M``/``G`` suffixes allowed) into ints.

    >>> parse_int_list("1M,4k", name="--sweep")
    (1000000, 4000)
    """
    values = []
    for part in str(text).split(","):
        part = part.strip().replace("_", "")
        if not part:
            continue
        scale = {"k": 10**3, "m": 10**6, "g": 10**9}.get(part[-1].lower(), 1)
        digits = part[:-1] if scale != 1 else part
        try:
            values.append(int(float(digits) * scale) if scale != 1 else int(digits))
        except ValueError:
            raise UsageError(f"{name}: expected comma-separated integers, got {text!r}") from None
    if not values:
        raise UsageError(f"{name}: expected at least one integer, got {text!r}")
    return tuple(values)


@dataclass(frozen=True)
class EngramLayout:
    """Row addressing of an Engram model's memory tables (frozen, JSON-serializable)."""

    ngram_vocab: tuple[int, ...]  # target rows per head for n = 2..max_ngram
    max_ngram: int  # largest n-gram order (>= 2)
    heads: int  # hash heads per n-gram order
    layers: tuple[int, ...]  # transformer block ids that carry an Engram module
    seed: int  # seeds the per-layer multipliers
    pad_id: int  # raw token id used as context before a sequence starts
    vocab_size: int  # canonical vocab size C (multiplier bound)
    _cache: dict = field(default_factory=dict, compare=False, repr=False, hash=False)

    def __post_init__(self):
        for name in ("ngram_vocab", "layers"):
            values = getattr(self, name)
            if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__"):
                raise UsageError(f"layout {name}: expected a list of integers, got {values!r}")
            object.__setattr__(self, name, tuple(_as_int(name, v) for v in values))
        for name in ("max_ngram", "heads", "seed", "pad_id", "vocab_size"):
            object.__setattr__(self, name, _as_int(name, getattr(self, name)))
        self.validate()

    # --------------------------------------------------------------- validation
    def validate(self) -> None:
        """Raise :class:`UsageError` naming the first nonsensical field."""
        if not 2 <= self.max_ngram <= MAX_NGRAM_LIMIT:
            raise UsageError(
                f"max n-gram order must be between 2 and {MAX_NGRAM_LIMIT}, got {self.max_ngram}"
            )
        if not 1 <= self.heads <= MAX_HEADS:
            raise UsageError(
                f"heads per n-gram order must be between 1 and {MAX_HEADS}, got {self.heads}"
            )
        if len(self.ngram_vocab) != self.max_ngram - 1:
            raise UsageError(
                f"expected {self.max_ngram - 1} n-gram vocab sizes (one per order "
                f"2..{self.max_ngram}), got {len(self.ngram_vocab)}: {list(self.ngram_vocab)}"
            )
        for size in self.ngram_vocab:
            if size < 2:
                raise UsageError(f"n-gram vocab sizes must be at least 2, got {size}")
            if size > 2**40:
                raise UsageError(f"n-gram vocab sizes must be below 2**40, got {size}")
        if not self.layers:
            raise UsageError("expected at least one Engram layer id, got none")
        if any(layer < 0 for layer in self.layers):
            raise UsageError(f"layer ids must be >= 0, got {list(self.layers)}")
        if len(set(self.layers)) != len(self.layers):
            raise UsageError(f"layer ids must be distinct, got {list(self.layers)}")
        if self.vocab_size < 2:
            raise UsageError(f"canonical vocab size must be at least 2, got {self.vocab_size}")
        if self.seed < 0:
            raise UsageError(f"seed must be >= 0, got {self.seed}")
        if self.pad_id < 0:
            raise UsageError(f"pad id must be >= 0, got {self.pad_id}")

    # ------------------------------------------------------------- constructors
    @classmethod
    def from_preset(cls, name: str, *, vocab_size: int, **overrides) -> EngramLayout:
        """A preset with any field overridden (``None`` values are ignored)."""
        if name not in PRESETS:
            raise UsageError(f"unknown preset {name!r}; expected one of: {', '.join(PRESETS)}")
        fields = dict(PRESETS[name])
        fields.update({k: v for k, v in overrides.items() if v is not None})
        if (
            "max_ngram" in overrides
            and overrides["max_ngram"] is not None
            and (overrides.get("ngram_vocab") is None)
        ):
            # Keep the preset's per-order size when only the order changes.
            fields["ngram_vocab"] = (fields["ngram_vocab"][0],) * (fields["max_ngram"] - 1)
        return cls(vocab_size=vocab_size, **fields)

    def to_dict(self) -> dict:
        data = asdict(self)
        data.pop("_cache")
        data["ngram_vocab"] = list(self.ngram_vocab)
        data["layers"] = list(self.layers)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> EngramLayout:
        known = {"ngram_vocab", "max_ngram", "heads", "layers", "seed", "pad_id", "vocab_size"}
        missing = known - set(data)
        if missing:
            raise UsageError(f"layout is missing fields {sorted(missing)}")
        return cls(**{k: data[k] for k in known})

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> EngramLayout:
        return cls.from_dict(json.loads(text))

    # ---------------------------------------------------------------- derived
    @property
    def heads_per_layer(self) -> int:
        """Heads over all orders of one layer: ``(max_ngram - 1) * heads``."""
        return (self.max_ngram - 1) * self.heads

    def multipliers(self, layer_id: int) -> np.ndarray:
        """Odd int64 multipliers ``[max_ngram]`` of one layer."""
        self.check_layer(layer_id)
        key = ("mult", layer_id)
        if key not in self._cache:
            half = max(1, INT64_MAX // self.vocab_size // 2)
            rng = np.random.default_rng(self.seed + LAYER_SEED_PRIME * layer_id)
            values = rng.integers(0, half, size=self.max_ngram, dtype=np.int64)
            self._cache[key] = values * 2 + 1
        return self._cache[key].copy()

    @property
    def _primes(self) -> dict[int, tuple[int, ...]]:
        """Prime row counts per layer, heads in order (order 2's heads first)."""
        if "primes" not in self._cache:
            used: set[int] = set()
            primes: dict[int, tuple[int, ...]] = {}
            for layer_id in self.layers:
                layer_primes = []
                for order_index in range(self.max_ngram - 1):
                    start = self.ngram_vocab[order_index] - 1
                    for _ in range(self.heads):
                        start = next_unused_prime(start, used)
                        used.add(start)
                        layer_primes.append(start)
                primes[layer_id] = tuple(layer_primes)
            self._cache["primes"] = primes
        return self._cache["primes"]

    def head_rows(self, layer_id: int) -> np.ndarray:
        """Row count (a prime) of each head of a layer, ``[(max_ngram-1)*heads]`` int64."""
        self.check_layer(layer_id)
        return np.array(self._primes[layer_id], dtype=np.int64)

    def head_offsets(self, layer_id: int) -> np.ndarray:
        """First table row of each head of a layer (running sums of :meth:`head_rows`)."""
        rows = self.head_rows(layer_id)
        return np.concatenate([[0], np.cumsum(rows)[:-1]]).astype(np.int64)

    def layer_rows(self, layer_id: int) -> int:
        """Rows of a layer's table: the sum of its head primes."""
        return int(self.head_rows(layer_id).sum())

    @property
    def total_rows(self) -> int:
        return sum(self.layer_rows(layer) for layer in self.layers)

    def pad_canonical_id(self, vocab) -> int:
        """The canonical id of ``pad_id`` under ``vocab``."""
        if not 0 <= self.pad_id < vocab.source_vocab_size:
            raise UsageError(
                f"pad id {self.pad_id} is outside the tokenizer's vocab "
                f"(0..{vocab.source_vocab_size - 1})"
            )
        return int(vocab.canonical_ids[self.pad_id])

    def with_ngram_vocab(self, ngram_vocab) -> EngramLayout:
        """The same layout with other per-order table sizes (for ``--sweep``)."""
        data = self.to_dict()
        data["ngram_vocab"] = list(ngram_vocab)
        return EngramLayout.from_dict(data)

    def check_layer(self, layer_id: int) -> None:
        if layer_id not in self.layers:
            raise UsageError(
                f"layer {layer_id} is not an Engram layer of this layout {self.layers}"
            )


# ------------------------------------------------------------------ resolving a layout
DEFAULT_PRESET = "demo-v1"


def _int_list_or_none(value, flag: str) -> tuple[int, ...] | None:
    """A flag's comma-separated integers (a string) or an already parsed sequence."""
    if value is None:
        return None
    if isinstance(value, str):
        return parse_int_list(value, name=flag)
    return tuple(_as_int(flag, v) for v in value)


@dataclass(frozen=True)
class LayoutRequest:
    """A layout as a command names it: a preset and the fields its flags override (None: not
    given). ``ngram_vocab`` and ``layers`` may be flag strings (``"646400,646400"``)."""

    preset: str | None = None  # None: demo-v1
    ngram_vocab: tuple[int, ...] | str | None = None
    max_ngram: int | None = None
    heads: int | None = None
    layers: tuple[int, ...] | str | None = None
    seed: int | None = None  # the multipliers' seed
    pad_id: int | None = None

    def __post_init__(self):
        for name, flag in (("ngram_vocab", "--ngram-vocab"), ("layers", "--layers")):
            object.__setattr__(self, name, _int_list_or_none(getattr(self, name), flag))

    def overrides(self) -> dict:
        """The layout fields given, layers included: ``{"heads": 4}``."""
        names = ("ngram_vocab", "max_ngram", "heads", "layers", "seed", "pad_id")
        return {name: getattr(self, name) for name in names if getattr(self, name) is not None}


@dataclass(frozen=True)
class LayoutSource:
    """A layout fixed whole by something other than the flags (a table's metadata), with the row
    width and storage dtype it comes with."""

    layout: EngramLayout
    dim: int | None
    dtype: str | None
    flag: str  # the option that named it, e.g. "--table"
    where: str  # what it is, e.g. "table t.zarr"


@dataclass(frozen=True)
class ResolvedLayout:
    """The layout a command works with, the layers it works on, and the table shape its source
    serves (a preset's head dim and dtype, or a table's)."""

    layout: EngramLayout
    layer_ids: tuple[int, ...]  # == layout.layers unless layers were picked from the source
    dim: int | None
    dtype: str | None
    source: str  # "preset demo-v1" or a LayoutSource's ``where``


def resolve_layout(
    request: LayoutRequest,
    *,
    vocab,
    source: LayoutSource | None = None,
    pick_layers: bool = False,
) -> ResolvedLayout:
    """The one way a command turns its layout flags (and a table) into a layout.

    Without ``source``: the preset (default demo-v1) with every given field overriding it. With
    ``pick_layers``, ``layers`` that are all layers of the preset pick those layers and keep the
    preset's primes (primes depend on the whole layer list); other ids define a new layout.
    With ``source`` (``--table``): its layout, whole; only ``layers`` may be given, and it picks a
    subset of the source's layers. The pad id is checked against ``vocab`` either way.
    """
    if source is not None:
        resolved = _from_source(request, source)
    else:
        resolved = _from_preset(request, vocab_size=vocab.canonical_vocab_size, pick=pick_layers)
    resolved.layout.pad_canonical_id(vocab)  # a pad id outside the tokenizer is refused here
    return resolved


def _from_source(request: LayoutRequest, source: LayoutSource) -> ResolvedLayout:
    fixed = {**request.overrides(), "preset": request.preset}
    fixed.pop("layers", None)
    if any(value is not None for value in fixed.values()):
        raise UsageError(f"{source.flag} fixes the layout; drop --preset and the layout flags")
    layer_ids = source.layout.layers
    if request.layers is not None:
        missing = sorted(set(request.layers) - set(layer_ids))
        if missing:
            raise UsageError(
                f"--layers {missing} are not layers of {source.where} {source.layout.layers}"
            )
        layer_ids = request.layers
    return ResolvedLayout(source.layout, tuple(layer_ids), source.dim, source.dtype, source.where)


def _from_preset(request: LayoutRequest, *, vocab_size: int, pick: bool) -> ResolvedLayout:
    name = request.preset if request.preset is not None else DEFAULT_PRESET
    overrides = request.overrides()
    layers = overrides.get("layers")
    if pick and layers is not None:
        without_layers = {**overrides, "layers": None}
        base = EngramLayout.from_preset(name, vocab_size=vocab_size, **without_layers)
        if set(layers) <= set(base.layers):
            overrides["layers"] = None  # the preset's layers, and so its primes
    layout = EngramLayout.from_preset(name, vocab_size=vocab_size, **overrides)
    layer_ids = layers if layers is not None else layout.layers
    return ResolvedLayout(
        layout, tuple(layer_ids), PRESET_HEAD_DIM[name], PRESET_DTYPE[name], f"preset {name}"
    )


def layout_report(layout: EngramLayout, *, dim: int, dtype: str, row_bytes: int) -> dict:
    """The ``engramctl layout --json`` document: rows, offsets, multipliers and bytes per layer
    of ``layout`` stored at ``dim`` values of ``dtype`` (``row_bytes`` bytes) per row."""
    layers = {}
    for layer_id in layout.layers:
        rows = layout.layer_rows(layer_id)
        layers[str(layer_id)] = {
            "rows": rows,
            "head_rows": layout.head_rows(layer_id).tolist(),
            "head_offsets": layout.head_offsets(layer_id).tolist(),
            "multipliers": layout.multipliers(layer_id).tolist(),
            "bytes": rows * row_bytes,
        }
    return {
        "layout": layout.to_dict(),
        "dim": dim,
        "dtype": dtype,
        "row_bytes": row_bytes,
        "layers": layers,
        "total_rows": layout.total_rows,
        "total_bytes": layout.total_rows * row_bytes,
    }
