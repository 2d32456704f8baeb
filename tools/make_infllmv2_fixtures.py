#!/usr/bin/env python3
"""Makes the InfLLM-V2 golden fixtures in tests/data/sparse/ (run where torch is installed: the GPU
machine has it; the engine never runs Python).

A small PyTorch reference of each variant's Hugging Face path, written to follow the upstream code's
structure rather than specula's (reference infllmv2.md section 0 overrides the rest):
  - the dense/sparse switch per forward call: kv_seq_len = past + new tokens; dense below dense_len;
  - the first sparse call compresses the whole key cache (C1: mean of 32 post-RoPE keys, stride 16;
    C2: 128 / 64) and keeps the tail of not-yet-compressed keys; every later (decode) call appends
    its key to the tails and emits a kernel when a tail holds 32 (128) keys, dropping 16 (64), as
    the HF cache layer does;
  - stage 1: per query head softmax over the visible C1 kernels (prefill: causal, kernel i visible
    to token t when 16i + 31 <= t; decode: every cached kernel), LSE exact over C1 (MiniCPM4) or
    over C2 (MiniCPM4.1, C2 kernel j visible when 64j + 127 <= t; no visible one -> scores 0, the
    NaN -> 0 of the HF wrapper), summed over the GQA group;
  - max-pooling over kernels 4b-1 .. 4b+3 into ceil(total/64) blocks, forced (+inf) / excluded
    (-inf) blocks per variant, top-k with ties to the lower block index (a stable descending sort:
    PyTorch's CPU top-k does not promise that), sort, future blocks dropped (> q_blk for 4.1,
    >= q_blk for MiniCPM4), and MiniCPM4's in-kernel window of local blocks;
  - attention over the attended blocks' rows, causal inside.
Everything in float32 over float32 weights, which is what specula's CPU backend computes.

Each fixture folder holds config.json (with a sparse_config scaled to the tiny model) and
model.safetensors; golden.json holds, per case, the prompt, the greedy continuation, the last
prompt row's logits and, for every forward call and layer, the attended blocks of every query and
KV head ("dense" for dense calls). The folder names carry the variant, as the engine's variant rule
reads them ("minicpm4_sparse", "minicpm4.1_sparse").
"""
import json
import math
import os
import shutil
import sys

import torch
from safetensors.torch import save_file

from minicpm_layout import minicpm_weight_shapes  # tools/, the script's folder

OUT = sys.argv[1] if len(sys.argv) > 1 else "tests/data/sparse"
VOCAB = 512
SPARSE = {"kernel_size": 32, "kernel_stride": 16, "init_blocks": 1, "block_size": 64, "window_size": 128,
          "topk": 2, "use_nope": False, "dense_len": 300}
CASES = [("sparse_prefill", 340, 40), ("switch_in_decode", 270, 60)]


def rms_norm(x, w, eps):
    return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def rotate_half(x):
    d = x.shape[-1] // 2
    return torch.cat((-x[..., d:], x[..., :d]), dim=-1)


class LayerCache:
    def __init__(self):
        self.k = None  # [nkv, L, hd] post-RoPE
        self.v = None
        self.c1 = None  # [nkv, n, hd]; None until the first sparse call
        self.c2 = None
        self.tail1 = None
        self.tail2 = None


def compress_all(k, size, stride):
    """calc_chunks_with_stride + mean: every complete window; returns kernels and the tail."""
    L = k.shape[1]
    n = (L - size) // stride + 1 if L >= size else 0
    kernels = torch.stack([k[:, stride * i:stride * i + size].mean(dim=1) for i in range(n)], dim=1) if n > 0 \
        else k.new_zeros((k.shape[0], 0, k.shape[2]))
    return kernels, k[:, n * stride:].clone()


def push_tail(kernels, tail, new_key, size, stride):
    tail = torch.cat([tail, new_key], dim=1)
    if tail.shape[1] >= size:
        kernels = torch.cat([kernels, tail[:, :size].mean(dim=1, keepdim=True)], dim=1)
        tail = tail[:, stride:]
    return kernels, tail


