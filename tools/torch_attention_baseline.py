#!/usr/bin/env python3
"""PyTorch SDPA (flash backend) attention times per layer, the outside reference for
bench/results/sparse.json (used by scripts/device-check.sh stage `sparse`; never by the engine).

For each shape (MiniCPM4-8B: 32 query heads, 2 KV heads; Llama-3-8B: 32/8; head_dim 128, bf16) and
each length N in --lengths:
  prefill: causal attention of N queries over N keys (one layer, the whole prompt at once);
  decode:  one query over N cached keys.
GQA goes to the flash kernel natively (enable_gqa=True) when this PyTorch has it; otherwise K/V
are expanded to the query heads beforehand (outside the timed region), which the output says.
Writes one JSON object per measurement (metric, value, unit) to --json.
"""
import argparse
import json
import time

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

SHAPES = {"minicpm4-8b": (32, 2, 128), "llama3-8b": (32, 8, 128)}


def time_ms(fn, repeats):
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    times.sort()
    return times[len(times) // 2]


@torch.inference_mode()
def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lengths", default="16384,32768,65536,131072")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json", default="")
    args = ap.parse_args()
    dev = torch.device("cuda")
    rows = []
    for name, (nh, nkv, d) in SHAPES.items():
        for n in [int(x) for x in args.lengths.split(",")]:
            k = torch.randn(1, nkv, n, d, device=dev, dtype=torch.bfloat16)
            v = torch.randn_like(k)
            gqa = True
            try:
                with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
                    F.scaled_dot_product_attention(torch.randn(1, nh, 1, d, device=dev, dtype=torch.bfloat16), k, v,
                                                   enable_gqa=True)
            except (TypeError, RuntimeError):
                gqa = False
            kk, vv = (k, v) if gqa else (k.repeat_interleave(nh // nkv, 1), v.repeat_interleave(nh // nkv, 1))
            extra = {"enable_gqa": True} if gqa else {}
            q_dec = torch.randn(1, nh, 1, d, device=dev, dtype=torch.bfloat16)
            with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
                dec = time_ms(lambda: F.scaled_dot_product_attention(q_dec, kk, vv, **extra), args.repeats)
                q_pre = torch.randn(1, nh, n, d, device=dev, dtype=torch.bfloat16)
                pre = time_ms(lambda: F.scaled_dot_product_attention(q_pre, kk, vv, is_causal=True, **extra),
                              max(2, args.repeats // 2))
            kv_bytes = 2 * nkv * n * d * 2
            note = "" if gqa else " (K/V expanded to the query heads: no enable_gqa in this PyTorch)"
            rows += [
                {"metric": f"sdpa_flash_decode_ms_{name}_{n}", "value": dec, "unit": "ms", "note": note.strip()},
                {"metric": f"sdpa_flash_decode_kv_gb_per_s_{name}_{n}", "value": kv_bytes / dec / 1e6, "unit": "GB/s"},
                {"metric": f"sdpa_flash_prefill_ms_{name}_{n}", "value": pre, "unit": "ms", "note": note.strip()},
            ]
            print(f"{name} N={n}: decode {dec:.3f} ms ({kv_bytes / dec / 1e6:.0f} GB/s of KV), "
                  f"prefill {pre:.1f} ms{note}", flush=True)
            del k, v, kk, vv, q_pre
            torch.cuda.empty_cache()
    meta = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__,
            "date": time.strftime("%Y-%m-%d")}
    if args.json:
        json.dump({"meta": meta, "results": rows}, open(args.json, "w"), indent=1)


if __name__ == "__main__":
    main()
