#!/usr/bin/env bash
# Installs specula's build dependencies (Debian packages) and builds it into build/ with CMake +
# Ninja. Two modes:
#   scripts/setup.sh            everything: all packages (chromium for the chat page test), the
#                               tokenizer files, the chat page test's playwright-core and the client
#                               tests' OpenAI SDK (npm), the library, the CLI, the benchmarks and the
#                               tests; the CUDA backend when nvcc is found (/usr/local/cuda/bin/nvcc
#                               or CUDACXX). Used by scripts/test.sh and .ci/run.
#   scripts/setup.sh --minimal  only what `specula` itself needs, and only the CLI: no tests, no
#                               npm; CUDA only when a GPU is present, compiled for that GPU alone.
#                               Used by scripts/quickstart.sh (about 2 minutes on 2 cores).
# Idempotent; safe to re-run, and either mode may follow the other in the same build/.
set -euo pipefail
cd "$(dirname "$0")/.."
minimal=0
[ "${1:-}" = "--minimal" ] && minimal=1

packages=(cmake ninja-build g++ pkg-config nlohmann-json3-dev libpcre2-dev libutf8proc-dev libcli11-dev)
# chromium: the chat page's browser test (web.chat_page) drives the Debian package headless.
[ $minimal -eq 0 ] && packages+=(libgtest-dev libgmock-dev libbenchmark-dev libcpp-httplib-dev curl chromium)
missing=()
for p in "${packages[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo
  $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if [ $minimal -eq 1 ]; then
  # A GPU is present when the driver lists one; then CUDA is built for its architecture only.
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L 2>/dev/null | grep -q '^GPU'; then
    cuda_args=(-DSPECULA_CUDA=AUTO -DCMAKE_CUDA_ARCHITECTURES=native)
    echo "setup: GPU found; building the CLI with the CUDA backend for this GPU"
  else
    cuda_args=(-DSPECULA_CUDA=OFF)
    echo "setup: no GPU found; building the CLI for the CPU backend"
  fi
  cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release -DSPECULA_TESTS=OFF "${cuda_args[@]}" \
    ${SPECULA_CMAKE_ARGS:-} >/dev/null
  ninja -C build -j"$(nproc)" specula_cli
  exit 0
fi

if command -v npm >/dev/null 2>&1; then
  bash scripts/fetch-deps.sh
  # The Node.js test packages (playwright-core for the chat page test, which uses the chromium
  # package and no downloaded browser; the OpenAI SDK for the client tests), pinned by their lock
  # files and installed again only when a lock file changes. Without them the tests fail saying so.
  for dir in tests/web tests/client; do
    stamp=$dir/node_modules/.specula-lock.sha256
    want=$(sha256sum $dir/package-lock.json | cut -d' ' -f1)
    if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
      if (cd $dir && npm ci --no-audit --no-fund --silent); then
        echo "$want" > "$stamp"
        echo "setup: installed $dir/node_modules (npm ci)"
      else
        echo "setup: npm ci in $dir failed; the tests that use it will fail until it succeeds" >&2
      fi
    fi
  done
else
  echo "setup: npm not found; tokenizer, client and chat page tests will fail until scripts/fetch-deps.sh and" \
       "'npm ci' in tests/web and tests/client have run" >&2
fi
# SPECULA_CUDA=AUTO and SPECULA_TESTS=ON are given explicitly: a build/ configured by --minimal
# (no tests, perhaps no CUDA) is switched back to the full build.
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release -DSPECULA_TESTS=ON -DSPECULA_CUDA=AUTO \
  ${SPECULA_CMAKE_ARGS:-} >/dev/null
ninja -C build -j"$(nproc)"
