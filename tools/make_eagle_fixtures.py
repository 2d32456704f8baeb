#!/usr/bin/env python3
"""Makes the EAGLE-2 / FR-Spec fixtures in tests/data/eagle/ and their golden draft trees.

Regenerate (on a machine with torch; transformers and safetensors are used, when present, only
to cross-check the reference against Hugging Face and to re-read the written files):

    python tools/make_eagle_fixtures.py --out tests/data/eagle

Everything is seeded (torch.Generator per tensor group). The targets come out bit-identical under
other torch versions; the heads' fc is a least-squares fit, so another torch/BLAS may round a few
bf16 weights differently (torch 1.13 vs 2.11 gave the same trees and tokens, scores within 5e-6).
The goldens are computed in float32 on the CPU from the files as written (bf16 weights upcast
exactly). The committed files come from the GPU machine's run (torch 2.11, transformers 5.17).
tests/data/eagle/README.md describes every file and every convention; the short version:

  * target_llama3/      tiny Llama-3-layout LlamaForCausalLM (untied head, rope_theta 500000)
  * target_minicpm4/    tiny MiniCPM4 (muP scales, default RoPE, no LongRoPE), untied
  * head_llama_bin/     EAGLE-1/2 head, pytorch_model.bin (torch zip), no fc.bias, carries embed_tokens.weight
  * head_llama_bias_safetensors/  same layout, safetensors, fc.bias, rope_scaling linear x2 + rope_theta
                        (EAGLE's _init_rope then ignores rope_theta: base 10000, positions / 2)
  * head_qwen2_qkvbias/ EAGLE head with q/k/v biases (qkv_bias) for tests/data/models/qwen2_bias_bin
  * head_minicpm4/      the CPM.cu MiniCPM4 EAGLE layout (input_norm1/2, layer-0 input norm, muP residual scale)
  * bad_*/              malformed heads; freq_*.pt FR-Spec lists (good and malformed); hostile.pt
  * golden_trees.json   EAGLE-2 draft trees, greedy verification, 3 full cycles, plain greedy tokens

The reference below is deliberately plain (no KV cache on the target: every verification pass
recomputes the whole sequence with a tree mask), so it reads as the specification:

  draft row p (position p) consumes (f_p, e(t_{p+1})), f_p = the target's last hidden state after
  its final norm; the first drafting after prefill runs the draft over the whole prompt (rows
  0..L-1, the last row pairing f_{L-1} with the root token). Tree level d (d = 1: the root's
  children; depth = the number of levels, HF EAGLE's `depth` + 1) runs at draft position
  root_position + d - 1, each node attending to the draft's
  committed KV plus its own expanded ancestors and itself; level-1 nodes take the root row's draft
  output as their f, deeper nodes their parent's draft output. Scores are cumulative fp32
  log-probabilities; every top-k breaks ties toward the lower index. The tree is the root plus the
  top (tree_size - 1) candidates by score (ties: lower candidate index), sorted by candidate index.
  Verification is greedy: a child is accepted iff its token is the target's argmax at its parent.
"""
import argparse
import hashlib
import json
import math
import os
import shutil
import struct
import sys
import zipfile

import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VOCAB = 512
GREEDY_TOKENS = 32  # plain greedy tokens recorded per prompt (>= 24, and >= what 3 cycles can emit)
CYCLES = 3
PROMPT_LENGTHS = (5, 17, 40)
SETTINGS = ((4, 3, 16), (10, 6, 60))  # (top_k, depth = draft levels below the root, tree_size incl. root)
FR_SIZE = 128


# ------------------------------------------------------------------------------------------ files
def bf16(t):
    """Rounds to bf16 and back, so the fp32 reference sees exactly what the checkpoint stores."""
    return t.to(torch.bfloat16).to(torch.float32)


_ST_DTYPES = {torch.bfloat16: "BF16", torch.float32: "F32", torch.float16: "F16", torch.int64: "I64", torch.int32: "I32"}


def save_safetensors(tensors, path):
    """Minimal safetensors writer (keys sorted, 8-byte aligned header), no dependency needed."""
    header, blobs, offset = {"__metadata__": {"format": "pt"}}, [], 0
    for name in sorted(tensors):
        t = tensors[name].contiguous()
        raw = t.reshape(-1).view(torch.uint8).numpy().tobytes()  # raw little-endian element bytes
        header[name] = {"dtype": _ST_DTYPES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))


def load_safetensors(path):
    with open(path, "rb") as f:
        data = f.read()
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + n])
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        a, b = info["data_offsets"]
        raw = bytearray(data[8 + n + a:8 + n + b])
        if info["dtype"] == "BF16":
            t = torch.frombuffer(raw, dtype=torch.int16).view(torch.bfloat16)
        else:
            t = torch.frombuffer(raw, dtype={"F32": torch.float32, "F16": torch.float16}[info["dtype"]])
        out[name] = t.reshape(info["shape"]).clone()
    return out


def load_weights(d):
    """fp32 copies of a checkpoint folder's tensors (safetensors or pytorch_model.bin)."""
    st = os.path.join(d, "model.safetensors")
    if os.path.exists(st):
        w = load_safetensors(st)
        try:  # cross-check the minimal reader against the real one where it exists
            from safetensors.torch import load_file
            ref = load_file(st)
            assert set(ref) == set(w) and all(torch.equal(ref[k], w[k]) for k in w), st
        except ImportError:
            pass
    else:
        w = torch.load(os.path.join(d, "pytorch_model.bin"), map_location="cpu", weights_only=True)
    return {k: v.float() for k, v in w.items()}


def write_json(obj, path):
    """JSON with every list of scalars (and every small flat object) on one line: readable, small."""
    def dump(o, ind):
        sp = " " * ind
        if isinstance(o, dict):
            if all(not isinstance(x, (dict, list)) for x in o.values()) and len(o) <= 6:
                return json.dumps(o, separators=(", ", ": "))
            return "{\n" + ",\n".join(f"{sp} {json.dumps(k)}: {dump(v, ind + 1)}" for k, v in o.items()) + f"\n{sp}}}"
        if isinstance(o, list):
            if all(not isinstance(x, (dict, list)) for x in o):
                return json.dumps(o, separators=(",", ":"))
            return "[\n" + ",\n".join(f"{sp} {dump(x, ind + 1)}" for x in o) + f"\n{sp}]"
        return json.dumps(o)
    with open(path, "w") as f:
        f.write(dump(obj, 0) + "\n")


