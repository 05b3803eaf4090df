"""The canonical vocabulary: token ids folded by case, accents and whitespace.

Semantics (DESIGN.md, "Canonical vocabulary"): every id of the tokenizer, added tokens included, is
decoded alone and normalized; ids with the same key share one canonical id, numbered in order of
first appearance. :class:`CanonicalVocab` builds the map, saves and loads it as Parquet, and applies
it to arrays of ids.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ._files import atomic_write
from .errors import EngramError

VOCAB_FORMAT = "engramctl-vocab"
VOCAB_FORMAT_VERSION = 1
METADATA_KEY = b"engramctl"
# Protects a token that normalizes to exactly one space from the final strip (private use area).
SENTINEL = "\ue000"
NORMALIZER_DESCRIPTION = (
    "NFKC; NFD; StripAccents; Lowercase; Replace([ \\t\\r\\n]+ -> ' '); "
    "Replace(^ $ -> sentinel); Strip; Replace(sentinel -> ' ')"
)


def make_normalizer():
    """The ``tokenizers`` normalizer of DESIGN.md, step for step."""
    from tokenizers import Regex, normalizers

    return normalizers.Sequence(
        [
            normalizers.NFKC(),
            normalizers.NFD(),
            normalizers.StripAccents(),
            normalizers.Lowercase(),
            normalizers.Replace(Regex(r"[ \t\r\n]+"), " "),
            normalizers.Replace(Regex(r"^ $"), SENTINEL),
            normalizers.Strip(),
            normalizers.Replace(SENTINEL, " "),
        ]
    )


def canonical_keys(decoded: list[str], tokens: list[str]) -> list[str]:
    """Normalized keys for decoded single-token texts.

    >>> canonical_keys(["Apple", " apple", "\\ufffd"], ["Apple", "Ġapple", "Ã"])
    ['apple', 'apple', 'Ã']
    """
    normalizer = make_normalizer()
    keys = []
    for text, token in zip(decoded, tokens, strict=True):
        if "\ufffd" in text:  # a partial UTF-8 sequence: keep the token string itself
            keys.append(token)
            continue
        normalized = normalizer.normalize_str(text)
        keys.append(normalized if normalized else text)
    return keys


def assign_canonical_ids(keys: list[str]) -> np.ndarray:
    """Number distinct keys in order of first appearance.

    >>> assign_canonical_ids(["a", "b", "a", "c"]).tolist()
    [0, 1, 0, 2]
    """
    first_seen: dict[str, int] = {}
    ids = np.empty(len(keys), dtype=np.int64)
    for i, key in enumerate(keys):
        ids[i] = first_seen.setdefault(key, len(first_seen))
    return ids


@dataclass(frozen=True, eq=False)
class CanonicalVocab:
    """A map from source token ids to canonical ids, with what it was built from.

    ``canonical_ids[i]`` is the canonical id of source token ``i``.
    """

    canonical_ids: np.ndarray  # (source_vocab_size,) int64
    tokens: list[str]  # the tokenizer's own token string per source id
    keys: list[str]  # the normalized key per source id
    texts: list[str] = field(default_factory=list)  # each id decoded alone (for display)
    source_sha256: str = ""  # sha256 of the tokenizer.json it came from
    source_name: str = ""  # the name or path the user gave
    normalizer: str = NORMALIZER_DESCRIPTION
    engramctl_version: str = ""
    _fingerprint: list = field(default_factory=list, repr=False)

    # ----------------------------------------------------------------- building
    @classmethod
    def build(cls, tokenizer, *, source_sha256: str = "", source_name: str = "") -> CanonicalVocab:
        """Build the map from a ``tokenizers.Tokenizer`` (every id, added tokens included)."""
        from . import __version__

        size = tokenizer.get_vocab_size(with_added_tokens=True)
        if size < 1:
            raise EngramError("the tokenizer has an empty vocabulary")
        decoded = tokenizer.decode_batch([[i] for i in range(size)], skip_special_tokens=False)
        tokens = [tokenizer.id_to_token(i) or "" for i in range(size)]
        keys = canonical_keys(decoded, tokens)
        return cls(
            canonical_ids=assign_canonical_ids(keys),
            tokens=tokens,
            keys=keys,
            texts=decoded,
            source_sha256=source_sha256,
            source_name=source_name,
            engramctl_version=__version__,
        )

    @classmethod
    def from_tokenizer(cls, source: str | Path = "deepseek-v4") -> CanonicalVocab:
        """Build from a bundled tokenizer name or a ``tokenizer.json`` path."""
        from .tokenizer import load_tokenizer

        tokenizer, info = load_tokenizer(source)
        return cls.build(tokenizer, source_sha256=info.sha256, source_name=info.name)

    # ---------------------------------------------------------------- properties
    @property
    def source_vocab_size(self) -> int:
        return int(self.canonical_ids.shape[0])

    @property
    def canonical_vocab_size(self) -> int:
        return int(self.canonical_ids.max()) + 1 if self.source_vocab_size else 0

    def __len__(self) -> int:
        return self.canonical_vocab_size

    @property
    def reduction(self) -> float:
        """Fraction of source ids removed by folding (0.23 means 23% fewer ids)."""
        return 1.0 - self.canonical_vocab_size / self.source_vocab_size

    @property
    def fingerprint(self) -> str:
        """A short stable digest of the id map; tables record it to refuse a different vocab."""
        if not self._fingerprint:
            digest = hashlib.sha256(self.canonical_ids.astype("<i8").tobytes()).hexdigest()
            self._fingerprint.append(f"sha256:{digest[:16]}")
        return self._fingerprint[0]

    def merged_groups(self, limit: int = 10) -> list[list[int]]:
        """The largest groups of source ids sharing one canonical id, largest first."""
        counts = Counter(self.canonical_ids.tolist())
        biggest = [cid for cid, n in counts.most_common() if n > 1][:limit]
        members: dict[int, list[int]] = {cid: [] for cid in biggest}
        for token_id, cid in enumerate(self.canonical_ids.tolist()):
            if cid in members:
                members[cid].append(token_id)
        return [members[cid] for cid in biggest]

    # ------------------------------------------------------------------ applying
    def pieces(self, ids) -> list[str]:
        """Each id of a 1-D sequence shown as text: decoded alone where the vocab recorded it,
        else the tokenizer's token string; ``?`` for an id outside the vocab."""
        names = self.texts if len(self.texts) == len(self.tokens) else self.tokens
        return [names[i] if 0 <= i < len(names) else "?" for i in np.asarray(ids).tolist()]

    def apply(self, ids: np.ndarray) -> np.ndarray:
        """Map raw token ids to canonical ids; negative ids pass through unchanged.

        Raises :class:`EngramError` naming the first id at or above the source vocab size.
        """
        ids = as_int64_ids(ids)
        check_ids_in_vocab(ids, self.source_vocab_size)
        return np.where(ids >= 0, self.canonical_ids[np.clip(ids, 0, None)], ids)

    # -------------------------------------------------------------------- saving
    def metadata(self) -> dict:
        return {
            "format": VOCAB_FORMAT,
            "format_version": VOCAB_FORMAT_VERSION,
            "source_name": self.source_name,
            "source_sha256": self.source_sha256,
            "source_vocab_size": self.source_vocab_size,
            "canonical_vocab_size": self.canonical_vocab_size,
            "fingerprint": self.fingerprint,
            "normalizer": self.normalizer,
            "engramctl_version": self.engramctl_version,
        }

    def save(self, path: str | Path, *, overwrite: bool = True) -> Path:
        """Write the Parquet file atomically (a temporary name, then rename)."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        path = Path(path)
        if path.exists() and not overwrite:
            raise EngramError(f"{path} exists; pass --overwrite to replace it")
        table = pa.table(
            {
                "token_id": pa.array(np.arange(self.source_vocab_size, dtype=np.int64)),
                "canonical_id": pa.array(self.canonical_ids),
                "token": pa.array(self.tokens, type=pa.string()),
                "key": pa.array(self.keys, type=pa.string()),
                "text": pa.array(self.texts or self.keys, type=pa.string()),
            }
        )
        table = table.replace_schema_metadata({METADATA_KEY: json.dumps(self.metadata())})
        with atomic_write(path) as handle:
            pq.write_table(table, handle)
        return path

    @classmethod
    def load(cls, path: str | Path) -> CanonicalVocab:
        """Read a vocab Parquet file written by :meth:`save`; refuse anything else."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        path = Path(path)
        if not path.exists():
            raise EngramError(
                f"vocab file not found: {path} (create one with engramctl build-vocab)"
            )
        try:
            table = pq.read_table(path)
        except (OSError, pa.ArrowException) as exc:
            raise EngramError(
                f"{path} is not an engramctl vocab file (not readable as Parquet: {exc}); "
                "create one with engramctl build-vocab"
            ) from exc
        raw_meta = (table.schema.metadata or {}).get(METADATA_KEY)
        try:
            meta = json.loads(raw_meta) if raw_meta else {}
        except (UnicodeDecodeError, json.JSONDecodeError):
            meta = None
        if not isinstance(meta, dict) or meta.get("format") != VOCAB_FORMAT:
            raise EngramError(
                f"{path} is not an engramctl vocab file (no engramctl metadata); "
                "create one with engramctl build-vocab"
            )
        version = meta.get("format_version", 0)
        if not isinstance(version, int) or isinstance(version, bool):
            raise EngramError(
                f"{path} is a damaged vocab file: format_version is {version!r}, not an integer; "
                "rebuild it with engramctl build-vocab"
            )
        if version > VOCAB_FORMAT_VERSION:
            raise EngramError(
                f"{path} has vocab format version {meta['format_version']}, newer than this "
                f"engramctl supports ({VOCAB_FORMAT_VERSION}); upgrade engramctl"
            )
        expected = {"token_id", "canonical_id", "token", "key"}
        if not expected <= set(table.column_names):
            raise EngramError(f"{path} lacks columns {sorted(expected - set(table.column_names))}")
        try:
            token_ids = table.column("token_id").to_numpy()
            canonical_ids = as_int64_ids(table.column("canonical_id").to_numpy())
            tokens = [str(t) for t in table.column("token").to_pylist()]
            keys = [str(k) for k in table.column("key").to_pylist()]
            texts = table.column("text").to_pylist() if "text" in table.column_names else []
        except (EngramError, TypeError, ValueError, pa.ArrowException) as exc:
            raise EngramError(f"{path} is damaged: unexpected column types ({exc})") from exc
        if not np.array_equal(token_ids, np.arange(len(token_ids))):
            raise EngramError(f"{path} is damaged: token_id is not 0..{len(token_ids) - 1}")
        if len(canonical_ids) == 0 or not is_first_appearance_numbering(canonical_ids):
            raise EngramError(
                f"{path} is damaged: canonical ids are not numbered 0, 1, 2, ... in order of "
                "first appearance; rebuild it with engramctl build-vocab"
            )
        if meta.get("source_vocab_size", len(token_ids)) != len(token_ids):
            raise EngramError(
                f"{path} is damaged: {len(token_ids)} rows, but its metadata says "
                f"{meta['source_vocab_size']} token ids"
            )
        vocab = cls(
            canonical_ids=canonical_ids,
            tokens=tokens,
            keys=keys,
            texts=[str(t) for t in texts],
            source_sha256=meta.get("source_sha256", ""),
            source_name=meta.get("source_name", ""),
            normalizer=meta.get("normalizer", NORMALIZER_DESCRIPTION),
            engramctl_version=meta.get("engramctl_version", ""),
        )
        if meta.get("fingerprint") and meta["fingerprint"] != vocab.fingerprint:
            raise EngramError(f"{path} is damaged: its id map does not match its fingerprint")
        return vocab


