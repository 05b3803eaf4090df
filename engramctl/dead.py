"""Dead positions: where an n-gram must not reach, as DeepSeek-V4.1's serving engines decide.

DeepSeek-V4.1 is multimodal. At an image ("dead") position vLLM and SGLang replace the token, and
every older token of each n-gram that reaches back across it, with the pad id, so no n-gram
crosses an image (:mod:`engramctl.hashing` does the hashing). Both engines mark a dead position
with -1 internally; vLLM takes dead positions from the request's image spans, SGLang with vision
treats the image token id 129264 and every id from 1,000,000 up as dead.

Here a dead position is a negative raw id (any negative id: the marker a user writes in an ids
file or a pre-tokenized corpus), a position of a boolean ``dead`` mask, a position inside a
``START:STOP`` span (:func:`parse_spans`, :func:`spans_mask`), or an id a :class:`DeadRule` names.
:func:`mark_dead` turns the mask and the rule into -1 ids, the one form the hashers read.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import EngramError, UsageError

# The id of a dead position (the engines' internal marker); any negative raw id is dead.
DEAD = -1
# SGLang's rule for DeepSeek-V4.1 with vision: the image token and every id from 1,000,000 up
# (its shifted multimodal pad ids) are dead.
V41_IMAGE_TOKEN_ID = 129264
V41_MM_PAD_FROM = 1_000_000


@dataclass(frozen=True)
class DeadRule:
    """Raw ids that mark dead positions besides negative ids: ``ids``, and every id from
    ``from_id`` up (``None``: no such bound).

    >>> DeadRule.parse("129264,>=1000000") == DeadRule.sglang_v41()
    True
    >>> DeadRule((7,)).mark(np.array([5, 7, 9])).tolist()
    [5, -1, 9]
    """

    ids: tuple[int, ...] = ()
    from_id: int | None = None

    @classmethod
    def sglang_v41(cls) -> DeadRule:
        """SGLang's DeepSeek-V4.1 vision rule: id 129264 and ids >= 1,000,000 are dead."""
        return cls((V41_IMAGE_TOKEN_ID,), V41_MM_PAD_FROM)

    @classmethod
    def parse(cls, text: str) -> DeadRule:
        """``"ID,ID,>=ID"`` (ids and one lower bound), or ``v4.1-vision`` (:meth:`sglang_v41`)."""
        if text.strip() == "v4.1-vision":
            return cls.sglang_v41()
        ids, from_id = [], None
        for item in (part.strip() for part in text.split(",")):
            bound = item.startswith(">=")
            try:
                value = int(item[2:] if bound else item)
            except ValueError:
                value = -1
            if not 0 <= value < 2**63 or (bound and from_id is not None):
                raise UsageError(
                    f"dead ids: {item!r} is not a token id; give ids and at most one lower "
                    "bound, e.g. 129264,>=1000000 (or v4.1-vision)"
                )
            if bound:
                from_id = value
            else:
                ids.append(value)
        return cls(tuple(sorted(set(ids))), from_id)

    def mark(self, ids: np.ndarray) -> np.ndarray:
        """``ids`` with every id of the rule replaced by -1 (a copy where any is)."""
        dead = np.isin(ids, np.array(self.ids, dtype=np.int64))
        if self.from_id is not None:
            dead |= ids >= self.from_id
        return np.where(dead, DEAD, ids) if dead.any() else ids


def mark_dead(ids: np.ndarray, dead=None, rule: DeadRule | None = None) -> np.ndarray:
    """Raw int64 ids with -1 at the dead positions of a ``dead`` mask (shaped like ``ids``) and at
    the ids ``rule`` names; ``ids`` itself when neither is given."""
    if rule is not None:
        ids = rule.mark(ids)
    if dead is not None:
        dead = np.asarray(dead)
        if dead.shape != ids.shape or dead.dtype != np.bool_:
            raise EngramError(
                f"dead must be a boolean mask shaped like the ids {list(ids.shape)}, got "
                f"{dead.dtype} {list(dead.shape)}"
            )
        ids = np.where(dead, DEAD, ids)
    return ids


def spans_mask(spans, length: int) -> np.ndarray:
    """A dead mask ``[length]`` from ``[(start, stop), ...]`` position spans (stop exclusive).

    >>> spans_mask([(1, 3)], 5).tolist()
    [False, True, True, False, False]
    """
    mask = np.zeros(length, dtype=bool)
    for start, stop in spans:
        if not 0 <= start < stop <= length:
            raise EngramError(
                f"dead span {start}:{stop} is not inside the {length} positions (0:{length}); "
                "give START:STOP with START < STOP"
            )
        mask[start:stop] = True
    return mask


def parse_spans(text: str) -> list[tuple[int, int]]:
    """``"START:STOP,..."`` position spans (STOP exclusive, like a Python slice).

    >>> parse_spans("6:10, 12:13")
    [(6, 10), (12, 13)]
    """
    spans = []
    for item in (part.strip() for part in text.split(",")):
        start, sep, stop = item.partition(":")
        try:
            span = (int(start), int(stop))
        except ValueError:
            span = None
        if not sep or span is None or span[0] < 0 or span[0] >= span[1]:
            raise UsageError(
                f"dead span {item!r} is not START:STOP with 0 <= START < STOP (e.g. 6:10 makes "
                "positions 6..9 dead)"
            )
        spans.append(span)
    return spans
