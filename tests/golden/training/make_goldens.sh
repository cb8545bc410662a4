#!/usr/bin/env bash
# Regenerate the training-parity goldens: for every config in cases/, difflab records a few
# steps (its seed's weights, its inputs) and PyTorch + diffusers replay them
# (scripts/parity/torch_reference.py). Needs difflab built and a venv with torch==2.13.0,
# diffusers==0.42.1 and safetensors (`bash scripts/setup.sh && .venv/bin/pip install
# diffusers==0.42.1 safetensors`), and the Debian package dataset-fashion-mnist.
# The CI test crates/pipeline/tests/training_parity.rs replays the folders this writes.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../../.." && pwd)
difflab=${DIFFLAB:-$root/target/release/difflab}
python=${PYTHON:-$root/.venv/bin/python}
for case in "$here"/cases/*.yaml; do
  name=$(basename "$case" .yaml)
  out="$here/$name"
  rm -rf "$out"
  steps=$(sed -n 's/^  steps: *//p' "$case" | head -n1)
  "$difflab" parity record --config "$case" --steps "$steps" --out "$out"
  THREADS=1 "$python" "$root/scripts/parity/torch_reference.py" "$out"
  # difflab's own results are recomputed by the test; only PyTorch's are the golden.
  rm "$out/difflab.safetensors"
done
"$python" "$here/make_initial_loss.py"