def f32(x):
    """The shortest decimal that reads back as the same float32 (keeps the JSON small)."""
    x = struct.unpack("<f", struct.pack("<f", float(x)))[0]
    if math.isinf(x):
        return None
    for digits in range(4, 10):
        s = float(f"{x:.{digits}g}")
        if struct.unpack("<f", struct.pack("<f", s))[0] == x:
            return s
    return x


def sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def fresh(d):
    if os.path.exists(d):
        shutil.rmtree(d)
    os.makedirs(d)


# ------------------------------------------------------------------------------------------- math
def rms_norm(x, w, eps):
    return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def rotate_half(x):
    d = x.shape[-1] // 2
    return torch.cat((-x[..., d:], x[..., :d]), dim=-1)


def rope(x, positions, inv_freq, position_divisor=1.0, mscale=1.0):
    """x [T, heads, hd]; HF's rotate-half RoPE with angle (p / position_divisor) * inv_freq[i]."""
    p = torch.tensor(positions, dtype=torch.float32)
    if position_divisor != 1.0:
        p = p / position_divisor  # LlamaLinearScalingRotaryEmbedding: t = t / scaling_factor
    a = p[:, None] * inv_freq[None, :]
    emb = torch.cat((a, a), dim=-1)
    cos, sin = (emb.cos() * mscale)[:, None, :], (emb.sin() * mscale)[:, None, :]
    return x * cos + rotate_half(x) * sin


def default_inv_freq(theta, hd):
    return 1.0 / (theta ** (torch.arange(0, hd, 2, dtype=torch.int64).float() / hd))


