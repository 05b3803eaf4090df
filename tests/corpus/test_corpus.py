"""Corpus readers: every format gives the same documents; bad inputs give one clear error."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest

from engramctl.corpus.files import CorpusOptions, CorpusWarnings, discover_files
from engramctl.corpus.readers import read_batches
from engramctl.corpus.tokenize import TextTokenizer, tokenized_batches
from engramctl.errors import EngramError, UsageError

DOCS = ["The cat sat.\nOn the mat.", "Engram tables remember n-grams.", "Zürich café, naïve."]


def read_docs(paths, **options):
    """Documents as joined text (pieces of one document concatenated)."""
    warnings = CorpusWarnings()
    opts = CorpusOptions(**options)
    docs: list = []
    for batch in read_batches(discover_files(paths, format=opts.format), opts, warnings):
        items = batch.texts if batch.texts is not None else split_ids(batch)
        for item, start in zip(items, batch.doc_start, strict=True):
            if start or not docs:
                docs.append(item)
            else:
                docs[-1] = docs[-1] + item
    return docs, warnings.counts


def split_ids(batch) -> list[list[int]]:
    bounds = zip(batch.offsets[:-1], batch.offsets[1:], strict=True)
    return [batch.ids[a:b].tolist() for a, b in bounds]


def write_jsonl(path, docs, field="text", opener=open):
    with opener(path, "wt", encoding="utf-8") as handle:
        for i, doc in enumerate(docs):
            handle.write(json.dumps({"id": i, field: doc}) + "\n")
    return path


def test_text_jsonl_parquet_and_compressed_agree(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    import zstandard

    write_jsonl(tmp_path / "a.jsonl", DOCS)
    write_jsonl(tmp_path / "b.jsonl.gz", DOCS, opener=gzip.open)
    raw = (tmp_path / "a.jsonl").read_bytes()
    (tmp_path / "c.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(raw))
    pq.write_table(pa.table({"text": DOCS}), tmp_path / "d.parquet")
    for name in ("a.jsonl", "b.jsonl.gz", "c.jsonl.zst", "d.parquet"):
        assert read_docs([tmp_path / name])[0] == DOCS, name
    # plain text: one document per file, or blank-line separated with --doc-sep
    for i, doc in enumerate(DOCS):
        (tmp_path / "txt").mkdir(exist_ok=True)
        (tmp_path / "txt" / f"{i}.txt").write_text(doc)
    assert read_docs([tmp_path / "txt"])[0] == DOCS
    (tmp_path / "all.txt").write_text("\n\n\n".join(DOCS) + "\n")
    docs, _ = read_docs([tmp_path / "all.txt"], doc_sep=True)
    assert [d.strip() for d in docs] == DOCS


def test_long_text_documents_come_in_pieces(tmp_path):
    lines = [f"line {i} of a long document\n" for i in range(500)]
    (tmp_path / "long.txt").write_text("".join(lines))
    opts = CorpusOptions(piece_bytes=1000, batch_tokens=100)
    batches = list(read_batches(discover_files([tmp_path / "long.txt"]), opts, CorpusWarnings()))
    starts = [s for b in batches for s in b.doc_start]
    assert len(starts) > 10 and starts[0] and not any(starts[1:])
    assert read_docs([tmp_path / "long.txt"], piece_bytes=1000)[0] == ["".join(lines)]


def test_token_formats(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    docs = [[5, 6, 7], [8], [9, 10, 11, 12]]
    sep = 0
    stream = np.array([t for d in docs for t in [*d, sep]], dtype=np.uint32)
    stream.tofile(tmp_path / "s.u32")
    stream.astype(np.uint16).tofile(tmp_path / "s.bin")
    np.save(tmp_path / "s.npy", stream.astype(np.int64))
    np.save(tmp_path / "rows.npy", np.array([[1, 2], [3, 4]], dtype=np.int32))
    pq.write_table(pa.table({"ids": docs}), tmp_path / "t.parquet")
    write_jsonl(tmp_path / "t.jsonl", docs, field="ids")
    for name, extra in [
        ("s.u32", {}), ("s.bin", {"token_dtype": "uint16"}), ("s.npy", {}),
    ]:  # fmt: skip
        assert read_docs([tmp_path / name], doc_sep_id=sep, **extra)[0] == docs, name
    # tiny batches: documents cross batch boundaries as continuation pieces
    assert read_docs([tmp_path / "s.u32"], doc_sep_id=sep, batch_tokens=2)[0] == docs
    assert read_docs([tmp_path / "rows.npy"])[0] == [[1, 2], [3, 4]]
    assert read_docs([tmp_path / "s.u32"])[0] == [stream.tolist()]  # no separator: one document
    for name in ("t.parquet", "t.jsonl"):
        assert read_docs([tmp_path / name], tokens_field="ids")[0] == docs, name


def test_tokenized_batches_match_plain_encode(tmp_path, ds_vocab):
    from engramctl.tokenizer import load_tokenizer

    tokenizer, _ = load_tokenizer("deepseek-v4")
    write_jsonl(tmp_path / "a.jsonl", DOCS * 20)
    files = discover_files([tmp_path / "a.jsonl"])
    opts = CorpusOptions(batch_tokens=20)
    got = []
    for batch in tokenized_batches(
        read_batches(files, opts, CorpusWarnings()), TextTokenizer(tokenizer)
    ):
        got += [
            batch.ids[a:b].tolist()
            for a, b in zip(batch.offsets[:-1], batch.offsets[1:], strict=True)
        ]
    assert got == [tokenizer.encode(d, add_special_tokens=False).ids for d in DOCS * 20]


def test_globs_directories_and_discovery_errors(tmp_path):
    (tmp_path / "sub").mkdir()
    write_jsonl(tmp_path / "sub" / "x.jsonl", DOCS[:1])
    write_jsonl(tmp_path / "y.jsonl", DOCS[1:])
    (tmp_path / "notes.xyz").write_text("ignored")
    files = discover_files([str(tmp_path / "**" / "*.jsonl")])
    assert sorted(f.path.name for f in files) == ["x.jsonl", "y.jsonl"]
    assert len(discover_files([tmp_path])) == 2
    with pytest.raises(EngramError, match="not found"):
        discover_files([tmp_path / "missing.jsonl"])
    with pytest.raises(EngramError, match="no file matches"):
        discover_files([str(tmp_path / "*.parquet")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(EngramError, match="holds no corpus files"):
        discover_files([tmp_path / "empty"])
    with pytest.raises(UsageError, match="--format"):
        discover_files([tmp_path / "notes.xyz"])
    assert discover_files([tmp_path / "notes.xyz"], format="text")[0].format == "text"


@pytest.mark.parametrize(
    "name, content, options, message",
    [
        ("bad.jsonl", b'{"text": "ok"}\n{"text": oops}\n', {}, r"bad.jsonl line 2: malformed JSON"),
        ("nofield.jsonl", b'{"text": "ok"}\n{"body": "x"}\n', {}, r"line 2: no field 'text'"),
        ("type.jsonl", b'{"text": 5}\n', {}, r"line 1: field 'text' is int"),
        ("list.jsonl", b'[1, 2]\n', {}, r"line 1: expected a JSON object"),
        ("ids.jsonl", b'{"ids": [1, "a"]}\n', {"tokens_field": "ids"}, r"not a list of ints"),
        ("broken.jsonl.gz", b"\x1f\x8bnot gzip at all", {}, r"broken.jsonl.gz line 1: cannot read"),
        ("odd.u16", b"\x01\x00\x02", {}, r"not a whole number of uint16"),
        ("flat.bin", b"\x01\x00\x00\x00", {}, r"--token-dtype"),
        ("float.npy", None, {}, r"token ids must be integers"),
        ("junk.parquet", b"not parquet", {}, r"not a readable Parquet file"),
    ],
)  # fmt: skip
def test_bad_inputs_name_file_and_line(tmp_path, name, content, options, message):
    path = tmp_path / name
    if content is None:
        np.save(path, np.array([1.5, 2.5]))
    else:
        path.write_bytes(content)
    with pytest.raises(EngramError, match=message):
        read_docs([path], **options)


def test_parquet_column_errors(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": [1, 2], "ids": [[1], [2]]}), tmp_path / "p.parquet")
    with pytest.raises(EngramError, match=r"column 'text' has type int64, expected a string"):
        read_docs([tmp_path / "p.parquet"])
    with pytest.raises(EngramError, match=r"no column 'body' \(columns: text, ids\)"):
        read_docs([tmp_path / "p.parquet"], text_field="body")
    with pytest.raises(EngramError, match=r"column 'text' has type int64, expected a list"):
        read_docs([tmp_path / "p.parquet"], tokens_field="text")


def test_invalid_utf8_is_replaced_and_counted(tmp_path):
    (tmp_path / "u.jsonl").write_bytes(b'{"text": "ok"}\n{"text": "caf\xe9 \xff"}\n')
    docs, warnings = read_docs([tmp_path / "u.jsonl"])
    assert docs == ["ok", "caf\ufffd \ufffd"]
    assert warnings["invalid_utf8"]["count"] == 2
    assert "u.jsonl line 2" in warnings["invalid_utf8"]["first"]


def test_a_vocab_file_given_as_corpus_is_refused(tmp_path, tiny_vocab):
    path = tmp_path / "vocab.parquet"
    tiny_vocab.save(path)
    with pytest.raises(EngramError, match="is an engramctl vocab file, not a corpus"):
        read_docs([path])


@pytest.mark.parametrize("loops", [1, 2])
def test_glob_visits_each_real_file_once_through_symlink_loops(tmp_path, loops):
    """Issue 14 item 5: 'dir/**/*.jsonl' with directory links back up: each file once, no hang."""
    root = tmp_path / "dir"
    (root / "sub").mkdir(parents=True)
    write_jsonl(root / "a.jsonl", DOCS[:1])
    write_jsonl(root / "sub" / "b.jsonl", DOCS[1:])
    (root / "sub" / "up").symlink_to(root, target_is_directory=True)
    if loops == 2:
        (root / "sub" / "again").symlink_to(root / "sub", target_is_directory=True)
    (root / "b-link.jsonl").symlink_to(root / "sub" / "b.jsonl")
    files = discover_files([str(root / "**" / "*.jsonl")])
    assert sorted(f.path.resolve().name for f in files) == ["a.jsonl", "b.jsonl"]
    assert len(discover_files([root, str(root / "*.jsonl")])) == 2  # across inputs, too
    hidden = root / ".cache"
    hidden.mkdir()
    write_jsonl(hidden / "c.jsonl", DOCS[:1])
    assert len(discover_files([str(root / "**" / "*.jsonl")])) == 2  # glob skips hidden dirs
