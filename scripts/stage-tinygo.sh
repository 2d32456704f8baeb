#!/usr/bin/env bash
# Copies the parts of ../shared/models/tinygo-llama3 that the GPU tests and bench-spec read (the
# target's config.json and model.safetensors, the EAGLE head, the FR-Spec lists and
# dev_windows.json: 56 MB) into .tinygo/, an ignored folder
# to carry to the GPU machine, where scripts/device-check.sh points SPECULA_TINYGO_DIR at it.
# The model is never committed. Usage: scripts/stage-tinygo.sh [SOURCE_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
src=${1:-../shared/models/tinygo-llama3}
[ -f "$src/target/model.safetensors" ] || { echo "stage-tinygo: no tinygo-llama3 model at $src" >&2; exit 1; }
mkdir -p .tinygo/target
cp "$src/target/config.json" "$src/target/model.safetensors" .tinygo/target/
cp "$src/dev_windows.json" .tinygo/
mkdir -p .tinygo/eagle .tinygo/frspec
cp "$src/eagle/config.json" "$src/eagle/pytorch_model.bin" .tinygo/eagle/
cp "$src"/frspec/freq_*.pt .tinygo/frspec/
du -sh .tinygo