def attention(q, k, v, allowed):
    """q [Tq, nh, hd], k/v [Tk, nkv, hd], allowed [Tq, Tk] bool -> [Tq, nh*hd] (GQA: head h uses kv h // rep)."""
    nh, nkv, hd = q.shape[1], k.shape[1], q.shape[2]
    k = k.repeat_interleave(nh // nkv, dim=1)
    v = v.repeat_interleave(nh // nkv, dim=1)
    s = torch.einsum("qhd,khd->hqk", q, k) / math.sqrt(hd)
    s = s.masked_fill(~allowed[None], float("-inf"))
    return torch.einsum("hqk,khd->qhd", torch.softmax(s, dim=-1), v).reshape(q.shape[0], nh * hd)


def swiglu(h, w, p):
    return (torch.nn.functional.silu(h @ w[p + "mlp.gate_proj.weight"].T) * (h @ w[p + "mlp.up_proj.weight"].T)) \
        @ w[p + "mlp.down_proj.weight"].T


def linear(x, w, name):
    y = x @ w[name + ".weight"].T
    b = w.get(name + ".bias")
    return y if b is None else y + b


def causal(n):
    return torch.ones(n, n, dtype=torch.bool).tril()


def topk_desc(values, k):
    """Indices of the k largest values, ties toward the lower index (a stable sort of -values)."""
    return torch.sort(-values, stable=True).indices[:k]


def argmax_first(values):
    return int(topk_desc(values, 1)[0])


def cut_gap(values, k):
    """How far the k-th best value is above the (k+1)-th (inf when there is no (k+1)-th)."""
    if values.numel() <= k:
        return float("inf")
    s = torch.sort(values, descending=True).values
    return float(s[k - 1] - s[k])


# ---------------------------------------------------------------------------------------- targets
class Target:
    """Llama / Qwen2 / MiniCPM4 decoder in fp32, no KV cache: forward() recomputes the sequence.

    forward(tokens, positions, allowed) -> (logits [T, V], feature [T, H]); feature is the output
    of the final RMSNorm (for MiniCPM4 before the muP division by hidden_size / dim_model_base),
    which is what EAGLE-1/2 and the MiniCPM4 head consume."""

    def __init__(self, cfg, w):
        self.cfg, self.w = cfg, w
        self.minicpm = "scale_emb" in cfg
        self.H, self.nh, self.nkv = cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"]
        self.hd = cfg.get("head_dim") or self.H // self.nh
        self.L, self.eps = cfg["num_hidden_layers"], cfg["rms_norm_eps"]
        self.inv_freq = default_inv_freq(cfg.get("rope_theta", 10000.0), self.hd)
        self.mscale = 1.0
        rs = cfg.get("rope_scaling")
        if rs:  # only MiniCPM LongRoPE is needed here (to check this class against tests/data/models)
            assert rs.get("rope_type", rs.get("type")) == "longrope", rs
            orig, maxpos = rs["original_max_position_embeddings"], cfg["max_position_embeddings"]
            ext = torch.tensor(rs["long_factor"] if maxpos > orig else rs["short_factor"], dtype=torch.float32)
            self.inv_freq = self.inv_freq / ext
            self.mscale = math.sqrt(1 + math.log(maxpos / orig) / math.log(orig))
        self.scale_emb = cfg["scale_emb"] if self.minicpm else 1.0
        self.res_scale = cfg["scale_depth"] / math.sqrt(self.L) if self.minicpm else 1.0
        self.logit_div = cfg["hidden_size"] / cfg["dim_model_base"] if self.minicpm else 1.0
        self.embed_w = w["model.embed_tokens.weight"]
        self.lm_head = self.embed_w if cfg.get("tie_word_embeddings") else w["lm_head.weight"]

    def embed(self, tokens):
        """The embedding EAGLE heads consume too (MiniCPM4: times scale_emb)."""
        return self.scale_emb * self.embed_w[torch.tensor(tokens)]

    def forward(self, tokens, positions, allowed):
        w, T = self.w, len(tokens)
        x = self.embed(tokens)
        for i in range(self.L):
            p = f"model.layers.{i}."
            h = rms_norm(x, w[p + "input_layernorm.weight"], self.eps)
            q = linear(h, w, p + "self_attn.q_proj").view(T, self.nh, self.hd)
            k = linear(h, w, p + "self_attn.k_proj").view(T, self.nkv, self.hd)
            v = linear(h, w, p + "self_attn.v_proj").view(T, self.nkv, self.hd)
            q = rope(q, positions, self.inv_freq, mscale=self.mscale)
            k = rope(k, positions, self.inv_freq, mscale=self.mscale)
            x = x + self.res_scale * (attention(q, k, v, allowed) @ w[p + "self_attn.o_proj.weight"].T)
            h = rms_norm(x, w[p + "post_attention_layernorm.weight"], self.eps)
            x = x + self.res_scale * swiglu(h, w, p)
        feature = rms_norm(x, w["model.norm.weight"], self.eps)
        return (feature / self.logit_div) @ self.lm_head.T, feature

    def greedy(self, prompt, n):
        ids, margins = list(prompt), []
        for _ in range(n):
            logits = self.forward(ids, list(range(len(ids))), causal(len(ids)))[0][-1]
            margins.append(cut_gap(logits, 1))
            ids.append(argmax_first(logits))
        return ids[len(prompt):], min(margins)


# ------------------------------------------------------------------------------------ draft heads
class DraftHead:
    """An EAGLE-1/2 head (layout "eagle") or CPM.cu's MiniCPM4 head (layout "minicpm4").

    step(features, tokens, positions, past_k, past_v, allowed) runs rows through the one layer;
    K/V of the new rows are returned (post-RoPE) so the caller owns the draft KV cache."""

    def __init__(self, cfg, w, target, layout):
        self.cfg, self.w, self.t, self.layout = cfg, w, target, layout
        self.H, self.nh, self.nkv = cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"]
        self.hd = cfg.get("head_dim") or self.H // self.nh
        self.eps = cfg["rms_norm_eps"]
        if layout == "eagle":
            # SafeAILab/EAGLE cnets1.py _init_rope: no rope_scaling -> base = rope_theta (10000 when the
            # key is absent); rope_scaling linear -> LlamaLinearScalingRotaryEmbedding WITHOUT base, so
            # the base is 10000 whatever rope_theta says, and positions are divided by the factor.
            rs = cfg.get("rope_scaling")
            if rs is None:
                self.theta, self.pos_div = cfg.get("rope_theta", 10000.0), 1.0
            else:
                assert rs.get("type", rs.get("rope_type")) == "linear", rs
                self.theta, self.pos_div = 10000.0, float(rs["factor"])
            self.res_scale = 1.0
        else:
            # CPM.cu shares the base model's rotary table with the head (default RoPE here) and scales
            # both residual branches by scale_depth / sqrt(num_layers_of_the_BASE + 1).
            self.theta, self.pos_div = target.cfg.get("rope_theta", 10000.0), 1.0
            self.res_scale = target.cfg["scale_depth"] / math.sqrt(target.L + 1)
        self.inv_freq = default_inv_freq(self.theta, self.hd)

    def step(self, features, tokens, positions, past_k, past_v, allowed):
        w, T, H = self.w, len(tokens), self.H
        e = self.t.embed(tokens)
        fc = w["fc.weight"]
        if self.layout == "eagle":
            x = torch.cat((e, features), dim=-1) @ fc.T  # embedding first, then the feature
        else:
            x = rms_norm(e, w["input_norm1.weight"], self.eps) @ fc[:, :H].T \
                + rms_norm(features, w["input_norm2.weight"], self.eps) @ fc[:, H:].T
        if "fc.bias" in w:
            x = x + w["fc.bias"]
        p = "layers.0."
        h = x if self.layout == "eagle" else rms_norm(x, w[p + "input_layernorm.weight"], self.eps)
        q = linear(h, w, p + "self_attn.q_proj").view(T, self.nh, self.hd)
        k = linear(h, w, p + "self_attn.k_proj").view(T, self.nkv, self.hd)
        v = linear(h, w, p + "self_attn.v_proj").view(T, self.nkv, self.hd)
        q = rope(q, positions, self.inv_freq, self.pos_div)
        k = rope(k, positions, self.inv_freq, self.pos_div)
        K, V = torch.cat((past_k, k)), torch.cat((past_v, v))
        x = x + self.res_scale * (attention(q, K, V, allowed) @ w[p + "self_attn.o_proj.weight"].T)
        y = x + self.res_scale * swiglu(rms_norm(x, w[p + "post_attention_layernorm.weight"], self.eps), w, p)
        return y, k, v

    def logit_divisor(self, fr_ids):
        # CPM.cu: the FR-Spec head is a plain Linear (no muP division); without FR-Spec the head
        # reuses the base LMHead, which divides by hidden_size / dim_model_base. EAGLE-1/2: none.
        return self.t.logit_div if (self.layout == "minicpm4" and fr_ids is None) else 1.0

    def logprobs(self, y, fr_ids):
        W = self.t.lm_head if fr_ids is None else self.t.lm_head[torch.tensor(fr_ids)]
        return torch.log_softmax((y @ W.T) / self.logit_divisor(fr_ids), dim=-1)

    def empty_kv(self):
        return torch.zeros(0, self.nkv, self.hd), torch.zeros(0, self.nkv, self.hd)


# ---------------------------------------------------------------------------- EAGLE-2 tree + verify
def build_tree(head, root_hidden, root, root_pos, sk, sv, top_k, depth, tree_size, fr_ids):
    """One EAGLE-2 dynamic tree (HF topK_genrate). depth = draft levels below the root (HF's
    `depth` argument is depth - 1). Returns the tree and the selection margins."""
    full = (lambda i: int(fr_ids[i])) if fr_ids is not None else (lambda i: int(i))
    gaps = {"row_topk": [], "frontier": [], "tree_cut": None}

    lp = head.logprobs(root_hidden[None], fr_ids)[0]
    gaps["row_topk"].append(cut_gap(lp, top_k))
    idx = topk_desc(lp, top_k)
    cand_tok = [full(i) for i in idx]
    cand_score = [lp[i] for i in idx]
    cand_parent = [-1] * top_k          # candidate index of the parent, -1 = the root
    cand_level = [1] * top_k
    f_tok, f_score = list(cand_tok), lp[idx].clone()
    f_hidden = root_hidden[None].repeat(top_k, 1)
    f_cidx = list(range(top_k))
    f_anc = torch.eye(top_k, dtype=torch.bool)   # rows: frontier nodes; cols: tree-level KV so far
    tk, tv = head.empty_kv()
    for level in range(2, depth + 1):
        # Run the frontier (level - 1 nodes) through the draft at draft position root_pos + level - 2.
        allowed = torch.cat((torch.ones(top_k, sk.shape[0], dtype=torch.bool), f_anc), dim=1)
        y, kn, vn = head.step(f_hidden, f_tok, [root_pos + level - 2] * top_k,
                              torch.cat((sk, tk)), torch.cat((sv, tv)), allowed)
        tk, tv = torch.cat((tk, kn)), torch.cat((tv, vn))
        lp = head.logprobs(y, fr_ids)
        rows = torch.stack([topk_desc(lp[r], top_k) for r in range(top_k)])
        for r in range(top_k):
            gaps["row_topk"].append(cut_gap(lp[r], top_k))
        cu = torch.gather(lp, 1, rows) + f_score[:, None]   # cumulative fp32 log-probability
        base = len(cand_tok)                                # = top_k + (level - 2) * top_k^2
        for r in range(top_k):
            for c in range(top_k):
                cand_tok.append(full(rows[r, c]))
                cand_score.append(cu[r, c])
                cand_parent.append(f_cidx[r])
                cand_level.append(level)
        flat = cu.reshape(-1)
        gaps["frontier"].append(cut_gap(flat, top_k))
        sel = topk_desc(flat, top_k)
        out_ids = sel // top_k
        f_tok = [cand_tok[base + int(s)] for s in sel]
        f_score = flat[sel].clone()
        f_hidden = y[out_ids]
        f_cidx = [base + int(s) for s in sel]
        f_anc = torch.cat((f_anc[out_ids], torch.eye(top_k, dtype=torch.bool)), dim=1)

    scores = torch.stack(cand_score)
    n = tree_size - 1
    gaps["tree_cut"] = cut_gap(scores, n)
    chosen = sorted(int(c) for c in topk_desc(scores, n))
    node_of = {c: i + 1 for i, c in enumerate(chosen)}
    tree = {"tokens": [int(root)], "parents": [-1], "depths": [0], "positions": [root_pos],
            "scores": [0.0], "candidate_index": [-1]}
    for c in chosen:
        parent = 0 if cand_parent[c] < 0 else node_of[cand_parent[c]]  # KeyError = parent not selected
        assert parent < node_of[c]
        tree["tokens"].append(cand_tok[c])
        tree["parents"].append(parent)
        tree["depths"].append(cand_level[c])
        tree["positions"].append(root_pos + cand_level[c])
        tree["scores"].append(f32(scores[c]))
        tree["candidate_index"].append(c)
    margins = {"row_topk": min(gaps["row_topk"]), "frontier": min(gaps["frontier"], default=float("inf")),
               "tree_cut": gaps["tree_cut"]}  # float("inf") (no competitor) is written as null
    return tree, margins


def tree_allowed(prefix_len, parents):
    """Verification mask: prefix causal; tree node i sees the whole prefix, its ancestors and itself."""
    n = len(parents)
    a = torch.zeros(prefix_len + n, prefix_len + n, dtype=torch.bool)
    a[:prefix_len, :prefix_len] = causal(prefix_len)
    a[prefix_len:, :prefix_len] = True
    for i in range(n):
        j = i
        while j >= 0:
            a[prefix_len + i, prefix_len + j] = True
            j = parents[j]
    return a


def speculate(target, head, prompt, top_k, depth, tree_size, fr_ids, cycles=CYCLES):
    """Prefill, then `cycles` draft/verify cycles; returns the per-cycle records."""
    L = len(prompt)
    logits, feats = target.forward(prompt, list(range(L)), causal(L))
    root = argmax_first(logits[-1])
    seq = list(prompt)                         # tokens the target has processed (positions 0..len-1)
    pend_f, pend_t, pend_start = feats, prompt[1:] + [root], 0   # draft rows still to run
    sk, sv = head.empty_kv()                   # the draft's committed KV (rows 0..len(seq)-1)
    out = []
    for _ in range(cycles):
        root_pos = len(seq)
        n = len(pend_t)
        allowed = torch.cat((torch.ones(n, sk.shape[0], dtype=torch.bool), causal(n)), dim=1)
        y, kn, vn = head.step(pend_f, pend_t, list(range(pend_start, pend_start + n)), sk, sv, allowed)
        sk, sv = torch.cat((sk, kn)), torch.cat((sv, vn))
        assert sk.shape[0] == root_pos
        tree, margins = build_tree(head, y[-1], root, root_pos, sk, sv, top_k, depth, tree_size, fr_ids)

        toks = seq + tree["tokens"]
        pos = list(range(len(seq))) + tree["positions"]
        tl, tf = target.forward(toks, pos, tree_allowed(len(seq), tree["parents"]))
        tl, tf = tl[len(seq):], tf[len(seq):]
        accepted, cur, tgt_gaps = [0], 0, []
        while True:
            tgt_gaps.append(cut_gap(tl[cur], 1))
            want = argmax_first(tl[cur])
            kids = [i for i in range(len(tree["parents"])) if tree["parents"][i] == cur and tree["tokens"][i] == want]
            if not kids:
                break
            cur = kids[0]  # siblings are distinct tokens: at most one matches
            accepted.append(cur)
        bonus = argmax_first(tl[cur])
        acc_tokens = [tree["tokens"][i] for i in accepted]
        margins["target_argmax"] = min(tgt_gaps)
        if out:  # later cycles: the tree's tokens and parents only (the first cycle has every field)
            tree = {"tokens": tree["tokens"], "parents": tree["parents"]}
        out.append({
            "root_token": root, "root_position": root_pos,
            "draft_rows": {"first_position": pend_start, "count": n},
            "tree": tree,
            "accepted_nodes": accepted, "accepted_tokens": acc_tokens[1:], "bonus_token": bonus,
            "emitted": acc_tokens[1:] + [bonus],
            "margins": {k: (None if math.isinf(v) else float(f"{v:.3g}")) for k, v in margins.items()},
        })
        seq += acc_tokens
        pend_f, pend_t, pend_start = tf[accepted], acc_tokens[1:] + [bonus], root_pos
        root = bonus
    return out


# ------------------------------------------------------------------------------------- generation
def gen(seed):
    return torch.Generator().manual_seed(seed)


def normal(shape, std, g):
    return torch.randn(shape, generator=g) * std


def norm_weight(n, g, spread=0.1):
    return 1.0 + spread * torch.randn(n, generator=g)


def layer_tensors(prefix, H, nh, nkv, hd, I, std, g, qkv_bias=False, input_norm=True):
    t = {}
    if input_norm:
        t[prefix + "input_layernorm.weight"] = norm_weight(H, g)
    t[prefix + "post_attention_layernorm.weight"] = norm_weight(H, g)
    t[prefix + "self_attn.q_proj.weight"] = normal((nh * hd, H), std, g)
    t[prefix + "self_attn.k_proj.weight"] = normal((nkv * hd, H), std, g)
    t[prefix + "self_attn.v_proj.weight"] = normal((nkv * hd, H), std, g)
    t[prefix + "self_attn.o_proj.weight"] = normal((H, nh * hd), std, g)
    if qkv_bias:
        t[prefix + "self_attn.q_proj.bias"] = normal((nh * hd,), 0.1, g)
        t[prefix + "self_attn.k_proj.bias"] = normal((nkv * hd,), 0.1, g)
        t[prefix + "self_attn.v_proj.bias"] = normal((nkv * hd,), 0.1, g)
    t[prefix + "mlp.gate_proj.weight"] = normal((I, H), std, g)
    t[prefix + "mlp.up_proj.weight"] = normal((I, H), std, g)
    t[prefix + "mlp.down_proj.weight"] = normal((H, I), std, g)
    return t


def save_bf16(tensors, path):
    save_safetensors({k: v.to(torch.bfloat16) for k, v in tensors.items()}, path)


# Sizes: hidden 64 / head_dim 16 as the other fixtures; intermediate 64 and a MiniCPM4 of hidden 32
# keep the whole folder (targets, 4 heads, 3 malformed heads) well under 1 MB.
LLAMA = dict(H=64, nh=4, nkv=2, hd=16, I=64, L=2)
MINICPM = dict(H=32, nh=2, nkv=1, hd=16, I=64, L=2)
TARGET_LAYER_STD = 0.03   # small next to the embeddings: the targets are near-bigram, so a head can imitate them
HEAD_LAYER_STD = 0.05
MINICPM_LAYER_STD = 0.05
MINICPM_EMBED_STD = 0.02   # x12 by scale_emb
MINICPM_HEAD_STD = 1.0     # /4 by the muP division


def make_llama_target(out):
    d = os.path.join(out, "target_llama3")
    fresh(d)
    c = LLAMA
    cfg = {
        "architectures": ["LlamaForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
        "bos_token_id": 1, "eos_token_id": [2, 3], "head_dim": c["hd"], "hidden_act": "silu",
        "hidden_size": c["H"], "initializer_range": 0.02, "intermediate_size": c["I"],
        "max_position_embeddings": 512, "mlp_bias": False, "model_type": "llama",
        "num_attention_heads": c["nh"], "num_hidden_layers": c["L"], "num_key_value_heads": c["nkv"],
        "pretraining_tp": 1, "rms_norm_eps": 1e-5, "rope_scaling": None, "rope_theta": 500000.0,
        "tie_word_embeddings": False, "torch_dtype": "bfloat16", "use_cache": True, "vocab_size": VOCAB,
    }
    g = gen(101)
    w = {"model.embed_tokens.weight": normal((VOCAB, c["H"]), 0.2, g),
         "lm_head.weight": normal((VOCAB, c["H"]), 0.3, g),
         "model.norm.weight": norm_weight(c["H"], g)}
    for i in range(c["L"]):
        w.update(layer_tensors(f"model.layers.{i}.", c["H"], c["nh"], c["nkv"], c["hd"], c["I"], TARGET_LAYER_STD, g))
    save_bf16(w, os.path.join(d, "model.safetensors"))
    json.dump(cfg, open(os.path.join(d, "config.json"), "w"), indent=2)
    return d


def make_minicpm4_target(out):
    d = os.path.join(out, "target_minicpm4")
    fresh(d)
    c = MINICPM
    cfg = {
        "architectures": ["MiniCPMForCausalLM"],
        "auto_map": {"AutoConfig": "configuration_minicpm.MiniCPMConfig",
                     "AutoModelForCausalLM": "modeling_minicpm.MiniCPMForCausalLM"},
        "model_type": "minicpm", "hidden_act": "silu", "hidden_size": c["H"], "intermediate_size": c["I"],
        "num_hidden_layers": c["L"], "num_attention_heads": c["nh"], "num_key_value_heads": c["nkv"],
        "max_position_embeddings": 512, "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "rope_scaling": None,
        "scale_emb": 12, "scale_depth": 1.4, "dim_model_base": 8, "tie_word_embeddings": False,
        "vocab_size": VOCAB, "bos_token_id": 1, "eos_token_id": [2, 73440 % VOCAB], "torch_dtype": "bfloat16",
    }
    g = gen(202)
    w = {"model.embed_tokens.weight": normal((VOCAB, c["H"]), MINICPM_EMBED_STD, g),
         "lm_head.weight": normal((VOCAB, c["H"]), MINICPM_HEAD_STD, g),
         "model.norm.weight": norm_weight(c["H"], g)}
    for i in range(c["L"]):
        w.update(layer_tensors(f"model.layers.{i}.", c["H"], c["nh"], c["nkv"], c["hd"], c["I"], MINICPM_LAYER_STD, g))
    save_bf16(w, os.path.join(d, "model.safetensors"))
    json.dump(cfg, open(os.path.join(d, "config.json"), "w"), indent=2)
    return d


def corpus(target, seed, n=24, prompt_len=6, new=24):
    """The target's greedy continuations of random prompts: the 'training data' of the heads and
    the FR-Spec frequency counts."""
    g = gen(seed)
    seqs = []
    for _ in range(n):
        prompt = torch.randint(3, VOCAB, (prompt_len,), generator=g).tolist()
        seqs.append(prompt + target.greedy(prompt, new)[0])
    return seqs


def eagle_head_tensors(target, seed, seqs, qkv_bias=False, fc_bias=False, minicpm=False, layer_std=HEAD_LAYER_STD):
    """Head weights: fc is fitted by ridge regression to EAGLE's training objective on the target's
    own continuations (predict the next feature f_{p+1} from [e(t_{p+1}), f_p]), the decoder layer
    is random (std layer_std) and perturbs that, so the draft agrees with the target often but not
    always. fc.bias is fitted as an intercept when present."""
    H, I = target.H, target.cfg["intermediate_size"]
    g = gen(seed)
    t = {}
    if minicpm:
        t["input_norm1.weight"] = norm_weight(H, g)
        t["input_norm2.weight"] = norm_weight(H, g)
    xs, ys = [], []
    for seq in seqs:
        f = target.forward(seq, list(range(len(seq))), causal(len(seq)))[1]
        e = target.embed(seq[1:])
        if minicpm:
            e = rms_norm(e, bf16(t["input_norm1.weight"]), target.eps)
            f_in = rms_norm(f[:-1], bf16(t["input_norm2.weight"]), target.eps)
        else:
            f_in = f[:-1]
        xs.append(torch.cat((e, f_in), dim=1))
        ys.append(f[1:])
    X, Y = torch.cat(xs).double(), torch.cat(ys).double()
    if fc_bias:
        X = torch.cat((X, torch.ones(X.shape[0], 1, dtype=X.dtype)), dim=1)
    A = X.T @ X
    A += 1e-2 * A.diagonal().mean() * torch.eye(A.shape[0], dtype=A.dtype)
    W = torch.linalg.solve(A, X.T @ Y).T.float()   # [H, 2H (+1)]
    t["fc.weight"] = W[:, :2 * H].contiguous()
    if fc_bias:
        t["fc.bias"] = W[:, 2 * H].contiguous()
    t.update(layer_tensors("layers.0.", H, target.nh, target.nkv, target.hd, I, layer_std, g,
                           qkv_bias=qkv_bias, input_norm=minicpm))
    return t


def head_config(target_cfg, **extra):
    cfg = {
        "architectures": ["LlamaForCausalLM"], "bias": False, "bos_token_id": 1, "eos_token_id": 2,
        "hidden_act": "silu", "hidden_size": target_cfg["hidden_size"], "initializer_range": 0.02,
        "intermediate_size": target_cfg["intermediate_size"], "max_position_embeddings": 2048,
        "model_type": "llama", "num_attention_heads": target_cfg["num_attention_heads"],
        "num_hidden_layers": 1, "num_key_value_heads": target_cfg["num_key_value_heads"],
        "pretraining_tp": 1, "rms_norm_eps": target_cfg["rms_norm_eps"], "rope_scaling": None,
        "rope_theta": target_cfg.get("rope_theta", 10000.0), "tie_word_embeddings": False,
        "torch_dtype": "bfloat16", "transformers_version": "4.28.1", "use_cache": True,
        "vocab_size": target_cfg["vocab_size"],
    }
    cfg.update(extra)
    return cfg


def write_head(out, name, cfg, tensors, as_bin=False):
    d = os.path.join(out, name)
    fresh(d)
    json.dump(cfg, open(os.path.join(d, "config.json"), "w"), indent=2)
    if as_bin:
        sd = {k: v.to(torch.bfloat16).contiguous().clone() for k, v in tensors.items()}
        torch.save(sd, os.path.join(d, "pytorch_model.bin"))
    else:
        save_bf16(tensors, os.path.join(d, "model.safetensors"))
    return d


def write_hostile(path):
    """A torch.save-shaped zip whose data.pkl calls os.system through GLOBAL + REDUCE. Written
    byte by byte; never unpickled here. The command only writes a marker file if run."""
    cmd = b"echo specula-hostile-pickle-was-executed > /tmp/specula_hostile_pickle_executed"
    pkl = (b"\x80\x02"                                   # PROTO 2
           b"cos\nsystem\n"                              # GLOBAL os.system
           b"X" + struct.pack("<I", len(cmd)) + cmd +    # BINUNICODE command
           b"\x85"                                       # TUPLE1
           b"R"                                          # REDUCE: os.system(command)
           b".")                                         # STOP
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as z:
        for name, data in (("hostile/data.pkl", pkl), ("hostile/byteorder", b"little"), ("hostile/version", b"3\n")):
            z.writestr(zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0)), data)  # stored, fixed date


def frequency_list(seqs, n):
    """FR-Spec-style list: ids by descending frequency in a small 'corpus' (the target's own greedy
    continuations; ties: lower id), BOS and the end tokens forced in, exactly n, no duplicates."""
    counts = torch.zeros(VOCAB, dtype=torch.int64)
    for seq in seqs:
        for t in seq:
            counts[t] += 1
    order = [int(i) for i in topk_desc(counts.float(), VOCAB)]
    must = [1, 2, 3]  # BOS and both end tokens of target_llama3 (reference s.0 and s.7 item 8)
    top = [i for i in order if i not in must][:n - len(must)]
    ids = sorted(top + must, key=order.index)  # still in descending-frequency order
    assert len(ids) == n and len(set(ids)) == n and all(0 <= i < VOCAB for i in ids)
    return ids


# ---------------------------------------------------------------------------------- cross-checks
def check_against_models_fixtures():
    """The Target class against the transformers-made goldens in tests/data/models."""
    for name in ("llama3_untied_sharded", "qwen2_bias_bin", "minicpm4_longrope"):
        d = os.path.join(REPO, "tests", "data", "models", name)
        if not os.path.isdir(d):
            continue
        if name == "llama3_untied_sharded":
            w = {}
            for f in sorted(os.listdir(d)):
                if f.endswith(".safetensors"):
                    w.update({k: v.float() for k, v in load_safetensors(os.path.join(d, f)).items()})
        else:
            w = load_weights(d)
        cfg = json.load(open(os.path.join(d, "config.json")))
        golden = json.load(open(os.path.join(d, "golden.json")))
        t = Target(cfg, w)
        ids = golden["prompt"]
        logits = t.forward(ids, list(range(len(ids))), causal(len(ids)))[0]
        ref = torch.frombuffer(bytearray(open(os.path.join(d, "golden_logits.f32"), "rb").read()),
                               dtype=torch.float32).reshape(logits.shape)
        err = float((logits - ref).abs().max())
        toks, _ = t.greedy(ids, len(golden["greedy_tokens"]))
        print(f"check {name}: max |logit diff| {err:.2e}, greedy {'ok' if toks == golden['greedy_tokens'] else 'DIFFERS'}")
        assert err < 1e-3 and toks == golden["greedy_tokens"], name


def check_against_transformers(target_dirs, prompt):
    try:
        import transformers
    except ImportError:
        print("transformers not installed: HF cross-check skipped")
        return None
    res = {}
    for name, (d, t) in target_dirs.items():
        cls = {"llama": transformers.LlamaForCausalLM, "qwen2": transformers.Qwen2ForCausalLM}.get(t.cfg["model_type"])
        if cls is None:
            continue
        m = cls.from_pretrained(d, dtype=torch.float32).eval()
        with torch.no_grad():
            hf_logits = m(input_ids=torch.tensor([prompt])).logits[0]
            hf_feat = m.model(input_ids=torch.tensor([prompt])).last_hidden_state[0]  # after the final norm
        logits, feat = t.forward(prompt, list(range(len(prompt))), causal(len(prompt)))
        e1 = float((hf_logits - logits).abs().max())
        e2 = float((hf_feat - feat).abs().max())
        print(f"HF check {name}: max |logit diff| {e1:.2e}, max |final-norm feature diff| {e2:.2e}")
        assert e1 < 1e-3 and e2 < 1e-3, name
        res[name] = {"max_abs_logit_diff": e1, "max_abs_feature_diff": e2}
    return {"transformers": transformers.__version__, "targets": res}


# ------------------------------------------------------------------------------------------- main
def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=os.path.join(REPO, "tests", "data", "eagle"))
    ap.add_argument("--qwen2-target", default=os.path.join(REPO, "tests", "data", "models", "qwen2_bias_bin"))
    args = ap.parse_args()
    out = args.out
    os.makedirs(out, exist_ok=True)
    torch.set_num_threads(1)
    check_against_models_fixtures()

    # Targets (reloaded from disk so the goldens see exactly the stored bf16 values).
    d_llama = make_llama_target(out)
    d_cpm = make_minicpm4_target(out)
    targets = {}
    for name, d in (("llama3", d_llama), ("qwen2", args.qwen2_target), ("minicpm4", d_cpm)):
        targets[name] = (d, Target(json.load(open(os.path.join(d, "config.json"))), load_weights(d)))
    tl, tq, tm = targets["llama3"][1], targets["qwen2"][1], targets["minicpm4"][1]

    # Heads ("trained" on each target's own continuations).
    seqs = {name: corpus(t, 300 + i) for i, (name, (_, t)) in enumerate(targets.items())}
    ha = eagle_head_tensors(tl, 11, seqs["llama3"])
    ha_file = dict(ha, **{"embed_tokens.weight": tl.embed_w})   # published heads may carry it
    write_head(out, "head_llama_bin", head_config(tl.cfg), ha_file, as_bin=True)
    hb = eagle_head_tensors(tl, 12, seqs["llama3"], fc_bias=True)
    cfg_b = head_config(tl.cfg, bias=True, rope_scaling={"type": "linear", "factor": 2.0})
    write_head(out, "head_llama_bias_safetensors", cfg_b, hb)
    hc = eagle_head_tensors(tq, 13, seqs["qwen2"], qkv_bias=True, fc_bias=True)
    cfg_c = head_config(tq.cfg, bias=True, qkv_bias=True)
    write_head(out, "head_qwen2_qkvbias", cfg_c, hc)
    hd_ = eagle_head_tensors(tm, 14, seqs["minicpm4"], minicpm=True)
    cfg_d = dict(tm.cfg, num_hidden_layers=1, bias=False)
    write_head(out, "head_minicpm4", cfg_d, hd_)

    # Malformed heads: head_llama_bias_safetensors cut to intermediate_size 16 (a valid, smaller
    # head; the config says so), then one defect each.
    small_i = 16
    cfg_s = dict(cfg_b, intermediate_size=small_i)
    hs = dict(hb)
    hs["layers.0.mlp.gate_proj.weight"] = hb["layers.0.mlp.gate_proj.weight"][:small_i]
    hs["layers.0.mlp.up_proj.weight"] = hb["layers.0.mlp.up_proj.weight"][:small_i]
    hs["layers.0.mlp.down_proj.weight"] = hb["layers.0.mlp.down_proj.weight"][:, :small_i]
    bad = dict(hs)
    bad["fc.weight"] = hs["fc.weight"][:, :tl.H]          # [H, H] instead of [H, 2H]
    write_head(out, "bad_fc_shape", cfg_s, bad)
    bad = {k: v for k, v in hs.items() if k != "layers.0.mlp.down_proj.weight"}
    write_head(out, "bad_missing_down_proj", cfg_s, bad)
    bad = dict(hs, **{"layers.0.mlp.extra_proj.weight": normal((8, tl.H), 0.05, gen(15))})
    write_head(out, "bad_extra_key", cfg_s, bad)

    # FR-Spec lists.
    fr = frequency_list(seqs["llama3"], FR_SIZE)
    torch.save(fr, os.path.join(out, "freq_good.pt"))
    dup = list(fr)
    dup[10] = dup[3]
    torch.save(dup, os.path.join(out, "freq_dup.pt"))
    rng = list(fr)
    rng[20] = VOCAB
    torch.save(rng, os.path.join(out, "freq_range.pt"))
    torch.save(torch.tensor(fr), os.path.join(out, "freq_tensor.pt"))
    write_hostile(os.path.join(out, "hostile.pt"))
    assert torch.load(os.path.join(out, "freq_good.pt"), weights_only=True) == fr

    heads = {}
    for name, tname, layout in (("head_llama_bin", "llama3", "eagle"),
                                ("head_llama_bias_safetensors", "llama3", "eagle"),
                                ("head_qwen2_qkvbias", "qwen2", "eagle"),
                                ("head_minicpm4", "minicpm4", "minicpm4")):
        d = os.path.join(out, name)
        cfg = json.load(open(os.path.join(d, "config.json")))
        w = {k: v for k, v in load_weights(d).items() if k != "embed_tokens.weight"}
        heads[name] = (tname, DraftHead(cfg, w, targets[tname][1], layout))

    g = gen(404)
    prompts = {f"p{n}": [1] + torch.randint(4, VOCAB, (n - 1,), generator=g).tolist() for n in PROMPT_LENGTHS}

    greedy, greedy_margin = {}, {}
    for tname, (_, t) in targets.items():
        greedy[tname], greedy_margin[tname] = {}, {}
        for pname, p in prompts.items():
            greedy[tname][pname], m = t.greedy(p, GREEDY_TOKENS)
            greedy_margin[tname][pname] = float(f"{m:.3g}")

    cases, summary = [], []
    for hname, (tname, head) in heads.items():
        for pname, p in prompts.items():
            for top_k, depth, tree_size in SETTINGS:
                for vocab in (("full",) if hname == "head_qwen2_qkvbias" else ("full", "freq_good")):
                    fr_ids = fr if vocab == "freq_good" else None
                    cyc = speculate(targets[tname][1], head, p, top_k, depth, tree_size, fr_ids)
                    if fr_ids is not None:  # FR-Spec trees hold full ids from the list only
                        assert all(t in fr_ids for c in cyc for t in c["tree"]["tokens"][1:])
                    emitted = [cyc[0]["root_token"]] + [t for c in cyc for t in c["emitted"]]
                    match = emitted == greedy[tname][pname][:len(emitted)]
                    assert match, (hname, pname, top_k, vocab, emitted, greedy[tname][pname])
                    cases.append({
                        "name": f"{hname}/{pname}/k{top_k}_d{depth}_n{tree_size}/{vocab}",
                        "target": tname, "head": hname, "prompt": pname, "prompt_len": len(p),
                        "top_k": top_k, "depth": depth, "hf_depth": depth - 1, "tree_size": tree_size,
                        "candidates": top_k + (depth - 1) * top_k * top_k,
                        "draft_vocab": vocab, "draft_vocab_size": FR_SIZE if fr_ids else VOCAB,
                        "draft_logit_divisor": head.logit_divisor(fr_ids),
                        "cycles": cyc,
                        "emitted_tokens": emitted, "matches_greedy": match,
                        "min_margin": min(v for c in cyc for v in c["margins"].values() if v is not None),
                    })
                    summary.append((cases[-1]["name"], [len(c["accepted_nodes"]) - 1 for c in cyc],
                                    cases[-1]["min_margin"]))

    hf = check_against_transformers({k: v for k, v in targets.items() if k != "minicpm4"}, prompts["p40"])
    conventions = {
        "feature": "f_p = the target's last hidden state after its final RMSNorm at position p (MiniCPM4: before "
                   "the muP division by hidden_size/dim_model_base)",
        "draft_rows": "draft row p runs at draft position p and consumes (f_p, e(t_{p+1})); the first drafting after "
                      "prefill runs rows 0..L-1 over the whole prompt, row L-1 pairing f_{L-1} with the root token; "
                      "later cycles run one row per accepted token (root + accepted drafts), with the target's "
                      "features from the verification pass and the next token (the last row takes the bonus token)",
        "embedding": "e(t) = the target's embed_tokens row (MiniCPM4: times scale_emb); the head's own "
                     "embed_tokens.weight, when present, is ignored",
        "tree_levels": "tree level d (d=1: the root's children) runs at draft position root_position + d - 1; "
                       "level-1 nodes take the root row's draft output as f, deeper nodes their parent's draft "
                       "output; every node attends to the draft's committed KV plus its expanded ancestors and itself",
        "depth": "depth = draft levels below the root (specula DraftTreeParams, FR-Spec/CPM.cu num_iter); HF EAGLE's "
                 "`depth` argument is depth - 1; candidates = top_k + (depth - 1) * top_k^2",
        "scores": "cumulative fp32 log-probability (log_softmax of the draft logits, over the FR-Spec subset when one "
                  "is used) summed along the path; root 0",
        "tie_break": "every top-k (a row's top_k tokens, the frontier's top_k of top_k^2, the final top "
                     "tree_size-1) prefers the lower index: token id (FR-Spec: subset index), flattened "
                     "parent_row*top_k + child_rank, candidate index",
        "candidate_index": "level-1 candidate j (rank j of the root's top-k) is j; a level-d candidate (d >= 2) "
                           "that is child rank j of the parent ranked f in level d-1's frontier selection is "
                           "top_k + (d-2)*top_k^2 + f*top_k + j",
        "node_order": "the tree = the root (node 0) + the top (tree_size-1) candidates by cumulative score (ties: "
                      "lower candidate index), sorted ascending by candidate index (level order); parents precede "
                      "children; position = root_position + depth",
        "verification": "greedy: the target runs the tree (node i at root_position + depth, attending to the "
                        "committed prefix, its ancestors and itself); walking from the root, the child whose token "
                        "equals the target's argmax (lowest id on ties) at the current node is accepted; the bonus "
                        "token is the argmax at the last accepted node and is the next cycle's root",
        "emitted": "cycle.emitted = accepted draft tokens + the bonus token; case.emitted_tokens = the first root "
                   "(the prefill's greedy token) + the emitted tokens of all cycles, a prefix of greedy[target][prompt]",
        "frspec": "draft LM head = the target's lm_head rows freq_good.pt[0..127]; log_softmax within the subset; "
                  "subset index i -> full id freq_good.pt[i] before the next embedding lookup and in the tree",
        "head_rope": "EAGLE-1/2 heads: no rope_scaling -> theta = the head config's rope_theta (10000 if absent); "
                     "rope_scaling linear -> theta 10000 regardless of rope_theta, angle = (position/factor)*inv_freq. "
                     "MiniCPM4 head: the target's RoPE",
        "minicpm4_head": "x = fc[:, :H] norm1(scale_emb*E[t]) + fc[:, H:] norm2(f) (+fc.bias); x += s*o_proj(attn("
                         "input_layernorm(x))); y = x + s*mlp(post_attention_layernorm(x)); s = scale_depth/sqrt("
                         "target_layers+1); draft logits = y W^T divided by hidden_size/dim_model_base only when the "
                         "full target LM head is used (CPM.cu: the FR-Spec head is a plain Linear)",
        "eos": "generation ignores end tokens (none is treated as a stop)",
        "margins": "per cycle: the smallest gap at each top-k cut (row_topk, frontier, tree_cut) and the smallest "
                   "top1-top2 target logit gap on the accepted path (target_argmax); a gap below ~1e-4 means a "
                   "different fp32 summation order may legitimately change that choice",
    }
    golden = {
        "format": "specula-eagle-golden-1",
        "generator": "tools/make_eagle_fixtures.py", "torch": torch.__version__,
        "hf_cross_check": hf,
        "conventions": conventions,
        "targets": {k: {"dir": {"llama3": "tests/data/eagle/target_llama3",
                                "qwen2": "tests/data/models/qwen2_bias_bin",
                                "minicpm4": "tests/data/eagle/target_minicpm4"}[k],
                        "model_type": t.cfg["model_type"],
                        "weights_sha256": sha256(os.path.join(d, "model.safetensors")
                                                 if os.path.exists(os.path.join(d, "model.safetensors"))
                                                 else os.path.join(d, "pytorch_model.bin"))}
                    for k, (d, t) in targets.items()},
        "heads": {k: {"dir": k, "target": tn, "layout": h.layout, "rope_theta_used": h.theta,
                      "rope_position_divisor": h.pos_div, "residual_scale": h.res_scale,
                      "fc_bias": "fc.bias" in h.w, "qkv_bias": "layers.0.self_attn.q_proj.bias" in h.w}
                  for k, (tn, h) in heads.items()},
        "frspec_ids": fr,
        "prompts": prompts,
        "greedy": greedy,
        "greedy_min_margin": greedy_margin,
        "cases": cases,
    }
    write_json(golden, os.path.join(out, "golden_trees.json"))

    for name, acc, m in summary:
        print(f"{name:55s} accepted drafts per cycle {acc}  min margin {m:.2e}")
    total = 0
    for root, _, files in os.walk(out):
        for f in sorted(files):
            p = os.path.join(root, f)
            total += os.path.getsize(p)
            print(f"{os.path.relpath(p, out):45s} {os.path.getsize(p):8d}")
    print("total bytes", total)


if __name__ == "__main__":
    main()
