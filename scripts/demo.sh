#!/usr/bin/env bash
# The main job end to end on sample_data/ (run by `make demo`). Outputs go to $OUT.
set -euo pipefail
OUT=${OUT:-demo_out}
PY=${PY:-.venv/bin/python}
ENGRAMCTL="$PY -m engramctl"
mkdir -p "$OUT"

echo "== build-vocab (bundled DeepSeek-V4 tokenizer)"
$ENGRAMCTL build-vocab --tokenizer deepseek-v4 --out "$OUT/vocab.parquet" --overwrite

echo "== layout (deepseek-v4.1 preset: how big would the production tables be?)"
$ENGRAMCTL layout --vocab "$OUT/vocab.parquet" --preset deepseek-v4.1 --json > "$OUT/layout-deepseek-v4.1.json"
$ENGRAMCTL layout --vocab "$OUT/vocab.parquet" --preset demo-v1 | tail -n 1

echo "== hash (which rows does a sentence touch?)"
$ENGRAMCTL hash --vocab "$OUT/vocab.parquet" --preset demo-v1 --layers 1 \
    --text "Engram tables remember n-grams." --out "$OUT/hashes.npz" --overwrite

echo "== hash-stats (how badly do the sample corpus's n-grams collide, and at which table size?)"
$ENGRAMCTL hash-stats sample_data/corpus/train.jsonl --vocab "$OUT/vocab.parquet" --preset demo-v1 \
    --layers 1 --sweep 50k,200k,2M --json "$OUT/hash-stats.json" --plot "$OUT/hash-stats.png" \
    --overwrite

echo "== init-table (a lazy deepseek-v4.1 table: metadata only; a small full demo table)"
$ENGRAMCTL init-table "$OUT/deepseek-lazy.zarr" --vocab "$OUT/vocab.parquet" --preset deepseek-v4.1 \
    --lazy --overwrite
$ENGRAMCTL init-table "$OUT/table.zarr" --vocab "$OUT/vocab.parquet" --preset demo-v1 \
    --ngram-vocab 5000,5000 --dtype bfloat16 --overwrite

echo "== info and verify --deep"
$ENGRAMCTL info "$OUT/table.zarr"
$ENGRAMCTL verify "$OUT/table.zarr" --deep --vocab "$OUT/vocab.parquet"

echo
echo "outputs in $OUT/:"
ls -l "$OUT"
