"""``build-counts --append``: a corpus added to an existing count memory as one commit.

The memory's summaries are the starting state of the build (:class:`~.accumulate.
PairAccumulator` loads them, or spills them into row buckets past the budget), the new corpus's
pairs are added in order, and the result is written *into the memory's directory* under new
file names (``row_ids.<generation>.npy``, ...). ``zarr.json`` is then replaced in one rename: its
manifest names the new files, so a reader sees the old memory or the new one, never a mix; an
append that stops before the rename leaves the old memory (its stray files are removed by the
next append). The old files are removed after the rename.

Where no row is truncated (no row's K slots full) the result equals one build over both corpora:
the kept counts, totals and unigram are sums, and the slots' order (first seen) is the only
difference (tested). Where rows are truncated SpaceSaving depends on the order of its input, and
the result is the build over the old corpus followed by the new one.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

from ..errors import EngramError


def check_appendable(store, vocab, layout, layer_ids, top_k: int | None) -> None:
    """Refuse, in one line naming what differs, a corpus counted for another memory."""
    from ..table.core.meta import check_vocab_fingerprint

    if int(store.meta.get("format_version", 1)) < 2:
        raise EngramError(f"{store.path} is a format-1 count memory (every layout row stored); "
                          "--append needs format 2: build it again")  # fmt: skip
    check_vocab_fingerprint(store.meta["vocab_fingerprint"], vocab.fingerprint,
                            what=f"the count memory {store.path}", given="the vocab",
                            advice="append with the vocab the memory was built with")  # fmt: skip
    made_with = (store.meta.get("tokenizer") or {}).get("sha256")
    if made_with and vocab.source_sha256 and made_with != vocab.source_sha256:
        raise EngramError(f"{store.path} was counted with tokenizer sha256 {made_with[:12]}..., "
                          f"the vocab's is {vocab.source_sha256[:12]}...; append with the "
                          "memory's tokenizer and vocab")  # fmt: skip
    if layout.to_dict() != store.meta["layout"]:
        ours, theirs = layout.to_dict(), store.meta["layout"]
        differ = sorted(k for k in set(ours) | set(theirs) if ours.get(k) != theirs.get(k))
        raise EngramError(f"{store.path} was counted with another layout ({', '.join(differ)} "
                          "differ); --append takes the memory's own layout")  # fmt: skip
    if tuple(layer_ids) != store.layer_ids:
        raise EngramError(f"{store.path} counts layers {list(store.layer_ids)}, not "
                          f"{list(layer_ids)}; --append takes the memory's own layers")  # fmt: skip
    if top_k is not None and int(top_k) != store.top_k:
        raise EngramError(f"{store.path} keeps K = {store.top_k} continuations per row, not "
                          f"--top-k {top_k}; drop --top-k to append")  # fmt: skip


def remove_strays(path: Path, manifest: dict) -> None:
    """Remove array files the manifest does not name (an interrupted append's) and spill."""
    import shutil

    named = {entry["file"] for entry in manifest.values()}
    for file in Path(path).iterdir():
        if file.suffix == ".npy" and file.name not in named:
            file.unlink(missing_ok=True)
        elif file.name.startswith(".spill"):
            shutil.rmtree(file, ignore_errors=True)


def merged_corpus(old: dict, new: dict) -> dict:
    """The corpus summary of the memory after an append: sums, files listed (100 at most),
    and each append's own summary under ``appends``."""
    merged = dict(old)
    for key in ("file_count", "bytes", "tokens", "documents", "pairs", "heldout_pairs"):
        merged[key] = int(old.get(key) or 0) + int(new.get(key) or 0)
    merged["files"] = (list(old.get("files", [])) + list(new.get("files", [])))[:100]
    merged["appends"] = [*old.get("appends", []), {k: new[k] for k in new if k != "files"}
                         | {"files": list(new.get("files", []))[:100]}]  # fmt: skip
    return merged


@contextmanager
def in_place(path: Path, manifest: dict):
    """``--append`` writes into the memory's own directory (new file names; ``zarr.json``'s
    rename is the commit): one line for a file system error; a failure before the commit
    removes the new files (the memory stays as it was)."""
    from .store import read_metadata

    try:
        yield path
    except BaseException as exc:
        if read_metadata(path)["manifest"] == manifest:  # not committed
            remove_strays(path, manifest)
        if isinstance(exc, OSError):
            raise EngramError(f"cannot write {path}: {exc.strerror or exc}") from exc
        raise
