#!/usr/bin/env bash
# The main job, from a fresh machine: set up libtorch, build difflab, train the quickstart model
# (a small UNet on the built-in shapes dataset, nothing to download, ~10 minutes on a 2-core CPU)
# and leave sample grids in runs/quickstart/samples/. Re-running starts the demo run over.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
scripts/setup.sh
cargo build --release --locked -p difflab-cli
target/release/difflab train --config configs/quickstart.yaml --out runs/quickstart --overwrite "$@"
latest=$(ls runs/quickstart/samples/*.png | sort | tail -n 1)
echo "samples: $latest (all grids in runs/quickstart/samples/, TensorBoard logs in runs/quickstart/tensorboard/)"
