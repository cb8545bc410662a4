#!/usr/bin/env bash
# difflab vs PyTorch (diffusers UNet2DModel, and the 2-D toy recipe) side by side.
#
#   scripts/bench/compare.sh [--threads T] [--repeats R] [--quick] [--only CASE,...] [--out FILE.md]
#
# --only runs just the named cases (uncond, small32, small32-b1, anime128, toy2d), e.g.
# `--only toy2d --repeats 8` for many short interleaved rounds of the latency-bound toy.
# Builds the release binary, then for every case runs difflab and the reference in turn
# (A B A B …, R times), each measurement in its own process (clean peak memory), with the
# same threads, batch, resolution and steps, and prints a markdown table of medians with the
# ratio difflab/reference and the fraction of the measured sgemm peak. Raw JSON lines go to
# FILE.jsonl next to FILE.md (default docs/bench-results.md). Needs .venv with torch and
# diffusers (`.venv/bin/pip install diffusers`).
set -euo pipefail
cd "$(dirname "$0")/../.."

threads=2
repeats=3
quick=0
only=""
out=docs/bench-results.md
while [ $# -gt 0 ]; do
  case "$1" in
    --threads) threads="$2"; shift 2 ;;
    --repeats) repeats="$2"; shift 2 ;;
    --quick) quick=1; shift ;;
    --only) only=",$2,"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    -h|--help) sed -n 2,15p "$0"; exit 0 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
done

# Whether the case is selected (all of them without --only).
wanted() { [ -z "$only" ] || [[ "$only" == *",$1,"* ]]; }
for case in ${only//,/ }; do
  case "$case" in
    uncond|small32|small32-b1|anime128|toy2d) ;;
    *) echo "--only: unknown case '$case' (uncond, small32, small32-b1, anime128, toy2d)" >&2; exit 2 ;;
  esac
done

py=${PYTHON:-.venv/bin/python}
"$py" -c 'import diffusers, torch' 2>/dev/null || {
  echo "needs torch and diffusers in $py: .venv/bin/pip install diffusers" >&2; exit 1; }
cargo build --release -q -p difflab-cli
bin="${CARGO_TARGET_DIR:-target}/release/difflab"
# OpenMP reads its thread count at start-up: pin both sides the same way.
export OMP_NUM_THREADS="$threads" MKL_NUM_THREADS="$threads"

jsonl="${out%.md}.jsonl"
: > "$jsonl"
record() { # case figure[,figure...] side -- command...
  # One run, recorded once per named figure (two figures can share one side's run).
  local case="$1" figures="$2" side="$3"; shift 4
  local line figure
  if line=$("$@" 2>/dev/null | tail -n 1) && [ -n "$line" ]; then
    for figure in ${figures//,/ }; do
      printf '{"case":"%s","figure":"%s","side":"%s","result":%s}\n' \
        "$case" "$figure" "$side" "$line" >> "$jsonl"
    done
  else
    echo "warning: $case $figures $side failed" >&2
  fi
}

if [ "$quick" = 1 ]; then
  tsteps=8; ssteps=10; runs=1; toy_train=200; toy_runs=1
else
  tsteps=30; ssteps=20; runs=2; toy_train=1000; toy_runs=2
fi
common=(--threads "$threads" --json)

# case dir batch train_steps sample_steps sample_runs
unet_cases=(
  "uncond tests/golden/unet2d/uncond 16 $tsteps $ssteps $runs"
  "small32 scripts/bench/cases/small32 16 $tsteps $ssteps $runs"
  "small32-b1 scripts/bench/cases/small32 1 0 50 $runs"
  "anime128 scripts/bench/cases/anime128 1 0 $((ssteps / 4)) 1"
)

for ((r = 1; r <= repeats; r++)); do
  echo "round $r/$repeats" >&2
  for spec in "${unet_cases[@]}"; do
    read -r name dir batch tr ss sr <<< "$spec"
    wanted "$name" || continue
    args=(--batch "$batch" --sample-runs "$sr" "${common[@]}")
    if [ "$tr" -gt 0 ]; then
      record "$name" train difflab -- "$bin" bench --diffusers-model "$dir" "${args[@]}" \
        --train-steps "$tr" --sample-steps 0
      record "$name" train reference -- "$py" scripts/bench/diffusers_ref.py --model "$dir" \
        "${args[@]}" --train-steps "$tr" --sample-steps 0
    fi
    record "$name" sample difflab -- "$bin" bench --diffusers-model "$dir" "${args[@]}" \
      --train-steps 0 --sample-steps "$ss" --sgemm-size 0
    record "$name" sample reference -- "$py" scripts/bench/diffusers_ref.py --model "$dir" \
      "${args[@]}" --train-steps 0 --sample-steps "$ss" --sgemm-size 0
  done
  # The 2-D toy: training at batch 25, sampling 1200 points over 1000 steps. `train` compares
  # the same work: configs/toy2d.yaml clips to 1.0 and keeps an EMA (0.995, warm-up), so the
  # recipe gets both; `train-recipe` pits the same difflab run against the seed recipe as
  # written (plain Adam, no clipping, no EMA: less work than difflab's step, a lower bound).
  wanted toy2d || continue
  record toy2d train,train-recipe difflab -- "$bin" bench --config configs/toy2d.yaml \
    --batch 25 --train-steps "$toy_train" --warmup 20 --sample-steps 0 "${common[@]}"
  record toy2d train reference -- "$py" scripts/bench/toy2d_ref.py --batch 25 \
    --train-steps "$toy_train" --sample-runs 0 --ema-decay 0.995 --grad-clip 1.0 "${common[@]}"
  record toy2d train-recipe reference -- "$py" scripts/bench/toy2d_ref.py --batch 25 \
    --train-steps "$toy_train" --sample-runs 0 "${common[@]}"
  record toy2d sample difflab -- "$bin" bench --config configs/toy2d.yaml --batch 1200 \
    --train-steps 0 --sample-steps 1000 --sample-runs "$toy_runs" --sgemm-size 0 "${common[@]}"
  record toy2d sample reference -- "$py" scripts/bench/toy2d_ref.py --points 1200 \
    --train-steps 0 --sample-runs "$toy_runs" "${common[@]}"
done

"$py" scripts/bench/table.py "$jsonl" --threads "$threads" | tee "$out"
