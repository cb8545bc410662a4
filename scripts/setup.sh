#!/usr/bin/env bash
# One-time, idempotent set-up: a project-local virtualenv with the libtorch that
# tch 0.26 expects (PyPI `torch==2.13.0`), linked at `.libtorch` for cargo
# (see .cargo/config.toml). Quiet when everything is already in place.
# Downloads nothing but packages.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

TORCH_VERSION="2.13.0"
VENV=".venv"
PYTHON="${PYTHON:-python3}"

say() { echo "[setup] $*" >&2; }

if ! command -v cargo >/dev/null 2>&1; then
  say "cargo not found: install the Rust toolchain (rustup) first"; exit 1
fi

torch_ok() {
  [ -x "$VENV/bin/python" ] &&
    "$VENV/bin/python" - "$TORCH_VERSION" <<'PY' 2>/dev/null
import sys, importlib.metadata as m
v = m.version("torch").split("+")[0]
sys.exit(0 if v == sys.argv[1] else 1)
PY
}

if ! torch_ok; then
  if [ ! -x "$VENV/bin/python" ]; then
    say "creating $VENV"
    "$PYTHON" -m venv "$VENV"
  fi
  say "installing torch==$TORCH_VERSION into $VENV (about 4.7 GB, once)"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "torch==$TORCH_VERSION"
fi

# Locate the torch package without importing it (import is slow and noisy).
torch_dir=$(echo "$VENV"/lib/python3*/site-packages/torch)
if [ ! -f "$torch_dir/lib/libtorch.so" ]; then
  say "libtorch not found under $torch_dir"; exit 1
fi
target=$(cd "$torch_dir" && pwd)
if [ "$(readlink .libtorch 2>/dev/null || true)" != "$target" ]; then
  ln -sfn "$target" .libtorch
  say "linked .libtorch -> $target"
fi
