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

echo
echo "outputs in $OUT/:"
ls -l "$OUT"
