"""The disk a ``build-counts`` run needs, estimated before the pass, and a full disk mid-build.

A build that spills (past ``--max-memory``, or ``--partitions N``) appends each pair's row id
(8 B) and target (4 B) per column to row-bucket files under the output's temporary directory
(:mod:`.accumulate`), and writes the memory itself: ``16 + 8 K`` bytes per occupied row (id,
total, K tokens and counts) plus the unigram and the id map. :func:`estimate_disk` projects
both from the corpus's size and the layout, before any work:

- tokens: :func:`engramctl.corpus.files.estimate_tokens` (exact for flat token files, the
  ``.npy`` header's shape for ``.npy``; about ``bytes / 3`` for text, so *uncertain*: the low
  end is taken as a third of it, text at 9 bytes per token);
- pairs: tokens less the held-out pairs (5%, at most :func:`~.build.heldout_cap`), and, at
  the low end, one token in :data:`DOC_TOKENS` (a document's first token has no context);
- occupied rows: at most ``rows_c (1 - exp(-pairs / rows_c))`` per column (every context new,
  hashed into the column's ``rows_c`` rows: an upper bound); at least the same with
  ``pairs ** HEAPS`` distinct contexts per hashed column (Heaps' law from below, as the row
  table's growth uses);
- the spill: from the first pair with ``--partitions``; otherwise from where the row table
  passes the budget (about ``(16 + 8 K) / LOAD`` bytes per occupied row): the *central*
  estimate takes the upper occupancy (the earliest spill), the *low* one the lower occupancy
  (the latest).

At the end of the pass every bucket file exists at once, so the spill alone is a floor of the
peak; the buckets are then removed one by one as the memory is written, so the peak lies
between the larger of spill and memory and their sum. :func:`check_disk` refuses in one line
when a floor (the spill at the low end: low tokens, latest spill; or the memory at the low end)
is more than is free, and warns when the central spill plus the memory's upper bound is.
"""

from __future__ import annotations

import errno
import logging
import math
import shutil
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .._system import format_bytes
from ..errors import EngramError
from .rowtable import LOAD  # the row table's load factor

HEAPS = 0.7  # occupied rows of a hashed column grow at least as pairs ** HEAPS (Heaps' law)

log = logging.getLogger(__name__)

PAIR_BYTES = 12  # a spilled pair, per column: row id (int64) and target (int32)
DOC_TOKENS = 16  # the low end assumes documents of 16 tokens or more on average
TEXT_LOW = 3  # the low end of a text corpus's tokens: its estimate / 3 (9 bytes per token)


def row_bytes(top_k: int) -> int:
    """Bytes of one stored row: id (8), total (8), K tokens (4) and K counts (4)."""
    return 16 + 8 * int(top_k)


@dataclass(frozen=True)
class DiskEstimate:
    """What a build will write, projected before the pass (bytes; see the module docstring)."""

    where: str  # the directory whose file system takes the spill and the memory
    free: int  # its free bytes when estimated
    tokens: int  # tokens expected (central)
    tokens_low: int  # the low end (equal when the count is exact)
    exact: bool  # the token count is known (flat token files, or --limit-tokens below it)
    columns: int  # rows each pair reaches (level 1 and every counted layer's heads)
    spills: str  # "always" (--partitions), "likely", "possibly" or "no"
    spill: int  # bucket files at the end of the pass (central)
    spill_low: int  # the same at the low end: what the build writes for sure
    memory: int  # the memory written, at most (every context new)
    memory_low: int  # the memory at the low end (Heaps' law from below): written for sure
    needed: int  # spill + memory (central; the peak is at most this)

    def to_dict(self) -> dict:
        return asdict(self)


def _exact_tokens(files, options) -> bool:
    return all(f.format == "tokens" for f in files) and not options.tokens_field


def _npy_tokens(path: Path) -> int | None:
    """Tokens of a ``.npy`` from its header (no data read); None when unreadable."""
    try:
        with open(path, "rb") as handle:
            version = np.lib.format.read_magic(handle)
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
                np.lib.format.read_array_header_2_0  # fmt: skip
            shape = read(handle)[0]
    except (OSError, ValueError):
        return None
    return int(np.prod(shape, dtype=np.int64))


def corpus_tokens(files, options, limit: int | None = None) -> tuple[int, int, bool]:
    """``(central, low, exact)`` token counts of a corpus, before reading it."""
    from ..corpus.files import estimate_tokens

    exact = _exact_tokens(files, options)
    total = 0
    for f in files:
        if f.format == "tokens" and f.path.suffix.lower() == ".npy" and f.span is None:
            counted = _npy_tokens(f.path)
            total += counted if counted is not None else estimate_tokens([f], options)
            exact &= counted is not None
        else:
            total += estimate_tokens([f], options)
    low = total if exact else total // TEXT_LOW
    if limit is not None:
        exact = exact or low >= limit
        total, low = min(total, limit), min(low, limit)
    return total, low, exact


def occupied_upper(pairs: float, column_rows: np.ndarray) -> float:
    """Occupied rows after ``pairs`` pairs when every context is new (an upper bound)."""
    rows = np.asarray(column_rows, np.float64)
    return float(np.sum(rows * -np.expm1(-float(pairs) / rows)))


def occupied_lower(pairs: float, column_rows: np.ndarray) -> float:
    """Occupied rows after ``pairs`` pairs with ``pairs ** HEAPS`` distinct contexts per hashed
    column (Heaps' law from below; level 1 not counted), hashed into its rows."""
    rows = np.asarray(column_rows[1:], np.float64)
    return float(np.sum(rows * -np.expm1(-(float(pairs) ** HEAPS) / rows)))


