#!/usr/bin/env bash
# First run on a fresh machine: installs the few Debian packages specula needs, builds only the
# `specula` program (CPU backend without a GPU; CUDA for the local GPU alone with one), writes the
# embedded demo model (random weights, real layout) and generates text with it. About 2 minutes
# on 2 cores without a GPU, package installation included.
# Extra arguments go to `specula generate` after the defaults below, so they override them
# (a flag given twice takes its last value): e.g. ./scripts/quickstart.sh -n 64 --device cpu
set -euo pipefail
cd "$(dirname "$0")/.."
start=$SECONDS
bash scripts/setup.sh --minimal
[ -f build/demo-model/model.safetensors ] || ./build/specula create-demo-model build/demo-model
./build/specula generate -m build/demo-model -p "The quick brown fox" -n 48 --temperature 0.8 --seed 1 "$@"
echo "quickstart: done in $((SECONDS - start)) s; the program is ./build/specula (try ./build/specula --help)" >&2
