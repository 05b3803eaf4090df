#!/usr/bin/env bash
# The main job end to end on sample_data/ (run by `make demo`). Outputs go to $OUT.
set -euo pipefail
OUT=${OUT:-demo_out}
PY=${PY:-.venv/bin/python}
ENGRAMCTL="$PY -m engramctl"
mkdir -p "$OUT"

echo "== build-vocab (bundled DeepSeek-V4 tokenizer)"
$ENGRAMCTL build-vocab --tokenizer deepseek-v4 --out "$OUT/vocab.parquet" --overwrite

echo "== layout (how big are the production tables? deepseek-v4.1, then the demo-v1 preset)"
$ENGRAMCTL layout --vocab "$OUT/vocab.parquet" --preset deepseek-v4.1 --json > "$OUT/layout-deepseek-v4.1.json"
$ENGRAMCTL layout --vocab "$OUT/vocab.parquet" --preset deepseek-v4.1 | tail -n 1
$ENGRAMCTL layout --vocab "$OUT/vocab.parquet" --preset demo-v1 | tail -n 1

echo "== hash (which rows does a sentence touch? layer 1 of demo-v1; all layers in hashes.npz)"
$ENGRAMCTL hash --vocab "$OUT/vocab.parquet" --preset demo-v1 --layers 1 \
    --text "Engram tables remember n-grams."
$ENGRAMCTL hash --vocab "$OUT/vocab.parquet" --preset demo-v1 \
    --text "Engram tables remember n-grams." --out "$OUT/hashes.npz" --overwrite

echo "== hash-stats (how badly do the sample corpus's n-grams collide, and at which table size?)"
$ENGRAMCTL hash-stats sample_data/corpus/train.jsonl --vocab "$OUT/vocab.parquet" --preset demo-v1 \
    --layers 1 --sweep 50k,200k,2M --report "$OUT/hash-stats.json" --plot "$OUT/hash-stats.png" \
    --overwrite

echo "== init-table (a lazy deepseek-v4.1 table: metadata only; a small full demo table)"
$ENGRAMCTL init-table "$OUT/deepseek-lazy.zarr" --vocab "$OUT/vocab.parquet" --preset deepseek-v4.1 \
    --lazy --overwrite
$ENGRAMCTL init-table "$OUT/table.zarr" --vocab "$OUT/vocab.parquet" --preset demo-v1 \
    --ngram-vocab 5000,5000 --dtype bfloat16 --overwrite

echo "== info and verify --deep"
$ENGRAMCTL info "$OUT/table.zarr"
$ENGRAMCTL verify "$OUT/table.zarr" --deep --vocab "$OUT/vocab.parquet"

# The reference model: baseline and Engram, same backbone, data order, steps and seed.
# Budget: two 300-step runs (one pass over the 0.6M training tokens) of a 4 x 128 model.
echo "== init-table (a small table for the reference model: 2 orders x 4 heads x 20k rows, dim 32)"
$ENGRAMCTL init-table "$OUT/engram.zarr" --vocab "$OUT/vocab.parquet" \
    --ngram-vocab 20000,20000 --max-ngram 3 --heads 4 --layers 1 --pad-id 2 \
    --dim 32 --dtype float32 --init normal --std 0.02 --overwrite
TRAIN_ARGS="--corpus sample_data/corpus/train.jsonl --heldout sample_data/corpus/heldout.jsonl --steps 300 --seed 0 --device cpu --overwrite"
echo "== train --no-engram (the baseline)"
$ENGRAMCTL train $TRAIN_ARGS --no-engram --out "$OUT/model-baseline"
echo "== train (Engram; rows trained in $OUT/engram.zarr)"
$ENGRAMCTL train $TRAIN_ARGS --table "$OUT/engram.zarr" --vocab "$OUT/vocab.parquet" \
    --out "$OUT/model-engram" --compare-with "$OUT/model-baseline"
echo "== eval: held-out perplexity and next-line multiple choice (rows paged from the table)"
for bench in lm_heldout mc_next_line; do
    $ENGRAMCTL eval --model "$OUT/model-baseline" --benchmark "sample_data/bench/$bench.jsonl" \
        --device cpu --report "$OUT/eval-baseline-$bench.json" --overwrite
    $ENGRAMCTL eval --model "$OUT/model-engram" --table "$OUT/engram.zarr" \
        --benchmark "sample_data/bench/$bench.jsonl" --device cpu \
        --report "$OUT/eval-engram-$bench.json" --overwrite
done
$ENGRAMCTL eval --model "$OUT/model-engram" --table "$OUT/engram.zarr" --device cpu \
    --explain "def read_file(path): with open(path) as handle: return handle.read()"

echo
echo "outputs in $OUT/:"
cat <<EOF_OUTPUTS
  vocab.parquet                   the canonical vocab of the DeepSeek-V4 tokenizer (build-vocab)
  layout-deepseek-v4.1.json       the deepseek-v4.1 layout: primes, multipliers, offsets (layout --json)
  hashes.npz                      the row ids of the demo sentence, per layer (hash --out)
  hash-stats.json / .png          collisions of the sample corpus at 3 table sizes (hash-stats)
  deepseek-lazy.zarr              a full-size deepseek-v4.1 table, metadata only (init-table --lazy)
  table.zarr                      a small bf16 table, initialized and verified (init-table, verify)
  engram.zarr                     the reference model's table, its rows trained by train
  model-baseline/, model-engram/  checkpoints of the two runs (config.json, model.safetensors, loss curves)
  eval-*.json                     eval reports of both models on the two sample benchmarks
EOF_OUTPUTS
ls "$OUT"
echo
echo "engramctl is $(dirname "$PY")/engramctl; to have it on your PATH: source $(dirname "$PY")/activate"
