#!/usr/bin/env python3
"""Summarises `ncu --csv --metrics gpu__time_duration.sum` logs: per kernel (name and grid), how
many launches were profiled and their median duration in microseconds. Used by
scripts/device-check.sh (stage sparsequick with NCU=1) to show where a decode step's time goes."""
import csv
import statistics
import sys


def summarise(path):
    rows = {}
    try:
        with open(path, newline="") as f:
            lines = [line for line in f if line.startswith('"')]
    except OSError as e:
        print(f"{path}: {e}")
        return
    for rec in csv.DictReader(lines):
        if rec.get("Metric Name") != "gpu__time_duration.sum":
            continue
        name = rec.get("Kernel Name", "?")
        short = name.split("(")[0][:70]
        key = (short, rec.get("Grid Size", "?"), rec.get("Block Size", "?"))
        value = float(rec["Metric Value"].replace(",", ""))
        unit = rec.get("Metric Unit", "ns")
        us = value / 1000.0 if unit in ("ns", "nsecond") else value * 1e3 if unit in ("ms", "msecond") else value * 1e6 if unit in ("s", "second") else value
        rows.setdefault(key, []).append(us)
    print(f"\n{path}")
    print(f"{'kernel':72s} {'grid':>14s} {'block':>10s} {'n':>4s} {'median us':>10s}")
    for (short, grid, block), vals in rows.items():
        print(f"{short:72s} {grid:>14s} {block:>10s} {len(vals):4d} {statistics.median(vals):10.2f}")


for p in sys.argv[1:]:
    summarise(p)