def _spill_start(budget: int, top_k: int, column_rows, occupied) -> float:
    """Pairs counted when the row table passes ``budget`` bytes (inf: never)."""
    need = budget * LOAD / row_bytes(top_k)  # occupied rows that fill the budget
    if occupied(1e18, column_rows) <= need:
        return math.inf
    lo, hi = 0.0, 1.0
    while occupied(hi, column_rows) <= need:
        hi *= 2
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if occupied(mid, column_rows) <= need else (lo, mid)
    return hi


def estimate_disk(*, tokens: int, tokens_low: int, exact: bool, column_rows, top_k: int,
                  budget: int, partitions: int, vocab_size: int, heldout_cap: int,
                  initial_rows: int = 0, where: Path) -> DiskEstimate:  # fmt: skip
    """Project the build's disk (see the module docstring).

    Parameters
    ----------
    tokens, tokens_low, exact : the corpus's token counts (:func:`corpus_tokens`).
    column_rows : rows of each column (level 1 first, then each counted layer's heads).
    top_k : continuations kept per row.
    budget : ``--max-memory`` in bytes; partitions : ``--partitions`` (>= 2: spill from the start).
    vocab_size : raw ids (the unigram's and the id map's length).
    heldout_cap : held-out pairs at most (counted in RAM after the pass, never spilled).
    initial_rows : rows of the memory appended to (``--append``): its summaries are spilled too
        when the build spills, and counted in the memory.
    where : the directory whose file system takes the output.
    """
    column_rows = np.asarray(column_rows, np.int64)
    G = int(column_rows.shape[0])

    def pairs_of(n: int, low: bool) -> float:
        held = min(n / 20, heldout_cap)
        return max(0.0, (n - held) * ((1 - 1 / DOC_TOKENS) if low else 1.0))

    pairs, pairs_low = pairs_of(tokens, False), pairs_of(tokens_low, True)
    per_row = row_bytes(top_k)
    if partitions >= 2:
        start, start_late, spills = 0.0, 0.0, "always"
    else:
        room = max(0, budget - initial_rows * per_row / LOAD)
        start = _spill_start(room, top_k, column_rows, occupied_upper)
        start_late = _spill_start(room, top_k, column_rows, occupied_lower)
        spills = "likely" if start_late < pairs_low else "possibly" if start < pairs else "no"
    state = per_row * (initial_rows + min(occupied_upper(start, column_rows), budget / per_row))
    spill = PAIR_BYTES * G * max(0.0, pairs - start) + (state if start < pairs else 0)
    spill_low = PAIR_BYTES * G * max(0.0, pairs_low - start_late)
    rows = min(float(column_rows.sum()), occupied_upper(pairs, column_rows) + initial_rows)
    memory = per_row * (rows + 1) + 16 * vocab_size  # + the all-zero row, unigram, id map
    memory_low = per_row * (occupied_lower(pairs_low, column_rows) + 1) + 16 * vocab_size
    free = shutil.disk_usage(where).free
    return DiskEstimate(
        where=str(where), free=int(free), tokens=int(tokens), tokens_low=int(tokens_low),
        exact=bool(exact), columns=G, spills=spills, spill=int(spill), spill_low=int(spill_low),
        memory=int(memory), memory_low=int(memory_low), needed=int(spill + memory),
    )  # fmt: skip


def check_disk(estimate: DiskEstimate) -> None:
    """Refuse (one line) when the build cannot fit on disk for sure; warn when it may not."""
    e = estimate
    advice = ("put --out on a larger file system, count fewer layers (--layers) or a smaller "
              "corpus (--limit-tokens)")  # fmt: skip
    what = f"{e.tokens:,}" if e.exact else f"at least {e.tokens_low:,} (of ~{e.tokens:,})"
    if e.spill_low > e.free:
        raise EngramError(
            f"not enough disk for build-counts under {e.where}: spilling {what} tokens x "
            f"{e.columns} columns needs {format_bytes(e.spill_low)} of scratch at the "
            f"least (12 B per token and column), {format_bytes(e.free)} is free; {advice}"
            + ("" if e.spills == "always" else ", or give it more --max-memory")
        )
    if e.memory_low > e.free:
        raise EngramError(
            f"not enough disk for build-counts under {e.where}: the memory of {what} tokens x "
            f"{e.columns} columns needs {format_bytes(e.memory_low)} at the least (occupied "
            f"rows from below by Heaps' law), {format_bytes(e.free)} is free; {advice}"
        )
    if e.needed > e.free:
        log.warning(
            "build-counts may run out of disk under %s: it projects %s of row-bucket scratch "
            "and up to %s of memory (%s tokens x %d columns%s), %s is free; if it fills, the "
            "build stops and leaves nothing; to be safe %s",
            e.where, format_bytes(e.spill), format_bytes(e.memory), f"{e.tokens:,}",
            e.columns, "" if e.exact else ", estimated", format_bytes(e.free), advice,
        )  # fmt: skip


@contextmanager
def disk_full_is_one_line(where: Path):
    """Turn a full disk (ENOSPC, EDQUOT) inside the block into one line naming what to do."""
    try:
        yield
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        why = "the disk is full" if exc.errno == errno.ENOSPC else "the disk quota is reached"
        raise EngramError(
            f"build-counts stopped: {why} under {where} (the row-bucket scratch and the memory "
            "are written there; nothing was kept); free space there, put --out on a larger file "
            "system, or count fewer layers (--layers) or a smaller corpus (--limit-tokens)"
        ) from None
