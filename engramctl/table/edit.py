"""``engramctl edit``: modify or delete what a memory holds for a phrase, as one commit.

:func:`edit_phrase` hashes a phrase's token ids with the table's own layout (the rows ``lookup``
shows), optionally only the heads of one n-gram order, and rewrites those rows: ``reset`` to the
table's init values (delete), ``from_table`` copied from another table of the same layout and
vocab (an adapted one, say), or ``scale``\\ d. The result is one commit named in ``history``
(``made_by``: the operation and the phrase) that ``revert`` undoes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import EngramError, UsageError
from ..hashing import NgramHasher
from .core.dtypes import decode_rows, encode_rows
from .core.rowinit import init_values
from .sources.table import open_table


@dataclass(frozen=True)
class EditResult:
    """What :func:`edit_phrase` committed."""

    path: str
    commit: str
    operation: str
    rows: dict[int, int]  # distinct rows per layer

    def to_dict(self) -> dict:
        return {
            "path": self.path,
            "commit": self.commit,
            "operation": self.operation,
            "rows": {str(k): v for k, v in self.rows.items()},
        }


def phrase_rows(table, ids: np.ndarray, vocab, order: int | None = None) -> dict[int, np.ndarray]:
    """Distinct table rows per layer that the n-grams of ``ids`` hash to (all heads, or those of
    ``order``)."""
    layout = table.layout
    if order is not None and not 2 <= order <= layout.max_ngram:
        raise UsageError(f"--order must be in 2..{layout.max_ngram}, got {order}")
    hashed = NgramHasher(layout, vocab).hash(np.asarray(ids, np.int64), layers=list(table.layers))
    rows = {}
    for layer_id, row_ids in hashed.items():
        offsets = np.asarray(table.meta.layer(layer_id).head_offsets, dtype=np.int64)
        table_rows = row_ids + offsets  # (T, H)
        if order is not None:
            heads = (np.arange(table_rows.shape[1]) // layout.heads) + 2 == order
            table_rows = table_rows[:, heads]
        rows[layer_id] = np.unique(table_rows)
    return rows


def edit_phrase(
    path,
    ids,
    vocab,
    *,
    reset: bool = False,
    from_table=None,
    scale: float | None = None,
    order: int | None = None,
    text: str | None = None,
    storage_options: dict | None = None,
    commits_dir=None,
) -> EditResult:
    """Rewrite the rows a phrase's n-grams hash to, as one commit (exactly one of ``reset``,
    ``from_table``, ``scale``).

    Parameters
    ----------
    path : str or Path
        The table (opened for writing; any base, a linked checkpoint included).
    ids : array of int
        The phrase's token ids (``engramctl.tokenizer.encode_text``).
    vocab : CanonicalVocab
        The table's vocab (refused if it is another one).
    reset, from_table, scale
        Init values; rows copied from this table (same layout and vocab); rows times ``scale``.
    order : int, optional
        Only the heads of this n-gram order.
    text : str, optional
        The phrase, recorded in the commit.
    storage_options : dict, optional
        fsspec options of a URL table.
    commits_dir : str or Path, optional
        Where the commits go if not beside the table (required for a table at a URL).
    """
    chosen = [reset, from_table is not None, scale is not None]
    if sum(chosen) != 1:
        raise UsageError("give exactly one of --reset, --from, --scale")
    if len(np.asarray(ids).reshape(-1)) == 0:
        raise UsageError("the text has no tokens; give a phrase")
    operation = "reset" if reset else "from" if from_table is not None else "scale"
    opened = open_table(
        path, "r+", vocab=vocab, storage_options=storage_options, commits_dir=commits_dir
    )
    with opened as table:
        rows = phrase_rows(table, ids, vocab, order)
        other = None
        if from_table is not None:
            other = open_table(from_table, vocab=vocab)
            if other.layout.to_dict() != table.layout.to_dict() or other.dim != table.dim:
                other.close()
                raise EngramError(
                    f"{from_table} has another layout or dim than {table.path}; --from needs a "
                    "table of the same layout (made from the same vocab)"
                )
        try:
            with table.edit(
                text or "", made_by={"kind": "edit", "operation": operation, "order": order}
            ) as block:
                for layer_id, row_ids in rows.items():
                    if reset:
                        values = init_values(table.meta.init, layer_id, row_ids, table.dim)
                    elif other is not None:
                        values = decode_rows(
                            other.gather(layer_id, row_ids), other.dtype, other.dim
                        )
                    else:
                        current = decode_rows(
                            table.gather(layer_id, row_ids), table.dtype, table.dim
                        )
                        values = current * np.float32(scale)
                    block.write_rows(layer_id, row_ids, encode_rows(values, table.dtype))
        finally:
            if other is not None:
                other.close()
        commit = table.commits[-1].id
        where = table.store.url
    return EditResult(where, commit, operation, {k: int(v.size) for k, v in rows.items()})


__all__ = ["EditResult", "edit_phrase", "phrase_rows"]
