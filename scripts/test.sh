#!/usr/bin/env bash
# Builds everything (scripts/setup.sh: all packages, tests, the CUDA backend where nvcc exists)
# and runs every test (ctest): unit tests, tokenizer goldens, model parity, the reader tests under
# AddressSanitizer, and the CUDA tests (which say they are skipped when no GPU is present; they
# run on the GPU machine through scripts/device-check.sh). Extra arguments go to ctest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
ctest --test-dir build --output-on-failure -j"$(nproc)" "$@"
