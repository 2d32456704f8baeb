#!/usr/bin/env python3
"""Merges one device session's JSON files (specula_bench.json, torch_baseline.json,
specula_kernel_bench.json, from `scripts/device-check.sh build bench` and `... torch` on the same
machine) into bench/results/dense.json and dense.md: one object per measurement (device, commit,
date, metric, value, unit) plus the derived ratios the CUDA issue asks for (decode vs the
bandwidth limit, speedup over PyTorch eager and torch.compile, prefill MFU against the cuBLAS bf16
GEMM rate measured in the same run). dense.md ends with bench/results/dense_history.md, the
hand-written record of earlier runs and experiments. Runs here, on the files the device tool
returned. Usage: collect_dense_results.py RUN_DIR [OUT_DIR]
"""
import json
import os
import sys

run = sys.argv[1]
out_dir = sys.argv[2] if len(sys.argv) > 2 else "bench/results"
ours = json.load(open(os.path.join(run, "specula_bench.json")))
torch = json.load(open(os.path.join(run, "torch_baseline.json")))
kernels = json.load(open(os.path.join(run, "specula_kernel_bench.json")))
base = {k: ours[0][k] for k in ("device", "commit", "date")}
rows = [dict(base, metric=r["metric"], value=r["value"], unit=r["unit"], source="specula bench") for r in ours]
for r in torch:
    mode = "torch.compile" if r["metric"].startswith("torch_compile_") else "eager"
    rows.append(dict(base, metric=r["metric"], value=r["value"], unit=r["unit"],
                     source=f"torch {r['torch']} + transformers {r['transformers']}, {mode}"))
# The best rate cuBLASLt reached on any measured bf16 shape (T = 4096) is the MFU denominator.
gemm_rate = max(g["tflops"] for g in kernels["gemm"])
rows.append(dict(base, metric="cublas_bf16_gemm_best_4096", value=gemm_rate, unit="TFLOP/s",
                 source="specula_kernel_bench (best of its GEMM shapes)"))
value = {r["metric"]: r["value"] for r in rows}
derived = []
for prefix, label in (("torch", "torch"), ("torch_compile", "torch_compile")):
    for ctx in (512, 8192):
        ours_tok = value.get(f"decode_tokens_per_s_ctx{ctx}")
        theirs = value.get(f"{prefix}_decode_tokens_per_s_ctx{ctx}")
        if ours_tok and theirs:
            derived.append((f"decode_speedup_vs_{label}_ctx{ctx}", ours_tok / theirs, "x"))
    pf = value.get("prefill_tokens_per_s_4096")
    if pf and value.get(f"{prefix}_prefill_tokens_per_s_4096"):
        derived.append((f"prefill_speedup_vs_{label}_4096", pf / value[f"{prefix}_prefill_tokens_per_s_4096"], "x"))
if value.get("prefill_tflops_4096"):
    derived.append(("prefill_mfu_vs_measured_gemm_4096", 100 * value["prefill_tflops_4096"] / gemm_rate, "%"))
for m, v, u in derived:
    rows.append(dict(base, metric=m, value=v, unit=u, source="derived"))
os.makedirs(out_dir, exist_ok=True)
with open(os.path.join(out_dir, "dense.json"), "w") as f:
    json.dump(rows, f, indent=1)
with open(os.path.join(out_dir, "dense.md"), "w") as f:
    f.write(f"# Dense CUDA backend, Llama-3-8B shape (random bf16 weights)\n\n"
            f"Device: {base['device']}; commit {base['commit']}; date {base['date']}. All figures from one device "
            f"session (`scripts/device-check.sh build bench`, then `TORCH_COMPILE=1 scripts/device-check.sh torch` on "
            f"the same machine); ratios use baselines measured in it.\n\n"
            "| metric | value | unit | source |\n|---|---|---|---|\n")
    for r in rows:
        f.write(f"| {r['metric']} | {r['value']:.2f} | {r['unit']} | {r['source']} |\n")
    log = os.path.join(run, "logs", "specula_bench.log")
    if os.path.exists(log):  # the per-op tables of `specula bench --profile`
        text = open(log).read()
        start = text.find("per-op GPU time")
        end = text.find("| metric |")
        if start >= 0 and end > start:
            f.write("\n## Where a decode step's time goes\n\n" + text[start:end].strip() + "\n")
    history = os.path.join(out_dir, "dense_history.md")
    if os.path.exists(history):
        f.write("\n" + open(history).read())
print(open(os.path.join(out_dir, "dense.md")).read())
