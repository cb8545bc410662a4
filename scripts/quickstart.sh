#!/usr/bin/env bash
# The main job, from a fresh machine: set up libtorch, build difflab, and inspect the noise
# schedules (tables as JSON, curves as a PNG) into samples/quickstart/.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
scripts/setup.sh
cargo build --release --locked -p difflab-cli
bin=target/release/difflab
out=samples/quickstart
mkdir -p "$out"
"$bin" schedule --kind linear --kind scaled_linear --kind cosine --kind sigmoid --plot "$out/schedules.png"
"$bin" schedule --kind cosine --timesteps 1000 --inference-steps 10 --spacing trailing --json > "$out/cosine.json"
echo "DDIM-10 (trailing) visits: $(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["timesteps"])' "$out/cosine.json")"
echo "wrote $out/schedules.png and $out/cosine.json"
