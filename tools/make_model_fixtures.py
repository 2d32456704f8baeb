#!/usr/bin/env python3
"""Makes the tiny model-parity fixtures in tests/data/models/ (run on a machine with torch and
transformers; the GPU machine has both). Never used by the engine itself.

Each fixture is a directory with the real Hugging Face file layout and tensor names, random
weights (std large enough that logits are not near-uniform, so greedy tokens are well separated),
stored in bf16, plus:
  golden.json          prompt ids, 32 greedy continuation ids, logits shape, tolerances, provenance
  golden_logits.f32    float32 little-endian logits [prompt_len, vocab] of the prompt's forward pass

The reference runs in float32 over the bf16 weights (upcast exactly), which is what specula's CPU
backend computes, so the two agree to float32 rounding. Llama/Qwen2/Qwen3 goldens come from
transformers itself; MiniCPM4 is remote code on the Hub, so its golden comes from the small
PyTorch reference below, written from the formula spec (muP scales, LongRoPE).

Variants cover what loaders get wrong: tied and untied heads, llama3 rope scaling, the classic
(top-level rope_theta, torch_dtype) and the transformers-5 (rope_parameters, dtype) config
layouts, int and list eos_token_id, sharded safetensors with an index, a torch .bin state_dict,
Qwen2 q/k/v biases, Qwen3 head_dim != hidden/heads with q/k norms, MiniCPM LongRoPE + muP.
"""
import json
import math
import os
import shutil
import sys

import torch
import transformers
from safetensors.torch import save_file, load_file

from minicpm_layout import minicpm_weight_shapes  # tools/, the script's folder

OUT = sys.argv[1] if len(sys.argv) > 1 else "tests/data/models"
PROMPT = [1, 17, 300, 42, 99, 7, 250, 511, 3, 64, 128, 200]
NEW_TOKENS = 32
VOCAB = 512
torch.manual_seed(1234)


def randomize(model, std=0.15):
    """Re-initialises every parameter: matrices N(0, std), norm weights around 1, biases N(0, std)."""
    g = torch.Generator().manual_seed(99)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight") or "layernorm" in name:
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=g))
            elif "embed_tokens" in name:
                # Small next to the layers' outputs: with a tied head, a large embedding makes the
                # residual stream predict its own input token and greedy decoding repeats it.
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
            else:
                p.copy_(torch.randn(p.shape, generator=g) * std)


def bf16_roundtrip(model):
    """Rounds weights to bf16 so the fp32 reference sees exactly what the checkpoint stores."""
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.to(torch.bfloat16).to(torch.float32))


def greedy(forward, prompt):
    ids = list(prompt)
    for _ in range(NEW_TOKENS):
        logits = forward(torch.tensor([ids]))[0, -1]
        ids.append(int(torch.argmax(logits)))
    return ids[len(prompt):]


def write_golden(d, forward, note, extra=None):
    with torch.no_grad():
        logits = forward(torch.tensor([PROMPT]))[0].float().contiguous()
        tokens = greedy(forward, PROMPT)
    logits.numpy().astype("<f4").tofile(os.path.join(d, "golden_logits.f32"))
    meta = {
        "prompt": PROMPT,
        "greedy_tokens": tokens,
        "logits_shape": list(logits.shape),
        "reference": note,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }
    if extra:
        meta.update(extra)
    with open(os.path.join(d, "golden.json"), "w") as f:
        json.dump(meta, f, indent=1)
    print(d, "logits max |x|", float(logits.abs().max()), "greedy", tokens[:8], "...")


def hf_forward(model):
    return lambda ids: model(input_ids=ids).logits


def fresh(d):
    if os.path.exists(d):
        shutil.rmtree(d)
    os.makedirs(d)


def to_classic_layout(d, extra_edits=None):
    """Rewrites a transformers-5 config.json into the classic Hub layout (top-level rope_theta and
    rope_scaling, torch_dtype), the layout every published checkpoint has."""
    p = os.path.join(d, "config.json")
    cfg = json.load(open(p))
    rp = cfg.pop("rope_parameters", None)
    if rp is not None:
        cfg["rope_theta"] = rp.pop("rope_theta")
        rope_type = rp.pop("rope_type", "default")
        cfg["rope_scaling"] = None if rope_type == "default" else {"rope_type": rope_type, **rp}
    if "dtype" in cfg:
        cfg["torch_dtype"] = cfg.pop("dtype")
    if extra_edits:
        cfg.update(extra_edits)
    json.dump(cfg, open(p, "w"), indent=2)