def is_first_appearance_numbering(canonical_ids: np.ndarray) -> bool:
    """True if ids are 0, 1, 2, ... numbered in order of first appearance.

    >>> is_first_appearance_numbering(np.array([0, 1, 0, 2])), is_first_appearance_numbering(
    ...     np.array([1, 0]))
    (True, False)
    """
    distinct, first = np.unique(canonical_ids, return_index=True)
    return bool(np.array_equal(distinct, np.arange(len(distinct))) and np.all(np.diff(first) > 0))


def as_int64_ids(ids) -> np.ndarray:
    """Token ids as an int64 array; refuses non-integer dtypes and unsigned ids beyond int64.

    >>> as_int64_ids(np.array([1, 2], dtype=np.uint8)).dtype
    dtype('int64')
    """
    ids = np.asarray(ids)
    if ids.dtype.kind not in "iu":
        raise EngramError(f"token ids must be integers, got dtype {ids.dtype}")
    if ids.dtype == np.uint64 and ids.size and int(ids.max()) > np.iinfo(np.int64).max:
        raise EngramError(f"token id {int(ids.max())} does not fit in int64")
    return ids.astype(np.int64, copy=False)


def check_ids_in_vocab(ids: np.ndarray, vocab_size: int, *, what: str = "token id") -> None:
    """Raise naming the first id at or above ``vocab_size`` (negative ids are allowed)."""
    if ids.size == 0:
        return
    bad = ids >= vocab_size
    if bad.any():
        first = int(ids.reshape(-1)[np.argmax(bad.reshape(-1))])
        raise EngramError(
            f"{what} {first} is at or above the tokenizer's vocab size {vocab_size}; "
            "use the vocab built from the tokenizer that produced these ids"
        )


def read_ids_file(path) -> np.ndarray:
    """A ``.npy`` of integer token ids, ``[T]`` or ``[B, T]``."""
    path = Path(path)
    if not path.exists():
        raise EngramError(f"ids file not found: {path}")
    try:
        ids = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        if "pickle" in str(exc):  # numpy's guess for a file without the .npy magic
            raise EngramError(f"{path} is not a .npy file (save the ids with numpy.save)") from None
        raise EngramError(f"{path} is not a readable .npy array ({exc})") from exc
    if not isinstance(ids, np.ndarray):
        ids.close()  # an .npz archive
        raise EngramError(f"{path} holds several arrays; give a single .npy array")
    if ids.dtype.kind not in "iu":
        raise EngramError(f"{path}: token ids must be integers (int64), got dtype {ids.dtype}")
    if ids.ndim not in (1, 2):
        raise EngramError(f"{path}: token ids must be [T] or [B, T], got shape {list(ids.shape)}")
    if ids.size == 0:
        raise EngramError(f"{path} holds no token ids")
    try:
        return as_int64_ids(ids)
    except EngramError as exc:
        raise EngramError(f"{path}: {exc}") from None
