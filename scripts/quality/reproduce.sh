#!/usr/bin/env bash
# The training-parity quality table of docs/evaluation.md, from scratch, on 2 CPU threads:
# the reference recipe trained by diffusers and by difflab, difflab's recommended settings on the
# same budget, 1000 samples of each, LeNet metrics (cFID, KID, precision, recall, class histogram,
# real-vs-real floor), a second training seed of the recipe, and the side-by-side grids. About
# 3 h on 2 cores.
#   scripts/quality/reproduce.sh [OUT]        (default: quality/; finished steps are skipped)
# Needs: scripts/setup.sh's venv with diffusers==0.42.1 and pillow, Debian's dataset-fashion-mnist.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
OUT=${1:-quality}
mkdir -p "$OUT"
scripts/setup.sh
.venv/bin/python -c 'import diffusers, PIL' 2>/dev/null ||
  .venv/bin/pip install --quiet --no-cache-dir --disable-pip-version-check diffusers==0.42.1 pillow
cargo build --release --locked -p difflab-cli
D=target/release/difflab
say() { echo "[quality $(date +%H:%M:%S)] $*" >&2; }

# diffusers: the recipe (seed 0, 28x28), 1000 DDIM-50 samples.
if [ ! -f "$OUT/diffusers-recipe/000999.png" ]; then
  say "diffusers: training the recipe"
  .venv/bin/python scripts/quality/ref_train_fmnist.py "$OUT/diffusers-recipe" --nopad \
    --steps 2000 --batch 64 --lr 1e-3 --samples 1000 --ddim 50 --threads 2
fi
# difflab: the recipe (raw weights: the recipe keeps no EMA) and the recommended settings (EMA).
for name in recipe recommended; do
  if [ ! -f "$OUT/runs/$name/checkpoints/step-2000/model.safetensors" ]; then
    say "difflab: training $name"
    if [ -f "$OUT/runs/$name/checkpoints/latest" ]; then resume=--resume; else resume=--overwrite; fi
    $D train --config "configs/quality/fmnist-$name.yaml" --out "$OUT/runs/$name" $resume --threads 2
  fi
  if [ ! -f "$OUT/samples-$name/000999.png" ]; then
    weights=(); [ "$name" = recipe ] && weights=(--raw)
    say "difflab: sampling $name"
    $D sample --run "$OUT/runs/$name" "${weights[@]}" -n 1000 --seed 0 --threads 2 \
      --out "$OUT/samples-$name" --overwrite
  fi
done
# The recipe again with another training seed: how far two runs of one recipe differ.
if [ ! -f "$OUT/samples-recipe-seed1/000999.png" ]; then
  say "difflab: training and sampling the recipe with seed 1"
  $D train --config configs/quality/fmnist-recipe.yaml --set seed=1 --out "$OUT/runs/recipe-seed1" \
    --overwrite --threads 2
  $D sample --run "$OUT/runs/recipe-seed1" --raw -n 1000 --seed 0 --threads 2 \
    --out "$OUT/samples-recipe-seed1" --overwrite
fi
for s in diffusers-recipe samples-recipe samples-recipe-seed1 samples-recommended; do
  say "eval $s"
  $D eval --samples "$OUT/$s" --config configs/quality/fmnist-recipe.yaml --json > "$OUT/eval-$s.json"
done
.venv/bin/python scripts/quality/grids.py --real-fmnist "$OUT/real64" "$OUT/parity-fmnist.png" \
  "diffusers 0.42.1, the recipe=$OUT/diffusers-recipe" \
  "difflab, the recipe=$OUT/samples-recipe" \
  "difflab, recommended=$OUT/samples-recommended" \
  "real Fashion-MNIST (test)=$OUT/real64"
say "done: $OUT/eval-*.json, $OUT/parity-fmnist.png"
