#!/usr/bin/env bash
# Sets up (scripts/setup.sh), writes the embedded demo model (random weights, real layout) and
# generates text with it. Extra arguments go to `specula generate`, e.g. --device cpu -n 64.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
[ -f build/demo-model/model.safetensors ] || ./build/specula create-demo-model build/demo-model
./build/specula generate -m build/demo-model -p "The quick brown fox" -n 48 --temperature 0.8 --seed 1 "$@"