def save_hf(model, d, **kw):
    model.to(torch.bfloat16).save_pretrained(d, **kw)
    model.to(torch.float32)


def llama_like(cls, cfg_cls, name, cfg_kwargs, save_kwargs=None, classic=None, as_bin=False):
    d = os.path.join(OUT, name)
    fresh(d)
    cfg = cfg_cls(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, **cfg_kwargs)
    model = cls(cfg).eval()
    randomize(model)
    bf16_roundtrip(model)
    if as_bin:
        cfg.save_pretrained(d)
        sd = {k: v.to(torch.bfloat16) for k, v in model.state_dict().items()}
        if cfg.tie_word_embeddings:
            sd.pop("lm_head.weight", None)
        torch.save(sd, os.path.join(d, "pytorch_model.bin"))
    else:
        save_hf(model, d, **(save_kwargs or {}))
    if classic is not None:
        to_classic_layout(d, classic)
    # Reload from disk, in fp32, so the golden is computed from exactly the saved files.
    ref = cls.from_pretrained(d, dtype=torch.float32).eval()
    write_golden(d, hf_forward(ref), f"transformers {cls.__name__} fp32 over the saved bf16 weights")


# ---------------------------------------------------------------- MiniCPM4 reference (formula spec)
def rms_norm(x, w, eps):
    xf = x.float()
    return w * (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps))


def rotate_half(x):
    d = x.shape[-1] // 2
    return torch.cat((-x[..., d:], x[..., :d]), dim=-1)


