#!/usr/bin/env python3
"""Merges one device run's InfLLM-V2 benchmark files (scripts/device-check.sh stages `sparsequick`
and `sparse` on the same machine) into bench/results/sparse.json: one flat record per measurement
(device, commit, date, source, then the measurement's own fields), and prints the markdown tables
that bench/results/sparse.md is written from. Runs here, on the files the device tool returned;
the engine never runs Python.

Usage: collect_sparse_results.py RUN_DIR [OUT_JSON]
RUN_DIR holds attention_bench.json, kernel_bench_sparse.json, torch_attention.json,
minicpm4_<mode>.json and spec_sparse.json (whichever exist; a missing one is reported)."""
import glob
import json
import os
import sys

run = sys.argv[1]
out_path = sys.argv[2] if len(sys.argv) > 2 else "bench/results/sparse.json"
commit = open(os.path.join(run, "commit.txt")).read().strip() if os.path.exists(os.path.join(run, "commit.txt")) else "?"
records = []


def load(name):
    path = os.path.join(run, name)
    if not os.path.exists(path):
        print(f"(missing: {name})")
        return None
    return json.load(open(path))


attn = load("attention_bench.json")
device = attn["device"] if attn else "?"
date = None
base = lambda source: {"device": device, "commit": commit, "source": source}

if attn:
    records.append({**base("specula_attention_bench"), "metric": "copy_bandwidth", "value": attn["copy_gbps"],
                    "unit": "GB/s"})
    for r in attn.get("sparse_decode", []):
        records.append({**base("specula_attention_bench"), "phase": "decode", **r})
    for r in attn.get("sparse_prefill", []):
        records.append({**base("specula_attention_bench"), "phase": "prefill", **r})
    for r in attn.get("decode", []):
        records.append({**base("specula_attention_bench"), "phase": "dense decode (qkv_attention)", **r})

kern = load("kernel_bench_sparse.json")
if kern:
    for r in kern.get("sparse_select", []):
        records.append({**base("specula_kernel_bench sparse_select"), **r})

torch_attn = load("torch_attention.json")
sdpa = {}
if torch_attn:
    src = f"tools/torch_attention_baseline.py (torch {torch_attn['meta'].get('torch', '?')}, SDPA flash)"
    for r in torch_attn["results"]:
        records.append({**base(src), **r})
        sdpa[r["metric"]] = r["value"]

e2e = {}
for path in sorted(glob.glob(os.path.join(run, "minicpm4_*.json"))):
    mode = os.path.basename(path)[len("minicpm4_"):-len(".json")]
    for r in json.load(open(path)):
        date = date or r.get("date")
        records.append({**base(f"specula bench --preset minicpm4-8b --attention {mode}"), **r})
        e2e[(mode, r["metric"])] = r["value"]

spec = load("spec_sparse.json")
if spec:
    for r in spec:
        records.append({**base("specula bench-spec --preset minicpm4-8b (sparse attention)"), **r})

for r in records:
    r.setdefault("date", date)
json.dump(records, open(out_path, "w"), indent=1)
print(f"wrote {len(records)} records to {out_path}\n")

if attn:
    print("| shape | N | our dense us | SDPA flash us | our sparse attention us |")
    print("|---|---|---|---|---|")
    for r in attn.get("sparse_decode", []):
        key = f"sdpa_flash_decode_ms_{'minicpm4-8b' if r['n_kv'] == 2 else 'llama3-8b'}_{r['context']}"
        s = sdpa.get(key)
        print(f"| {r['shape']} | {r['context']} | {r['dense_us']:.1f} | {s * 1e3 if s else float('nan'):.0f} | "
              f"{r['sparse_us']:.1f} |")
    print("\n| shape | N | dense ms | shared ms | independent ms | independent, 1-token tiles ms |")
    print("|---|---|---|---|---|---|")
    for r in attn.get("sparse_prefill", []):
        print(f"| {r['shape']} | {r['context']} | {r['dense_ms']:.2f} | {r['sparse_shared_ms']:.2f} | "
              f"{r['sparse_independent_ms']:.2f} | {r.get('sparse_independent_token_tiles_ms', float('nan')):.2f} |")
if kern:
    print("\n| shape | N | T | selection us | stage 1 us | compress us |")
    print("|---|---|---|---|---|---|")
    for r in kern.get("sparse_select", []):
        print(f"| {r['shape']} | {r['context']} | {r['tokens']} | {r['us']:.1f} | {r['stage1_us']:.1f} | "
              f"{r['compress_us']:.1f} |")
if e2e:
    print("\n| metric | " + " | ".join(sorted({m for m, _ in e2e})) + " |")
    for metric in sorted({k for _, k in e2e}):
        print(f"| {metric} | " + " | ".join(f"{e2e.get((m, metric), float('nan')):.4g}"
                                           for m in sorted({m for m, _ in e2e})) + " |")
