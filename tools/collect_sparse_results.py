#!/usr/bin/env python3
"""Merges device runs' InfLLM-V2 benchmark files (scripts/device-check.sh stages `sparsequick`
and `sparse`) into bench/results/sparse.json: one flat record per measurement (device, commit,
date, source, then the measurement's own fields), and prints the markdown tables that
bench/results/sparse.md is written from. Runs here, on the files the device tool returned; the
engine never runs Python.

Usage: collect_sparse_results.py RUN_DIR... [--out OUT_JSON]   (default bench/results/sparse.json)
Each RUN_DIR holds commit.txt (the commit it measured), date.txt if its files carry no date, and
any of attention_bench.json (or attention_bench_sparse.json),
kernel_bench_sparse.json, kernel_bench_sparse_fused[_N].json, torch_attention.json,
minicpm4_<mode>.json and spec_sparse.json; a missing one is reported. Several run dirs (for
example one lease's calls at two commits) go into one file, each record with its own commit."""
import argparse
import glob
import json
import os

parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
parser.add_argument("runs", nargs="+", help="folders the device tool returned, each with commit.txt")
parser.add_argument("--out", default="bench/results/sparse.json")
args = parser.parse_args()
out_path = args.out
records = []
run = commit = None


def load(name):
    path = os.path.join(run, name)
    if not os.path.exists(path):
        print(f"(missing in {run}: {name})")
        return None
    return json.load(open(path))


def table(columns, rows):
    """Prints a markdown table after a blank line."""
    print("\n| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))
    for row in rows:
        print("| " + " | ".join(str(v) for v in row) + " |")


def collect_run(run_dir):
    """Appends run_dir's records and prints its tables."""
    global run, commit
    run = run_dir
    commit_file = os.path.join(run, "commit.txt")
    commit = open(commit_file).read().strip() if os.path.exists(commit_file) else "?"
    print(f"## {run} (commit {commit})\n")
    date_file = os.path.join(run, "date.txt")
    date = open(date_file).read().strip() if os.path.exists(date_file) else None
    # sparsequick writes the attention bench's sparse sections as attention_bench_sparse.json.
    attn = load("attention_bench.json") or load("attention_bench_sparse.json")
    kern = load("kernel_bench_sparse.json")
    device = next((f["device"] for f in (attn, kern) if f), "?")
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

    if kern:
        for r in kern.get("sparse_select", []):
            records.append({**base("specula_kernel_bench sparse_select"), **r})
    # The fused decode selection (branch wip-fused-select): clusters of 8, and of N when _N.
    for path in sorted(glob.glob(os.path.join(run, "kernel_bench_sparse_fused*.json"))):
        cluster = os.path.basename(path)[len("kernel_bench_sparse_fused"):-len(".json")].lstrip("_") or "8"
        for r in json.load(open(path)).get("sparse_select", []):
            records.append({**base(f"specula_kernel_bench sparse_select (SPECULA_FUSED_SPARSE_SELECT={cluster})"), **r})

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

    if attn:
        def sdpa_us(r):
            s = sdpa.get(f"sdpa_flash_decode_ms_{'minicpm4-8b' if r['n_kv'] == 2 else 'llama3-8b'}_{r['context']}")
            return f"{s * 1e3:.0f}" if s else "nan"
        table(["shape", "N", "our dense us", "SDPA flash us", "our sparse attention us"],
              [[r["shape"], r["context"], f"{r['dense_us']:.1f}", sdpa_us(r), f"{r['sparse_us']:.1f}"]
               for r in attn.get("sparse_decode", [])])
        table(["shape", "N", "dense ms", "shared ms", "independent ms", "independent, 1-token tiles ms"],
              [[r["shape"], r["context"], f"{r['dense_ms']:.2f}", f"{r['sparse_shared_ms']:.2f}",
                f"{r['sparse_independent_ms']:.2f}", f"{r.get('sparse_independent_token_tiles_ms', float('nan')):.2f}"]
               for r in attn.get("sparse_prefill", [])])
    if kern:
        table(["shape", "N", "T", "selection us", "stage 1 us", "compress us"],
              [[r["shape"], r["context"], r["tokens"], f"{r['us']:.1f}", f"{r['stage1_us']:.1f}",
                f"{r['compress_us']:.1f}"] for r in kern.get("sparse_select", [])])
    if e2e:
        modes = sorted({m for m, _ in e2e})
        table(["metric"] + modes, [[metric] + [f"{e2e.get((m, metric), float('nan')):.4g}" for m in modes]
                                   for metric in sorted({k for _, k in e2e})])


for run_dir in args.runs:
    collect_run(run_dir)
    print()
json.dump(records, open(out_path, "w"), indent=1)
print(f"wrote {len(records)} records to {out_path}")
