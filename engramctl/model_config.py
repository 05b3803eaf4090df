"""A model's ``config.json``: the ``engram_*`` keys of a checkpoint, and the layout they give.

:func:`read_model_config` reads the keys (top level or under ``text_config``) into an
:class:`EngramModelConfig`; :meth:`EngramModelConfig.layout` builds the layout for a canonical
vocab, refusing a vocab whose size is not ``engram_compressed_vocab_size`` and a config whose
``engram_num_embeddings`` are not the sums of the layout's primes; :func:`config_layout_source`
makes it the layout source of a command's ``--config``. See docs/checkpoints.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ._files import read_json_file
from .errors import EngramError, UsageError
from .layout import EngramLayout, LayoutSource

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


def _config_int(key: str, value) -> int:
    """A config value that must be an integer (JSON has no other kind of whole number).

    >>> _config_int("engram_n_heads", 8)
    8
    """
    if isinstance(value, bool) or not isinstance(value, int):
        raise UsageError(f"config {key}: expected an integer, got {value!r}")
    return value


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
    path = Path(path)
    if path.is_dir():
        path = path / CONFIG_NAME
    if not path.is_file():
        raise UsageError(f"--config: no config file at {path}")
    try:
        doc = read_json_file(path)
    except EngramError as exc:
        raise UsageError(f"--config: {exc}") from None
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
        return tuple(_config_int(key, v) for v in values)

    max_ngram = _config_int("engram_max_ngram_size", section["engram_max_ngram_size"])
    ngram_vocab = ints("engram_vocab_size", section["engram_vocab_size"])
    if len(ngram_vocab) == 1:  # one start for every order
        ngram_vocab = ngram_vocab * max(1, max_ngram - 1)
    num_embeddings = section.get("engram_num_embeddings")
    compressed = section.get("engram_compressed_vocab_size")
    return EngramModelConfig(
        path=str(path),
        layer_ids=ints("engram_layer_ids", section["engram_layer_ids"]),
        max_ngram=max_ngram,
        heads=_config_int("engram_n_heads", section["engram_n_heads"]),
        head_dim=_config_int("engram_head_dim", section["engram_head_dim"]),
        ngram_vocab=ngram_vocab,
        pad_id=_config_int("engram_pad_token_id", section["engram_pad_token_id"]),
        num_embeddings=None
        if num_embeddings is None
        else ints("engram_num_embeddings", num_embeddings),
        compressed_vocab_size=None
        if compressed is None
        else _config_int("engram_compressed_vocab_size", compressed),
    )


def config_layout_source(path, *, vocab) -> LayoutSource:
    """``--config PATH`` as a command's layout source: the layout (both checks applied), the
    config's head dim and fp8, the dtype of the checkpoints that publish such configs."""
    config = read_model_config(path)
    layout = config.layout(vocab_size=vocab.canonical_vocab_size)
    return LayoutSource(
        layout, config.head_dim, "float8_e4m3fn", "--config", f"config {config.path}"
    )
