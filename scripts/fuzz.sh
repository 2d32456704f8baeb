#!/usr/bin/env bash
# Builds the libFuzzer targets (tests/fuzz, clang with ASan + UBSan) into build-fuzz/ and runs
# each one for a bounded time, starting from its committed seed corpus and dictionary.
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]      (default: 30 s, every target)
#   e.g. scripts/fuzz.sh 600 pickle       ten minutes on tests/fuzz/fuzz_pickle.cpp
# FUZZ_PARALLEL=N runs N targets at once (default 1; .ci/run uses every core).
# Fails when any target finds a crash, a sanitizer report, a leak, an input slower than
# FUZZ_TIMEOUT seconds (default 10) or one that needs more than FUZZ_RSS_MB of memory (default
# 2048): the input is kept as a reproducer in build-fuzz/artifacts/<target>/, and the line to
# replay it is printed. New inputs the fuzzer finds go to build-fuzz/corpus/<target>/, never into
# the committed corpus (tests/fuzz/corpus/<target>/, made by tools/make_fuzz_corpus.py; add a
# reproducer there, named regress-*, once its fix is in).
# Installs clang and its libFuzzer runtime (Debian clang, libclang-rt-dev) when missing.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-30}
shift || true
timeout_s=${FUZZ_TIMEOUT:-10}
rss_mb=${FUZZ_RSS_MB:-2048}

packages=(clang libclang-rt-dev cmake ninja-build pkg-config nlohmann-json3-dev libpcre2-dev libutf8proc-dev libcli11-dev)
missing=()
for p in "${packages[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  echo "fuzz: installing ${missing[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo
  $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

start=$SECONDS
launcher=()
command -v ccache >/dev/null 2>&1 && launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache)
# Only the fuzz targets are built here (the library, CLI and tests are configured but not built).
cmake -S . -B build-fuzz -G Ninja -DCMAKE_BUILD_TYPE=Release -DSPECULA_CUDA=OFF -DSPECULA_TESTS=OFF \
  -DSPECULA_FUZZ=ON -DCMAKE_C_COMPILER=clang -DCMAKE_CXX_COMPILER=clang++ "${launcher[@]}" >/dev/null
ninja -C build-fuzz -j"$(nproc)" specula_fuzz
echo "fuzz: build took $((SECONDS - start)) s"

if [ $# -gt 0 ]; then
  targets=("$@")
else
  targets=()
  for f in tests/fuzz/fuzz_*.cpp; do t=$(basename "$f" .cpp); targets+=("${t#fuzz_}"); done
fi

export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
export ASAN_OPTIONS=detect_leaks=1:allocator_may_return_null=0

# Runs one target; its verdict goes to build-fuzz/logs/<target>.result ("ok ..." or "FAILED ...").
run_target() {
  local t=$1
  local bin=build-fuzz/tests/fuzz/fuzz_$t
  local work=build-fuzz/corpus/$t artifacts=build-fuzz/artifacts/$t log=build-fuzz/logs/$t.log
  local result=build-fuzz/logs/$t.result stamp=build-fuzz/logs/$t.start
  mkdir -p "$work" "$artifacts"
  touch "$stamp"  # reproducers of this run are the artifacts newer than it
  local args=(-max_total_time="$seconds" -timeout="$timeout_s" -rss_limit_mb="$rss_mb" -print_final_stats=1
              -artifact_prefix="$artifacts/")
  [ -f "tests/fuzz/dict/$t.dict" ] && args+=(-dict="tests/fuzz/dict/$t.dict")
  # The committed corpus is read first (every seed and reproducer runs once: the regression
  # check), then fuzzing goes on from it; new inputs are written to the first folder only.
  if "$bin" "${args[@]}" "$work" "tests/fuzz/corpus/$t" >"$log" 2>&1; then
    local runs cov
    runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo "?")
    cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | grep -o '[0-9]*$' || echo "?")
    echo "ok, $runs runs in ${seconds} s, coverage $cov" >"$result"
  else
    {
      echo "FAILED (log $log)"
      grep -E '^==[0-9]+==|SUMMARY|runtime error|uncaught exception|Test unit written|ERROR: libFuzzer' "$log" | head -20
      find "$artifacts" -type f -newer "$stamp" | while read -r a; do echo "reproduce with: $bin $a"; done
    } >"$result"
  fi
}

for t in "${targets[@]}"; do
  [ -x "build-fuzz/tests/fuzz/fuzz_$t" ] || { echo "fuzz: no target '$t' (tests/fuzz/fuzz_$t.cpp)" >&2; exit 2; }
done
mkdir -p build-fuzz/logs
rm -f build-fuzz/logs/*.result
# FUZZ_PARALLEL targets at a time (default 1: each fuzzer is one process on one core).
parallel=${FUZZ_PARALLEL:-1}
for t in "${targets[@]}"; do
  while [ "$(jobs -pr | wc -l)" -ge "$parallel" ]; do wait -n || true; done
  run_target "$t" &
done
wait

failed=()
for t in "${targets[@]}"; do
  result=$(cat "build-fuzz/logs/$t.result" 2>/dev/null || echo "FAILED (no result)")
  echo "fuzz: $t: $result"
  case $result in ok*) ;; *) failed+=("$t") ;; esac
done
echo "fuzz: total $((SECONDS - start)) s"
if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz: findings in: ${failed[*]}" >&2
  exit 1
fi
