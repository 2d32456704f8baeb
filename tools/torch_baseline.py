#!/usr/bin/env python3
"""PyTorch + transformers baseline for `specula bench`, on the same GPU in the same run (used by
scripts/device-check.sh; never by the engine).

Builds LlamaForCausalLM from a config with the Llama-3-8B shape (random bf16 weights, made on the
GPU), then measures:
  prefill: one forward over a random prompt of --prefill tokens (median of --repeats);
  decode:  after a prefill of C tokens, --decode-steps greedy steps through the model's KV cache
           (a plain loop, batch 1), for each C in --contexts;
eager always; with --compile also torch.compile: prefill in the default mode (one static prompt
shape) and decode in mode="reduce-overhead" (CUDA graphs) over a StaticCache step, each reported
as failed, not hidden, if it does not work.
Writes one JSON object per measurement (metric, value, unit) to --json.
"""
import argparse
import json
import time

import torch
import transformers


def config_8b():
    return transformers.LlamaConfig(
        vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
        num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=131072,
        rms_norm_eps=1e-5, rope_theta=500000.0, tie_word_embeddings=False)


def sync_time(fn):
    torch.cuda.synchronize()
    t = time.perf_counter()
    out = fn()
    torch.cuda.synchronize()
    return time.perf_counter() - t, out


def median(xs):
    xs = sorted(xs)
    return xs[len(xs) // 2]


@torch.inference_mode()
def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--prefill", type=int, default=4096)
    ap.add_argument("--contexts", type=str, default="512,8192")
    ap.add_argument("--decode-steps", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--json", type=str, required=True)
    a = ap.parse_args()
    results = []

    # Written after every measurement, so a run cut short (torch.compile can take minutes) keeps
    # what it measured.
    def save(rows):
        tagged = [dict(r, device=dev, torch=torch.__version__, transformers=transformers.__version__) for r in rows]
        with open(a.json, "w") as f:
            json.dump(tagged, f, indent=1)
    torch.manual_seed(0)
    cfg = config_8b()
    with torch.device("cuda"):
        model = transformers.LlamaForCausalLM(cfg).to(torch.bfloat16).eval()
    dev = torch.cuda.get_device_name()
    params = sum(p.numel() for p in model.parameters())
    print(f"torch {torch.__version__} transformers {transformers.__version__} on {dev}: {params/1e9:.2f}B params",
          flush=True)

    # Prefill.
    ids = torch.randint(0, cfg.vocab_size, (1, a.prefill), device="cuda")
    model(input_ids=ids, logits_to_keep=1)  # warm-up
    times = [sync_time(lambda: model(input_ids=ids, logits_to_keep=1))[0] for _ in range(a.repeats)]
    results.append({"metric": f"torch_prefill_tokens_per_s_{a.prefill}", "value": a.prefill / median(times),
                    "unit": "tok/s"})
    save(results)

    # Decode: eager loop over the DynamicCache.
    for ctx in [int(c) for c in a.contexts.split(",")]:
        prompt = torch.randint(0, cfg.vocab_size, (1, ctx), device="cuda")
        def run():
            out = model(input_ids=prompt, use_cache=True, logits_to_keep=1)
            cache = out.past_key_values
            tok = out.logits[:, -1:].argmax(-1)
            torch.cuda.synchronize()
            t = time.perf_counter()
            for _ in range(a.decode_steps):
                out = model(input_ids=tok, past_key_values=cache, use_cache=True)
                cache = out.past_key_values
                tok = out.logits[:, -1:].argmax(-1)
                tok.item()  # the engine also reads one token per step
            return time.perf_counter() - t
        run()  # warm-up
        t = median([run() for _ in range(a.repeats)])
        results.append({"metric": f"torch_decode_tokens_per_s_ctx{ctx}", "value": a.decode_steps / t, "unit": "tok/s"})
        print(results[-1], flush=True)
        save(results)
    if a.compile:
        try:  # prefill: default mode, one static prompt shape
            compiled_prefill = torch.compile(model, dynamic=False)
            t0 = time.perf_counter()
            for _ in range(2):  # compile + warm-up
                compiled_prefill(input_ids=ids, logits_to_keep=1)
            torch.cuda.synchronize()
            print(f"torch.compile prefill: compiled in {time.perf_counter() - t0:.0f} s", flush=True)
            times = [sync_time(lambda: compiled_prefill(input_ids=ids, logits_to_keep=1))[0] for _ in range(a.repeats)]
            results.append({"metric": f"torch_compile_prefill_tokens_per_s_{a.prefill}",
                            "value": a.prefill / median(times), "unit": "tok/s"})
            print(results[-1], flush=True)
            save(results)
        except Exception as e:
            print(f"torch.compile prefill failed: {type(e).__name__}: {e}", flush=True)
            results.append({"metric": "torch_compile_prefill_failed", "value": 1, "unit": str(type(e).__name__)})
        try:
            compiled = torch.compile(model, mode="reduce-overhead", fullgraph=False)
            for ctx in [int(c) for c in a.contexts.split(",")]:
                cache = transformers.StaticCache(config=cfg, max_cache_len=ctx + a.decode_steps + 8)
                prompt = torch.randint(0, cfg.vocab_size, (1, ctx), device="cuda")
                out = model(input_ids=prompt, past_key_values=cache, use_cache=True, logits_to_keep=1)
                tok = out.logits[:, -1:].argmax(-1)
                pos = ctx
                def step(tok, pos):
                    out = compiled(input_ids=tok, past_key_values=cache, use_cache=True,
                                   cache_position=torch.tensor([pos], device="cuda"))
                    return out.logits[:, -1:].argmax(-1)
                for _ in range(3):  # compile + warm-up
                    tok = step(tok, pos)
                    pos += 1
                steps = min(a.decode_steps, cache.max_cache_len - pos - 1)
                torch.cuda.synchronize()
                t = time.perf_counter()
                for _ in range(steps):
                    tok = step(tok, pos)
                    tok.item()
                    pos += 1
                t = time.perf_counter() - t
                results.append({"metric": f"torch_compile_decode_tokens_per_s_ctx{ctx}", "value": steps / t,
                                "unit": "tok/s"})
                print(results[-1], flush=True)
                save(results)
        except Exception as e:  # report, do not hide: the table says compile failed
            print(f"torch.compile failed: {type(e).__name__}: {e}", flush=True)
            results.append({"metric": "torch_compile_failed", "value": 1, "unit": str(type(e).__name__)})
    save(results)


if __name__ == "__main__":
    main()