class MiniCPM4Reference:
    """muP + LongRoPE decoder (reference section 6), fp32, no KV cache: every call recomputes."""

    def __init__(self, cfg, w):
        self.c, self.w = cfg, w
        hd = cfg["hidden_size"] // cfg["num_attention_heads"]
        rs = cfg["rope_scaling"]
        orig = rs["original_max_position_embeddings"]
        maxpos = cfg["max_position_embeddings"]
        ext = torch.tensor(rs["long_factor"] if maxpos > orig else rs["short_factor"], dtype=torch.float32)
        inv = 1.0 / (cfg["rope_theta"] ** (torch.arange(0, hd, 2, dtype=torch.float32) / hd))
        self.inv_freq = inv / ext
        self.mscale = math.sqrt(1 + math.log(maxpos / orig) / math.log(orig))
        self.hd = hd

    def __call__(self, ids):
        c, w = self.c, self.w
        T = ids.shape[1]
        nh, nkv, hd = c["num_attention_heads"], c["num_key_value_heads"], self.hd
        L = c["num_hidden_layers"]
        s = c["scale_depth"] / math.sqrt(L)
        x = c["scale_emb"] * w["model.embed_tokens.weight"][ids[0]]
        pos = torch.arange(T, dtype=torch.float32)
        a = pos[:, None] * self.inv_freq[None, :]
        emb = torch.cat((a, a), dim=-1)
        cos, sin = emb.cos() * self.mscale, emb.sin() * self.mscale
        mask = torch.full((T, T), float("-inf")).triu(1)
        for i in range(L):
            p = f"model.layers.{i}."
            h = rms_norm(x, w[p + "input_layernorm.weight"], c["rms_norm_eps"])
            q = (h @ w[p + "self_attn.q_proj.weight"].T).view(T, nh, hd).transpose(0, 1)
            k = (h @ w[p + "self_attn.k_proj.weight"].T).view(T, nkv, hd).transpose(0, 1)
            v = (h @ w[p + "self_attn.v_proj.weight"].T).view(T, nkv, hd).transpose(0, 1)
            q = q * cos + rotate_half(q) * sin
            k = k * cos + rotate_half(k) * sin
            k = k.repeat_interleave(nh // nkv, dim=0)
            v = v.repeat_interleave(nh // nkv, dim=0)
            att = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(hd) + mask, dim=-1)
            o = (att @ v).transpose(0, 1).reshape(T, nh * hd) @ w[p + "self_attn.o_proj.weight"].T
            x = x + s * o
            h = rms_norm(x, w[p + "post_attention_layernorm.weight"], c["rms_norm_eps"])
            m = torch.nn.functional.silu(h @ w[p + "mlp.gate_proj.weight"].T) * (h @ w[p + "mlp.up_proj.weight"].T)
            x = x + s * (m @ w[p + "mlp.down_proj.weight"].T)
        x = rms_norm(x, w["model.norm.weight"], c["rms_norm_eps"]) / (c["hidden_size"] / c["dim_model_base"])
        head = w["model.embed_tokens.weight"] if c["tie_word_embeddings"] else w["lm_head.weight"]
        return (x @ head.T)[None]


def minicpm4(name="minicpm4_longrope"):
    d = os.path.join(OUT, name)
    fresh(d)
    H, nh, nkv, I, L = 64, 4, 2, 96, 2
    hd = H // nh
    cfg = {
        "architectures": ["MiniCPMForCausalLM"],
        "auto_map": {"AutoConfig": "configuration_minicpm.MiniCPMConfig",
                     "AutoModelForCausalLM": "modeling_minicpm.MiniCPMForCausalLM"},
        "model_type": "minicpm", "hidden_act": "silu", "hidden_size": H, "intermediate_size": I,
        "num_hidden_layers": L, "num_attention_heads": nh, "num_key_value_heads": nkv,
        "max_position_embeddings": 64, "rms_norm_eps": 1e-6, "rope_theta": 10000.0,
        "rope_scaling": {"rope_type": "longrope",
                         "short_factor": [1.0 + 0.1 * i for i in range(hd // 2)],
                         "long_factor": [1.0 + 0.7 * i for i in range(hd // 2)],
                         "original_max_position_embeddings": 32},
        "scale_emb": 12, "scale_depth": 1.4, "dim_model_base": 16, "tie_word_embeddings": False,
        "vocab_size": VOCAB, "bos_token_id": 1, "eos_token_id": [2, 73440 % VOCAB], "torch_dtype": "bfloat16",
        "sparse_config": {"kernel_size": 32, "kernel_stride": 16, "init_blocks": 1, "block_size": 64,
                          "window_size": 2048, "topk": 64, "use_nope": False, "dense_len": 8192},
    }
    g = torch.Generator().manual_seed(7)
    shapes = minicpm_weight_shapes(VOCAB, H, nh, nkv, hd, I, L)
    w = {}
    for k, shp in shapes.items():
        if len(shp) == 1:
            w[k] = 1.0 + 0.2 * torch.randn(shp, generator=g)
        elif "embed" in k:
            w[k] = 0.05 * torch.randn(shp, generator=g)  # x12 by scale_emb
        else:
            w[k] = 0.15 * torch.randn(shp, generator=g)
        w[k] = w[k].to(torch.bfloat16)
    save_file(w, os.path.join(d, "model.safetensors"), metadata={"format": "pt"})
    json.dump(cfg, open(os.path.join(d, "config.json"), "w"), indent=2)
    wf = {k: v.float() for k, v in load_file(os.path.join(d, "model.safetensors")).items()}
    write_golden(d, MiniCPM4Reference(cfg, wf), "tools/make_model_fixtures.py MiniCPM4Reference (fp32)")


if __name__ == "__main__":
    os.makedirs(OUT, exist_ok=True)
    T = transformers
    # Llama-3.2 style: tied head, llama3 rope scaling, transformers-5 config layout, int eos.
    llama_like(T.LlamaForCausalLM, T.LlamaConfig, "llama3_tied_ropescaling",
               dict(tie_word_embeddings=True, rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=2,
                    rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
                                     "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                     "original_max_position_embeddings": 64}))
    # Llama-3-8B style: untied head, classic config layout, eos list, sharded safetensors.
    llama_like(T.LlamaForCausalLM, T.LlamaConfig, "llama3_untied_sharded",
               dict(tie_word_embeddings=False, rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=[2, 3],
                    rope_parameters={"rope_type": "default", "rope_theta": 500000.0}),
               save_kwargs={"max_shard_size": "100KB"}, classic={})
    # Qwen2.5 style: q/k/v biases, untied, torch .bin state_dict, classic layout.
    llama_like(T.Qwen2ForCausalLM, T.Qwen2Config, "qwen2_bias_bin",
               dict(tie_word_embeddings=False, rms_norm_eps=1e-6,
                    rope_parameters={"rope_type": "default", "rope_theta": 1000000.0}),
               classic={}, as_bin=True)
    # Qwen3 style: head_dim 32 != 64/4, q/k norms, tied.
    llama_like(T.Qwen3ForCausalLM, T.Qwen3Config, "qwen3_headdim_qknorm",
               dict(tie_word_embeddings=True, rms_norm_eps=1e-6, head_dim=32,
                    rope_parameters={"rope_type": "default", "rope_theta": 1000000.0}))
    minicpm4()
    for root, _, files in os.walk(OUT):
        for f in files:
            print(os.path.join(root, f), os.path.getsize(os.path.join(root, f)))
