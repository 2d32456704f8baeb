#!/usr/bin/env bash
# Builds if needed and runs every test (ctest): unit tests, tokenizer goldens, model parity,
# the reader tests under AddressSanitizer, and the CUDA tests (which say they are skipped when
# no GPU is present; they run on the GPU machine through scripts/device-check.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
[ -f build/build.ninja ] || bash scripts/setup.sh
ninja -C build -j"$(nproc)"
ctest --test-dir build --output-on-failure -j"$(nproc)" "$@"
