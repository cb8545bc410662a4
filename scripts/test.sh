#!/usr/bin/env bash
# The whole test suite, from a fresh machine: sets up libtorch if missing, then runs every
# crate's unit, golden and end-to-end tests.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
scripts/setup.sh
.venv/bin/python -c 'import tensorboard' 2>/dev/null || .venv/bin/pip install --quiet --disable-pip-version-check tensorboard
cargo test --workspace --locked "$@"