class InfLLMv2Reference:
    def __init__(self, cfg, w, variant):
        self.c, self.w, self.variant = cfg, w, variant
        self.hd = cfg["hidden_size"] // cfg["num_attention_heads"]
        self.inv_freq = 1.0 / (cfg["rope_theta"] ** (torch.arange(0, self.hd, 2, dtype=torch.float32) / self.hd))
        self.layers = [LayerCache() for _ in range(cfg["num_hidden_layers"])]
        self.past = 0
        self.calls = []  # per forward: {"positions": [...], "layers": [[kv][query] lists or "dense"]}

    def rope(self, x, positions):
        a = positions.float()[:, None] * self.inv_freq[None, :]
        emb = torch.cat((a, a), dim=-1)
        return x * emb.cos() + rotate_half(x) * emb.sin()

    def select(self, q, cache, positions, total, prefill):
        """Block lists [nkv][T] for queries q [nh, T, hd] at `positions`."""
        s = self.c["sparse_config"]
        nh, T, hd = q.shape
        nkv = cache.k.shape[0]
        G = nh // nkv
        scale = 1.0 / math.sqrt(hd)
        B, local = s["block_size"], s["window_size"] // s["block_size"]
        v41 = self.variant == "minicpm4.1"
        slots = s["topk"] + local if v41 else s["topk"]
        n1 = cache.c1.shape[1]
        n2 = cache.c2.shape[1] if v41 else 0
        out_len = (total + B - 1) // B
        lists = [[None] * T for _ in range(nkv)]
        for h in range(nkv):
            for t in range(T):
                p = int(positions[t])
                score = torch.zeros(n1)
                for g in range(G):
                    qv = q[h * G + g, t]
                    s1 = (cache.c1[h] @ qv) * scale if n1 > 0 else torch.zeros(0)
                    vis1 = torch.tensor([16 * i + 31 <= p for i in range(n1)], dtype=torch.bool) if prefill \
                        else torch.ones(n1, dtype=torch.bool)
                    if v41:
                        s2 = (cache.c2[h] @ qv) * scale if n2 > 0 else torch.zeros(0)
                        vis2 = torch.tensor([64 * j + 127 <= p for j in range(n2)], dtype=torch.bool) if prefill \
                            else torch.ones(n2, dtype=torch.bool)
                        if not bool(vis2.any()):
                            continue  # no LSE: this row's scores stay 0
                        lse = torch.logsumexp(s2[vis2], dim=0)
                    else:
                        if not bool(vis1.any()):
                            continue
                        lse = torch.logsumexp(s1[vis1], dim=0)
                    score += torch.where(vis1, torch.exp(s1 - lse), torch.zeros_like(s1))
                q_blk = p // B
                pooled = torch.zeros(out_len)
                for b in range(out_len):
                    lo, hi = max(0, 4 * b - 1), min(n1 - 1, 4 * b + 3)
                    if lo <= hi:
                        pooled[b] = score[lo:hi + 1].max()
                    if v41:
                        if b < s["init_blocks"] or (q_blk - local <= b <= q_blk):
                            pooled[b] = float("inf")
                    else:
                        if q_blk - local < b <= q_blk:
                            pooled[b] = float("-inf")
                        if b < s["init_blocks"]:
                            pooled[b] = float("inf")
                k = min(slots, out_len)
                order = torch.sort(pooled, descending=True, stable=True).indices[:k]
                chosen = sorted(int(b) for b in order)
                chosen = [b for b in chosen if (b <= q_blk if v41 else b < q_blk)]
                if not v41:
                    chosen = sorted(set(chosen) | set(range(max(0, q_blk - local + 1), q_blk + 1)))
                lists[h][t] = chosen
        return lists

    def forward(self, ids):
        c, w = self.c, self.w
        T = len(ids)
        nh, nkv, hd = c["num_attention_heads"], c["num_key_value_heads"], self.hd
        L = c["num_hidden_layers"]
        scale_res = c["scale_depth"] / math.sqrt(L)
        positions = torch.arange(self.past, self.past + T)
        total = self.past + T
        dense_len = c["sparse_config"]["dense_len"]
        sparse = not (total < dense_len)
        prefill = T > 1
        call = {"positions": positions.tolist(), "layers": []}
        x = c["scale_emb"] * w["model.embed_tokens.weight"][torch.tensor(ids)]
        for i in range(L):
            p = f"model.layers.{i}."
            cache = self.layers[i]
            h = rms_norm(x, w[p + "input_layernorm.weight"], c["rms_norm_eps"])
            q = (h @ w[p + "self_attn.q_proj.weight"].T).view(T, nh, hd).transpose(0, 1)
            k = (h @ w[p + "self_attn.k_proj.weight"].T).view(T, nkv, hd).transpose(0, 1)
            v = (h @ w[p + "self_attn.v_proj.weight"].T).view(T, nkv, hd).transpose(0, 1)
            q, k = self.rope(q, positions), self.rope(k, positions)
            cache.k = k if cache.k is None else torch.cat([cache.k, k], dim=1)
            cache.v = v if cache.v is None else torch.cat([cache.v, v], dim=1)
            G = nh // nkv
            rows = torch.arange(total)
            if not sparse:
                call["layers"].append("dense")
                visible = [[rows <= int(pos) for pos in positions] for _ in range(nkv)]
            else:
                if cache.c1 is None:  # the first sparse call compresses the whole cache
                    cache.c1, cache.tail1 = compress_all(cache.k, 32, 16)
                    cache.c2, cache.tail2 = compress_all(cache.k, 128, 64)
                else:
                    assert T == 1, "the HF path appends one token at a time after the first sparse call"
                    cache.c1, cache.tail1 = push_tail(cache.c1, cache.tail1, k, 32, 16)
                    cache.c2, cache.tail2 = push_tail(cache.c2, cache.tail2, k, 128, 64)
                lists = self.select(q, cache, positions, total, prefill)
                call["layers"].append(lists)
                B = c["sparse_config"]["block_size"]
                visible = [[(rows <= int(positions[t])) & torch.isin(rows // B, torch.tensor(lists[hh][t], dtype=torch.long))
                            for t in range(T)] for hh in range(nkv)]
            o = torch.zeros(nh, T, hd)
            for head in range(nh):
                kv = head // G
                for t in range(T):
                    m = visible[kv][t]
                    att = torch.softmax((cache.k[kv, m] @ q[head, t]) / math.sqrt(hd), dim=0)
                    o[head, t] = att @ cache.v[kv, m]
            o = o.transpose(0, 1).reshape(T, nh * hd) @ w[p + "self_attn.o_proj.weight"].T
            x = x + scale_res * o
            h = rms_norm(x, w[p + "post_attention_layernorm.weight"], c["rms_norm_eps"])
            m = torch.nn.functional.silu(h @ w[p + "mlp.gate_proj.weight"].T) * (h @ w[p + "mlp.up_proj.weight"].T)
            x = x + scale_res * (m @ w[p + "mlp.down_proj.weight"].T)
        self.past = total
        self.calls.append(call)
        x = rms_norm(x, w["model.norm.weight"], c["rms_norm_eps"]) / (c["hidden_size"] / c["dim_model_base"])
        return x @ w["lm_head.weight"].T


def make_fixture(name, variant, H, nh, nkv, seed):
    d = os.path.join(OUT, name)
    if os.path.exists(d):
        shutil.rmtree(d)
    os.makedirs(d)
    I, L = 96, 2
    hd = H // nh
    cfg = {
        "architectures": ["MiniCPMForCausalLM"],
        "auto_map": {"AutoConfig": "configuration_minicpm.MiniCPMConfig",
                     "AutoModelForCausalLM": "modeling_minicpm.MiniCPMForCausalLM"},
        "model_type": "minicpm", "hidden_act": "silu", "hidden_size": H, "intermediate_size": I,
        "num_hidden_layers": L, "num_attention_heads": nh, "num_key_value_heads": nkv,
        "max_position_embeddings": 1024, "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "rope_scaling": None,
        "scale_emb": 12, "scale_depth": 1.4, "dim_model_base": 16, "tie_word_embeddings": False,
        "vocab_size": VOCAB, "bos_token_id": 1, "eos_token_id": [2], "torch_dtype": "float32",
        "sparse_config": SPARSE,
    }
    g = torch.Generator().manual_seed(seed)
    shapes = minicpm_weight_shapes(VOCAB, H, nh, nkv, hd, I, L)
    w = {}
    for k, shp in shapes.items():
        if len(shp) == 1:
            w[k] = 1.0 + 0.2 * torch.randn(shp, generator=g)
        elif "embed" in k:
            w[k] = 0.05 * torch.randn(shp, generator=g)
        elif "k_proj" in k or "q_proj" in k:
            w[k] = 0.4 * torch.randn(shp, generator=g)  # peaked attention, so the selection matters
        else:
            w[k] = 0.15 * torch.randn(shp, generator=g)
    save_file(w, os.path.join(d, "model.safetensors"), metadata={"format": "pt"})
    json.dump(cfg, open(os.path.join(d, "config.json"), "w"), indent=2)

    golden = {"note": f"tools/make_infllmv2_fixtures.py, the {variant} HF path in fp32", "variant": variant,
              "cases": []}
    for case, prompt_len, new_tokens in CASES:
        pg = torch.Generator().manual_seed(seed * 10 + prompt_len)
        prompt = [1] + torch.randint(3, VOCAB, (prompt_len - 1,), generator=pg).tolist()
        ref = InfLLMv2Reference(cfg, w, variant)
        with torch.no_grad():
            logits = ref.forward(prompt)
            last = logits[-1].clone()
            tokens = []
            nxt = int(torch.argmax(logits[-1]))
            for _ in range(new_tokens):
                tokens.append(nxt)
                nxt = int(torch.argmax(ref.forward([nxt])[-1]))
        golden["cases"].append({"name": case, "prompt": prompt, "greedy_tokens": tokens,
                                "prompt_last_logits": [round(float(v), 6) for v in last],
                                "calls": ref.calls})
        sparse_calls = sum(1 for call in ref.calls if call["layers"][0] != "dense")
        print(f"{name} {case}: {len(tokens)} tokens, {sparse_calls}/{len(ref.calls)} sparse calls")
    json.dump(golden, open(os.path.join(d, "golden.json"), "w"), separators=(",", ":"))


if __name__ == "__main__":
    torch.manual_seed(0)
    os.makedirs(OUT, exist_ok=True)
    make_fixture("minicpm4_sparse", "minicpm4", H=64, nh=8, nkv=2, seed=11)       # GQA group 4
    make_fixture("minicpm4.1_sparse", "minicpm4.1", H=128, nh=16, nkv=1, seed=12)  # GQA group 16
