#!/usr/bin/env bash
# The whole test suite, from a fresh machine: sets up libtorch if missing, then runs every
# crate's unit, golden and end-to-end tests; then, without difflab's CPU kernels (pure
# libtorch), the models', samplers' and schedulers' tests and the training-parity test.
# Arguments are passed to the first `cargo test` (e.g. a test-name filter) and skip the second.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
scripts/setup.sh
.venv/bin/python -c 'import tensorboard' 2>/dev/null || .venv/bin/pip install --quiet --no-cache-dir --disable-pip-version-check tensorboard
cargo test --workspace --locked "$@"
if [ $# -eq 0 ]; then
  echo "== without difflab's kernels (--no-default-features: pure libtorch)"
  cargo test --locked --no-default-features -p difflab-models -p difflab-samplers -p difflab-schedulers
  cargo test --locked --no-default-features -p difflab-train --test training_parity
fi
