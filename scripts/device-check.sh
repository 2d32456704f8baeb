#!/usr/bin/env bash
# One call on the GPU machine: build with CUDA (ninja -j16), run the GPU tests and the benchmarks,
# and print a short table last. Logs and JSON go to $OUT (the device tool returns that folder).
#   scripts/device-check.sh [stages...]   stages: build tests sanitizer bench kernels quickbench spec ab lab load torch fixtures sparse sparsequick
#   (default: build tests bench torch; quickbench is specula bench alone, for iterating on decode;
#   load writes a random Llama-3-8B-shaped checkpoint to disk and times loading it, cold then warm)
# Needs .deps (scripts/fetch-deps.sh and scripts/fetch-device-deps.sh) carried along.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/out}
# Logs go to $OUT/logs and are packed into $OUT/logs.tgz at the end (the device tool returns at
# most 8 files); JSON results stay at the top of $OUT.
RESULTS=$OUT
OUT=$RESULTS/logs
mkdir -p "$OUT"
stages=("$@")
[ ${#stages[@]} -eq 0 ] && stages=(build tests bench torch)
has() { local s; for s in "${stages[@]}"; do [ "$s" = "$1" ] && return 0; done; return 1; }
summary=()
note() { summary+=("$1"); echo "== $1"; }

root=$PWD/.deps/sysroot
export PKG_CONFIG_PATH=$root/usr/lib/x86_64-linux-gnu/pkgconfig:$root/usr/share/pkgconfig
export PKG_CONFIG_SYSROOT_DIR=$root
export LD_LIBRARY_PATH=$root/usr/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
commit=$(cat .commit 2>/dev/null || git rev-parse --short HEAD 2>/dev/null || echo unknown)
build=build-device
arch=${SPECULA_DEVICE_ARCH:-90a-real}

if has build; then
  t=$SECONDS
  cmake -S . -B $build -G Ninja -DCMAKE_BUILD_TYPE=Release -DSPECULA_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES="$arch" \
    -DCMAKE_PREFIX_PATH="$root/usr" -DCMAKE_CXX_FLAGS="-isystem $root/usr/include" >"$OUT/configure.log" 2>&1 \
    && ninja -C $build -j16 >"$OUT/build.log" 2>&1
  rc=$?
  note "build: rc=$rc in $((SECONDS - t)) s (commit $commit, CUDA arch $arch)"
  if [ $rc -ne 0 ]; then tail -40 "$OUT/build.log"; grep -m20 -B2 -A6 'error' "$OUT/build.log"; exit 1; fi
fi

# The trained-model GPU test reads tinygo-llama3 from .tinygo when it was carried along
# (scripts/stage-tinygo.sh); without it that test says it is skipped.
[ -d .tinygo ] && export SPECULA_TINYGO_DIR=$PWD/.tinygo

if has tests; then
  t=$SECONDS
  nvidia-smi --query-gpu=name,memory.used,memory.total,clocks.sm --format=csv,noheader >"$OUT/gpu.txt" 2>&1
  ./$build/tests/specula_tests --gtest_filter="${GPU_FILTER:-Cuda*:*Cuda*}" --gtest_brief=1 >"$OUT/gpu-tests.log" 2>&1
  rc=$?
  # --gtest_brief prints failures only: the counts come from the closing summary.
  pass=$(sed -n 's/^\[  PASSED  \] \([0-9]*\) test.*/\1/p' "$OUT/gpu-tests.log" | head -1)
  fail=$(grep -c '^\[  FAILED  \] [A-Za-z]' "$OUT/gpu-tests.log")
  skip=$(grep -c '^\[  SKIPPED \]' "$OUT/gpu-tests.log")
  note "gpu tests: rc=$rc ok=$pass failed=$fail skipped=$skip in $((SECONDS - t)) s"
  grep -E '^\[  FAILED  \]|Failure|error' "$OUT/gpu-tests.log" | head -40
  if [ -n "${ALL_TESTS:-}" ]; then
    ./$build/tests/specula_tests --gtest_brief=1 >"$OUT/all-tests.log" 2>&1
    note "all tests on the GPU machine: rc=$? $(grep -E '^\[  (PASSED|FAILED) ' "$OUT/all-tests.log" | head -2 | tr '\n' ' ')"
  fi
fi

if has sanitizer; then
  t=$SECONDS
  # The op-level tests (the whole-model ones repeat the same kernels many times over).
  filter=${SANITIZER_FILTER:-'CudaBulkGemv*:CudaEmbedding*:CudaRmsNorm*:CudaAddRmsNorm*:CudaLinear*:CudaFusedLinear*:CudaQkvRopeStore*:CudaQkvAttention*:CudaSiluMul*:CudaArgmax*:CudaConvert*:CudaGraph*:CudaAttention*:CudaSampling*-*Timing*'}
  timeout 420 compute-sanitizer --tool memcheck --error-exitcode 3 \
    ./$build/tests/specula_tests --gtest_filter="$filter" --gtest_brief=1 >"$OUT/memcheck.log" 2>&1
  note "compute-sanitizer memcheck: rc=$? in $((SECONDS - t)) s ($(grep -c 'Invalid' "$OUT/memcheck.log") invalid accesses; $(grep -E 'ERROR SUMMARY' "$OUT/memcheck.log" | tail -1); $(grep -E '^\[  (PASSED|FAILED) ' "$OUT/memcheck.log" | head -1))"
  grep -m10 -A8 'Invalid' "$OUT/memcheck.log"
fi

if has bench; then
  for b in specula_kernel_bench specula_attention_bench; do
    if [ -x ./$build/$b ]; then
      ./$build/$b --json "$RESULTS/$b.json" >"$OUT/$b.log" 2>&1
      note "$b: rc=$?"; tail -25 "$OUT/$b.log"
    fi
  done
  ./$build/specula bench --preset llama3-8b --device cuda --contexts 512,8192 --prefill 4096 --decode-steps 64 --profile \
    --commit "$commit" --json "$RESULTS/specula_bench.json" >"$OUT/specula_bench.log" 2>&1
  note "specula bench llama3-8b: rc=$?"; cat "$OUT/specula_bench.log"
  # A/B in the same run: the decode step without programmatic dependent launch.
  SPECULA_NO_PDL=1 ./$build/specula bench --preset llama3-8b --device cuda --contexts 512,8192 --prefill 0 \
    --decode-steps 64 --commit "$commit" --json "$OUT/specula_bench_no_pdl.json" >"$OUT/specula_bench_no_pdl.log" 2>&1
  note "specula bench without PDL: rc=$? $(grep -E 'decode_vs_bandwidth' "$OUT/specula_bench_no_pdl.log" | tr -s ' ' | tr '\n' ' ')"
fi

if has kernels; then
  # The op-level benchmark alone (linear at decode and small-M token counts, top-k, ...).
  timeout 200 ./$build/specula_kernel_bench --json "$RESULTS/specula_kernel_bench.json" >"$OUT/specula_kernel_bench.log" 2>&1
  note "specula_kernel_bench: rc=$?"; tail -60 "$OUT/specula_kernel_bench.log"
fi

if has quickbench; then
  ./$build/specula bench --preset llama3-8b --device cuda --contexts 512,8192 --prefill 4096 --decode-steps 64 --profile \
    --commit "$commit" --json "$RESULTS/specula_bench.json" >"$OUT/specula_bench.log" 2>&1
  note "specula bench llama3-8b: rc=$?"; cat "$OUT/specula_bench.log"
fi

if has spec; then
  # Speculative decoding: draft/verify timing on the 8B shape (random target and head) and the
  # real tinygo pair end to end; results into bench/results/spec.json's format.
  t=$SECONDS
  tinygo_arg=(); [ -d .tinygo/eagle ] && tinygo_arg=(--tinygo "$PWD/.tinygo")
  [ -n "${SPEC_NO_TINYGO:-}" ] && tinygo_arg=()
  timeout ${SPEC_TIMEOUT:-540} ./$build/specula bench-spec --preset llama3-8b --device cuda "${tinygo_arg[@]}" --commit "$commit" \
    --json "$RESULTS/spec.json" >"$OUT/spec.log" 2>&1
  note "bench-spec: rc=$? in $((SECONDS - t)) s"; tail -45 "$OUT/spec.log"
fi

if has ab; then
  # Decode A/B in one run: the default, then each setting in AB_ENV (space-separated VAR=value,
  # default SPECULA_NO_BULK_GEMV=1; VAR=1,VAR2=1 sets both), then the default again, so run-to-run
  # spread shows beside the difference.
  for variant in default ${AB_ENV:-SPECULA_NO_BULK_GEMV=1} default; do
    log="$OUT/ab_$(echo "$variant" | tr -c 'A-Za-z0-9_\n' '_')_$SECONDS.log"
    if [ "$variant" = default ]; then set --; else IFS=, read -ra vars <<<"$variant"; set -- "${vars[@]}"; fi
    env "$@" ./$build/specula bench --preset llama3-8b --device cuda --contexts 512,8192 --prefill 0 --decode-steps 64 \
      ${AB_PROFILE:+--profile} --commit "$commit" >"$log" 2>&1
    note "ab [$variant]: rc=$? $(grep -E 'decode_vs_bandwidth|copy_bandwidth' "$log" | awk -F'|' '{printf "%s %s; ", $2, $3}')"
  done
fi

if has lab; then
  # bench/gemv_lab.cu: decode GEMV variants against the copy and read ceilings (standalone nvcc build).
  nvcc -std=c++17 -O3 -gencode=arch=compute_90a,code=sm_90a -I src bench/gemv_lab.cu -o "$OUT/gemv_lab" >"$OUT/gemv_lab_build.log" 2>&1 \
    && "$OUT/gemv_lab" >"$OUT/gemv_lab.log" 2>&1
  note "gemv lab: rc=$?"; cat "$OUT/gemv_lab.log"; rm -f "$OUT/gemv_lab"
fi

if has load; then
  t=$SECONDS
  ckpt=${LOAD_CHECKPOINT_DIR:-/tmp/specula-llama3-8b-random}
  python3 tools/make_random_checkpoint.py "$ckpt" >"$OUT/make_checkpoint.log" 2>&1
  note "random 8B checkpoint: rc=$? $(tail -1 "$OUT/make_checkpoint.log")"
  for run in cold warm; do
    ./$build/specula bench --model "$ckpt" --device cuda --contexts 512 --prefill 0 --decode-steps 32 --repeats 1 \
      --commit "$commit" --json "$RESULTS/load_$run.json" >"$OUT/load_$run.log" 2>&1
    note "load ($run page cache): rc=$? $(grep -E 'load_|decode_tokens' "$OUT/load_$run.log" | tr -s ' ' | tr '\n' ' ')"
  done
  rm -rf "$ckpt"
  note "load stage: $((SECONDS - t)) s"
fi

if has torch; then
  t=$SECONDS
  PYTHONUNBUFFERED=1 timeout 420 python3 tools/torch_baseline.py --prefill 4096 --contexts 512,8192 \
    --decode-steps 64 ${TORCH_COMPILE:+--compile} --json "$RESULTS/torch_baseline.json" >"$OUT/torch.log" 2>&1
  note "torch baseline: rc=$? in $((SECONDS - t)) s"; tail -8 "$OUT/torch.log"
fi

if has sparse; then
  # InfLLM-V2 (issue 13's benchmark): attention per layer (ours sparse and dense, PyTorch SDPA flash)
  # and end to end on the MiniCPM4-8B shape, sparse against dense, in one run.
  t=$SECONDS
  if [ -x ./$build/specula_attention_bench ]; then
    timeout 240 ./$build/specula_attention_bench --json "$RESULTS/attention_bench.json" >"$OUT/attention_bench.log" 2>&1
    note "attention bench: rc=$?"; tail -40 "$OUT/attention_bench.log"
  fi
  PYTHONUNBUFFERED=1 timeout 240 python3 tools/torch_attention_baseline.py --json "$RESULTS/torch_attention.json" \
    >"$OUT/torch_attention.log" 2>&1
  note "torch SDPA baseline: rc=$?"; cat "$OUT/torch_attention.log"
  # auto: dense below dense_len (the 4096 context shows what a sparse-capable model costs there).
  for mode in ${SPARSE_MODES:-auto dense}; do
    timeout 300 ./$build/specula bench --preset minicpm4-8b --device cuda --attention $mode \
      --contexts ${SPARSE_CONTEXTS:-4096,32768,65536,131072} --prefill ${SPARSE_PREFILL:-131072} --prefill-chunk 2048 \
      --decode-steps 16 --repeats 1 --commit "$commit" --json "$RESULTS/minicpm4_$mode.json" >"$OUT/minicpm4_$mode.log" 2>&1
    note "minicpm4-8b $mode: rc=$?"; tail -12 "$OUT/minicpm4_$mode.log"
  done
  # Speculation and sparse attention together at 128k: the MiniCPM4-8B shape with a one-layer
  # MiniCPM4-layout head, auto attention (sparse past dense_len 8192); 129024 leaves room for the
  # tree under the preset's 131072-token limit.
  timeout 240 ./$build/specula bench-spec --preset minicpm4-8b --device cuda --context ${SPARSE_SPEC_CONTEXT:-129024} \
    --vocabs 0,32768 --tree-sizes 60 --commit "$commit" --json "$RESULTS/spec_sparse.json" >"$OUT/spec_sparse.log" 2>&1
  note "bench-spec minicpm4-8b sparse: rc=$?"; tail -20 "$OUT/spec_sparse.log"
  note "sparse stage: $((SECONDS - t)) s"
fi

if has sparsequick; then
  # The sparse kernels alone, for iterating: attention per layer and the selection op, decode and
  # one prefill chunk (SPARSE_ONLY narrows the sections), then a per-kernel profile of one decode
  # selection + attention with ncu when NCU=1 (the hardware counters exist on Firecracker hosts).
  t=$SECONDS
  only=${SPARSE_ONLY:-sparse-decode,sparse-prefill}
  timeout 240 ./$build/specula_attention_bench --only "$only" --json "$RESULTS/attention_bench_sparse.json" \
    >"$OUT/attention_bench_sparse.log" 2>&1
  note "attention bench ($only): rc=$?"; tail -14 "$OUT/attention_bench_sparse.log"
  timeout 240 ./$build/specula_kernel_bench --only "$only" --json "$RESULTS/kernel_bench_sparse.json" \
    >"$OUT/kernel_bench_sparse.log" 2>&1
  note "kernel bench ($only): rc=$?"; grep -A20 '^sparse_select' "$OUT/kernel_bench_sparse.log"
  if [ -n "${NCU:-}" ] && command -v ncu >/dev/null; then
    # Per-kernel durations (median over the profiled launches) of the decode selection and attention.
    timeout 150 ncu --clock-control none --csv --metrics gpu__time_duration.sum -k regex:'compress|stage1|select' \
      --launch-count ${NCU_COUNT:-60} ./$build/specula_kernel_bench --only sparse-decode --repeats 2 \
      >"$OUT/ncu_select.csv" 2>"$OUT/ncu_select.err"
    note "ncu selection: rc=$?"
    timeout 150 ncu --clock-control none --csv --metrics gpu__time_duration.sum -k regex:'attention' \
      --launch-count ${NCU_COUNT:-60} ./$build/specula_attention_bench --only sparse-decode --repeats 2 \
      >"$OUT/ncu_attention.csv" 2>"$OUT/ncu_attention.err"
    note "ncu attention: rc=$?"
    python3 tools/ncu_summary.py "$OUT/ncu_select.csv" "$OUT/ncu_attention.csv"
    # Where the prefill stage-1 kernels stall (one 2048-token chunk at 16k: passes 1 and 2, both variants).
    timeout 120 ncu --clock-control none --section SpeedOfLight --section WarpStateStats --section Occupancy \
      -k regex:'stage1' --launch-count 4 ./$build/specula_kernel_bench --only sparse-prefill --repeats 1 \
      >"$OUT/ncu_stage1_prefill.log" 2>&1
    note "ncu stage-1 prefill: rc=$?"
    grep -E 'stage1_mma|Duration|Compute \(SM\) Throughput|Memory Throughput|Achieved Occupancy|Stall|Warp Cycles Per Issued' \
      "$OUT/ncu_stage1_prefill.log" | head -60
  fi
  note "sparsequick stage: $((SECONDS - t)) s"
fi

if has fixtures; then
  # Golden fixtures that need torch (the engine never runs Python): the InfLLM-V2 reference of each
  # variant's HF path. Returned as fixtures.tgz, to unpack into tests/data/ and commit.
  t=$SECONDS
  rm -rf "$OUT/fixtures" && mkdir -p "$OUT/fixtures"
  timeout 300 python3 tools/make_infllmv2_fixtures.py "$OUT/fixtures/sparse" >"$OUT/fixtures.log" 2>&1
  note "InfLLM-V2 fixtures: rc=$? in $((SECONDS - t)) s: $(tr '\n' ';' <"$OUT/fixtures.log" | tail -c 400)"
  tar czf "$RESULTS/fixtures.tgz" -C "$OUT/fixtures" . && rm -rf "$OUT/fixtures"
fi

printf '%s\n' "${summary[@]}" >"$OUT/summary.txt"
tar czf "$RESULTS/logs.tgz" -C "$RESULTS" logs && rm -rf "$OUT"
echo
echo "== summary"
printf '%s\n' "${summary[@]}"
