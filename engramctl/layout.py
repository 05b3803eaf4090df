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
# The engram_* keys of a published checkpoint's config.json whose layout a preset reproduces.
PUBLISHED_CONFIGS: dict[str, dict] = {
    "deepseek-v4.1": {
        "engram_layer_ids": [1, 14],
        "engram_max_ngram_size": 4,
        "engram_n_heads": 8,
        "engram_head_dim": 256,
        "engram_vocab_size": 16000000,
        "engram_num_embeddings": [384006168, 384016682],  # = the sums of the preset's primes
        "engram_pad_token_id": 2,
        "engram_compressed_vocab_size": 99092,
    }
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
        self._check_layer(layer_id)
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
        self._check_layer(layer_id)
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

    def _check_layer(self, layer_id: int) -> None:
        if layer_id not in self.layers:
            raise UsageError(
                f"layer {layer_id} is not an Engram layer of this layout {self.layers}"
            )


# ------------------------------------------------------------------------ model config.json
CONFIG_NAME = "config.json"


@dataclass(frozen=True)
class EngramModelConfig:
    """The ``engram_*`` keys of a model's ``config.json`` (top level or under ``text_config``)."""

    path: str  # the config.json read
    layer_ids: tuple[int, ...]  # engram_layer_ids
    max_ngram: int  # engram_max_ngram_size
    heads: int  # engram_n_heads (per n-gram order)
    head_dim: int  # engram_head_dim: values per table row
    ngram_vocab: tuple[int, ...]  # engram_vocab_size, per order (where each prime search starts)
    pad_id: int  # engram_pad_token_id
    num_embeddings: tuple[int, ...] | None  # engram_num_embeddings: rows per layer, if published
    compressed_vocab_size: int | None  # engram_compressed_vocab_size, if published
    seed: int = 0  # the official multipliers are default_rng(10007 * layer id): seed 0

    def layout(self, *, vocab_size: int) -> EngramLayout:
        """The layout this config describes for a canonical vocab of ``vocab_size`` ids.

        Refuses (one line naming both values) a vocab whose size is not the config's
        ``engram_compressed_vocab_size`` (every multiplier, hence every row, would differ) and
        a config whose ``engram_num_embeddings`` are not the sums of the layout's primes.
        """
        if self.compressed_vocab_size is not None and self.compressed_vocab_size != vocab_size:
            raise UsageError(
                f"{self.path}: engram_compressed_vocab_size is {self.compressed_vocab_size}, but "
                f"the vocab in use has {vocab_size} canonical ids; every row would hash "
                "elsewhere: use the vocab of the model's tokenizer"
            )
        layout = EngramLayout(
            ngram_vocab=self.ngram_vocab,
            max_ngram=self.max_ngram,
            heads=self.heads,
            layers=self.layer_ids,
            seed=self.seed,
            pad_id=self.pad_id,
            vocab_size=vocab_size,
        )
        if self.num_embeddings is not None:
            rows = tuple(layout.layer_rows(layer) for layer in layout.layers)
            if rows != self.num_embeddings:
                raise UsageError(
                    f"{self.path}: engram_num_embeddings {list(self.num_embeddings)} differ from "
                    f"the sums of the layout's primes per layer {list(rows)}; the config does "
                    "not describe this prime search"
                )
        return layout

    def to_dict(self) -> dict:
        """The ``engram_*`` keys, as a config.json holds them."""
        data = {
            "engram_layer_ids": list(self.layer_ids),
            "engram_max_ngram_size": self.max_ngram,
            "engram_n_heads": self.heads,
            "engram_head_dim": self.head_dim,
            "engram_vocab_size": (
                self.ngram_vocab[0] if len(set(self.ngram_vocab)) == 1 else list(self.ngram_vocab)
            ),
            "engram_pad_token_id": self.pad_id,
        }
        if self.num_embeddings is not None:
            data["engram_num_embeddings"] = list(self.num_embeddings)
        if self.compressed_vocab_size is not None:
            data["engram_compressed_vocab_size"] = self.compressed_vocab_size
        return data

    @classmethod
    def from_layout(
        cls, layout: EngramLayout, *, head_dim: int, path: str = ""
    ) -> EngramModelConfig:
        """The config keys describing ``layout`` (what ``export --format deepseek`` writes)."""
        if layout.seed != 0:
            raise UsageError(
                f"layout seed {layout.seed}: a model config has no seed (the checkpoint's "
                "multipliers use seed 0); only a seed-0 layout can be written as a config"
            )
        return cls(
            path=path,
            layer_ids=layout.layers,
            max_ngram=layout.max_ngram,
            heads=layout.heads,
            head_dim=head_dim,
            ngram_vocab=layout.ngram_vocab,
            pad_id=layout.pad_id,
            num_embeddings=tuple(layout.layer_rows(layer) for layer in layout.layers),
            compressed_vocab_size=layout.vocab_size,
        )


def _config_section(doc: dict, where: str) -> dict:
    """The dict holding the ``engram_*`` keys: the top level or ``text_config``."""
    if any(key.startswith("engram_") for key in doc):
        return doc
    text = doc.get("text_config")
    if isinstance(text, dict) and any(key.startswith("engram_") for key in text):
        return text
    raise UsageError(
        f"{where} has no engram_* keys (top level or under text_config): this model has no "
        "Engram tables; use --preset or the layout flags"
    )


def read_model_config(path) -> EngramModelConfig:
    """Read the Engram keys of a model's ``config.json`` (or of a directory holding one)."""
    from pathlib import Path

    path = Path(path)
    if path.is_dir():
        path = path / CONFIG_NAME
    if not path.is_file():
        raise UsageError(f"--config: no config file at {path}")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise UsageError(f"--config: {path} is not a JSON file ({exc})") from None
    if not isinstance(doc, dict):
        raise UsageError(f"--config: {path} is not a JSON object")
    section = _config_section(doc, str(path))
    required = (
        "engram_layer_ids",
        "engram_max_ngram_size",
        "engram_n_heads",
        "engram_head_dim",
        "engram_vocab_size",
        "engram_pad_token_id",
    )
    missing = [key for key in required if key not in section]
    if missing:
        raise UsageError(f"{path}: missing Engram keys {missing}")

    def ints(key, value) -> tuple[int, ...]:
        values = value if isinstance(value, list) else [value]
        return tuple(_as_int(key, v) for v in values)

    max_ngram = _as_int("engram_max_ngram_size", section["engram_max_ngram_size"])
    ngram_vocab = ints("engram_vocab_size", section["engram_vocab_size"])
    if len(ngram_vocab) == 1:  # one start for every order
        ngram_vocab = ngram_vocab * max(1, max_ngram - 1)
    num_embeddings = section.get("engram_num_embeddings")
    compressed = section.get("engram_compressed_vocab_size")
    return EngramModelConfig(
        path=str(path),
        layer_ids=ints("engram_layer_ids", section["engram_layer_ids"]),
        max_ngram=max_ngram,
        heads=_as_int("engram_n_heads", section["engram_n_heads"]),
        head_dim=_as_int("engram_head_dim", section["engram_head_dim"]),
        ngram_vocab=ngram_vocab,
        pad_id=_as_int("engram_pad_token_id", section["engram_pad_token_id"]),
        num_embeddings=None
        if num_embeddings is None
        else ints("engram_num_embeddings", num_embeddings),
        compressed_vocab_size=None
        if compressed is None
        else _as_int("engram_compressed_vocab_size", compressed),
    )
