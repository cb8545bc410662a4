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
  # The wheels are not kept in pip's cache: a cached copy would need another ~3 GB on top of the
  # ~4.7 GB installed, and a small CI disk runs out (seen: "No space left on device").
  free_kb=$(df -Pk "$VENV" | awk 'NR == 2 { print $4 }')
  say "installing torch==$TORCH_VERSION into $VENV (about 4.7 GB, once; $((free_kb / 1048576)) GB free here)"
  if [ "${free_kb:-0}" -lt $((6 * 1048576)) ]; then
    say "warning: less than 6 GB free on the disk holding $VENV; the install may run out of space"
  fi
  # pip unpacks the wheels in TMPDIR: keep them on this disk, not in a /tmp that may be a small
  # RAM-backed filesystem.
  tmp="$(pwd)/.pip-tmp"
  mkdir -p "$tmp"
  TMPDIR="$tmp" PIP_NO_CACHE_DIR=1 "$VENV/bin/pip" install --quiet --no-cache-dir \
    --disable-pip-version-check "torch==$TORCH_VERSION"
  rm -rf "$tmp"
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
