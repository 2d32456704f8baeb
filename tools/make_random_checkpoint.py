#!/usr/bin/env python3
"""Writes a Llama-3-8B-shaped checkpoint with random bf16 weights in the Hugging Face layout
(config.json, 4 safetensors shards and model.safetensors.index.json), for measuring how long the
engine takes to load a real-sized checkpoint (`specula bench --model DIR`) on a machine with no
network to download one.

The values are random (uniform, scaled by 1/sqrt(fan-in) so activations stay finite); names,
shapes, dtypes and the sharded layout are Meta-Llama-3-8B's. The safetensors files are written
directly (8-byte header length, JSON header, raw little-endian data), so only torch is needed.
With --evict (default) the files are flushed and dropped from the page cache afterwards
(posix_fadvise DONTNEED, no root needed), so the next load reads them from disk.

Usage: python3 tools/make_random_checkpoint.py OUT_DIR [--layers 32] [--no-evict]
"""
import argparse
import json
import math
import os
import struct
import sys
import time

import torch

CONFIG = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "vocab_size": 128256,
    "max_position_embeddings": 8192,
    "rms_norm_eps": 1e-5,
    "rope_theta": 500000.0,
    "tie_word_embeddings": False,
    "hidden_act": "silu",
    "bos_token_id": 128000,
    "eos_token_id": 128001,
    "torch_dtype": "bfloat16",
}
SHARD_BYTES = 5 * 10**9  # like save_pretrained's default max_shard_size


def tensor_specs(c):
    h, i, v = c["hidden_size"], c["intermediate_size"], c["vocab_size"]
    hd = h // c["num_attention_heads"]
    kv = c["num_key_value_heads"] * hd
    specs = [("model.embed_tokens.weight", (v, h))]
    for l in range(c["num_hidden_layers"]):
        p = f"model.layers.{l}."
        specs += [
            (p + "input_layernorm.weight", (h,)),
            (p + "self_attn.q_proj.weight", (h, h)),
            (p + "self_attn.k_proj.weight", (kv, h)),
            (p + "self_attn.v_proj.weight", (kv, h)),
            (p + "self_attn.o_proj.weight", (h, h)),
            (p + "post_attention_layernorm.weight", (h,)),
            (p + "mlp.gate_proj.weight", (i, h)),
            (p + "mlp.up_proj.weight", (i, h)),
            (p + "mlp.down_proj.weight", (h, i)),
        ]
    specs += [("model.norm.weight", (h,)), ("lm_head.weight", (v, h))]
    return specs


def make_tensor(name, shape, device):
    if len(shape) == 1:
        return torch.ones(shape, dtype=torch.bfloat16)
    scale = 1.0 / math.sqrt(shape[1])
    return torch.empty(shape, dtype=torch.bfloat16, device=device).uniform_(-scale, scale).cpu()


def write_shard(path, names_shapes, device):
    header, offset = {}, 0
    for name, shape in names_shapes:
        n = 2 * math.prod(shape)
        header[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    header["__metadata__"] = {"format": "pt"}
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for name, shape in names_shapes:
            f.write(make_tensor(name, shape, device).view(torch.uint8).numpy().tobytes())
        f.flush()
        os.fsync(f.fileno())
    return offset


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out_dir")
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--no-evict", action="store_true", help="leave the files in the page cache")
    args = ap.parse_args()
    config = dict(CONFIG, num_hidden_layers=args.layers)
    os.makedirs(args.out_dir, exist_ok=True)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    specs = tensor_specs(config)

    shards, current, size = [], [], 0
    for name, shape in specs:
        n = 2 * math.prod(shape)
        if current and size + n > SHARD_BYTES:
            shards.append(current)
            current, size = [], 0
        current.append((name, shape))
        size += n
    shards.append(current)

    start = time.time()
    weight_map, total = {}, 0
    files = []
    for k, shard in enumerate(shards):
        fname = f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors"
        total += write_shard(os.path.join(args.out_dir, fname), shard, device)
        files.append(fname)
        weight_map.update({name: fname for name, _ in shard})
        print(f"  wrote {fname} ({len(shard)} tensors)", file=sys.stderr)
    with open(os.path.join(args.out_dir, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=1)
    with open(os.path.join(args.out_dir, "config.json"), "w") as f:
        json.dump(config, f, indent=1)
    if not args.no_evict:
        for fname in files:
            fd = os.open(os.path.join(args.out_dir, fname), os.O_RDONLY)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            os.close(fd)
    print(f"{total / 1e9:.2f} GB in {len(shards)} shards written in {time.time() - start:.1f} s"
          f"{'' if args.no_evict else ', evicted from the page cache'}", file=sys.stderr)


if __name__ == "__main__":
    main()
