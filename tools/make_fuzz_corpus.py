#!/usr/bin/env python3
"""Makes the seed corpora of the fuzz targets (tests/fuzz/corpus/<target>/) and the two small
tokenizers the encode target loads (tests/fuzz/data/), from the committed fixtures in tests/data
and the tokenizer files scripts/fetch-deps.sh downloads into .deps/tokenizers.

    python3 tools/make_fuzz_corpus.py            # rewrites tests/fuzz/corpus and tests/fuzz/data

Standard library only (no torch, no safetensors package). Seeds are few and small on purpose: a
valid input of each shape the reader accepts plus a few edge cases, so that libFuzzer starts from
deep coverage instead of discovering the formats byte by byte; large fixtures are shrunk (tensors
cut to a few elements, tokenizers cut to their first few hundred ids) because every extra byte of
a seed slows each execution. Reproducers of fixed findings are added to the corpora by hand
(named regress-*), and this script leaves those in place.
"""
import collections
import io
import json
import os
import pickle
import re
import shutil
import struct
import sys
import types
import zipfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(ROOT, "tests", "data")
DEPS = os.path.join(ROOT, ".deps", "tokenizers")
OUT = os.path.join(ROOT, "tests", "fuzz", "corpus")
FIXED = os.path.join(ROOT, "tests", "fuzz", "data")


def reset(target):
    """Empties corpus/<target> except the committed reproducers (regress-*)."""
    d = os.path.join(OUT, target)
    os.makedirs(d, exist_ok=True)
    for name in os.listdir(d):
        if not name.startswith("regress-"):
            os.remove(os.path.join(d, name))
    return d


def write(target, name, data):
    if isinstance(data, str):
        data = data.encode("utf-8")
    with open(os.path.join(OUT, target, name), "wb") as f:
        f.write(data)


def read(*parts):
    with open(os.path.join(DATA, *parts), "rb") as f:
        return f.read()


def fixture_files(suffix):
    found = []
    for base, _, files in os.walk(DATA):
        for name in files:
            if name.endswith(suffix):
                found.append(os.path.join(base, name))
    return sorted(found)


def tag(path):
    """A seed name from a fixture path: models/qwen2_bias_bin/config.json -> qwen2_bias_bin,
    eagle/freq_good.pt -> freq_good (the folder names a model, a loose file names itself)."""
    parent, name = os.path.split(os.path.relpath(path, DATA))
    stem = os.path.splitext(name)[0]
    generic = name in ("config.json", "model.safetensors", "pytorch_model.bin") or "-of-" in name
    return os.path.basename(parent) if generic else stem


# ---------------------------------------------------------------------------------------------
# JSON inputs


def openai_request():
    reset("openai_request")
    seeds = {
        "chat_minimal": {"messages": [{"role": "user", "content": "Hi"}]},
        "chat_full": {
            "model": "specula", "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": [{"type": "text", "text": "Hello"}, {"type": "text", "text": "there"}]},
                {"role": "assistant", "content": "Hi!", "name": "bot", "tool_calls": None},
                {"role": "user", "content": "Tell me a story \u00e9\u4e16"}],
            "max_completion_tokens": 16, "max_tokens": 8, "temperature": 0.7, "top_p": 0.9, "top_k": 40,
            "min_p": 0.05, "presence_penalty": 0.5, "frequency_penalty": -0.5, "repetition_penalty": 1.1,
            "stop": ["\n\n", "END"], "seed": -1, "logprobs": True, "top_logprobs": 5, "stream": True,
            "stream_options": {"include_usage": True, "include_obfuscation": False}, "n": 1,
            "user": "u", "metadata": {"k": "v"}, "store": False, "response_format": {"type": "text"},
            "tools": [], "tool_choice": "none", "logit_bias": {}, "modalities": ["text"]},
        "chat_nulls": {"messages": [{"role": "user", "content": "x"}], "model": None, "temperature": None,
                       "stop": None, "seed": None, "stream_options": None, "n": None},
        "completion_minimal": {"prompt": "Once upon a time"},
        "completion_full": {
            "model": "specula", "prompt": ["Once"], "max_tokens": 4, "temperature": 0, "top_k": -1,
            "stop": "\n", "seed": 18446744073709551615, "logprobs": 3, "echo": False, "suffix": "",
            "best_of": 1, "stream": False},
        "refused_tools": {"messages": [{"role": "user", "content": "x"}], "tools": [{"type": "function"}]},
        "refused_image": {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]},
    }
    for name, body in seeds.items():
        write("openai_request", name + ".json", json.dumps(body))
    write("openai_request", "big_numbers.json",
          '{"prompt":"x","max_tokens":1e400,"temperature":-0.0,"seed":-9223372036854775808,"top_p":1E-310}')
    write("openai_request", "escapes.json",
          '{"messages":[{"role":"user","content":"\\ud83d\\ude00 \\u0000 \\/ \\"q\\""}]}')
    write("openai_request", "duplicate_key.json", '{"prompt":"a","prompt":"b"}')


def config_fixtures():
    """(name, config.json bytes, generation_config.json bytes or b'') for every committed model."""
    out = []
    for path in fixture_files("config.json"):
        if os.path.basename(path) != "config.json":
            continue
        gen = os.path.join(os.path.dirname(path), "generation_config.json")
        gen_bytes = open(gen, "rb").read() if os.path.exists(gen) else b""
        out.append((tag(path), open(path, "rb").read(), gen_bytes))
    return out


def model_config():
    reset("model_config")
    for name, config, gen in config_fixtures():
        # config.json, then NUL and generation_config.json (the harness splits at the first NUL).
        write("model_config", name, config + (b"\0" + gen if gen else b""))
    llama = json.loads(read("models", "llama3_tied_ropescaling", "config.json"))
    # The fixtures use the transformers-5 layout (rope_parameters, dtype); the classic one
    # (top-level rope_theta and rope_scaling, torch_dtype) of the same config.
    classic = dict(llama)
    rope = dict(classic.pop("rope_parameters"))
    classic["rope_theta"] = rope.pop("rope_theta")
    classic["rope_scaling"] = rope
    classic["torch_dtype"] = classic.pop("dtype")
    write("model_config", "llama3_classic_layout", json.dumps(classic))
    write("model_config", "eos_list", json.dumps(dict(llama, eos_token_id=[1, 2, 3])) + "\0" +
          '{"eos_token_id": 7, "bos_token_id": 1}')


def strict_json():
    reset("strict_json")
    for name, config, _ in config_fixtures():
        if name in ("llama3_tied_ropescaling", "minicpm4_longrope", "qwen3_headdim_qknorm"):
            write("strict_json", name, config)
    write("strict_json", "index", read("models", "llama3_untied_sharded", "model.safetensors.index.json"))
    write("strict_json", "scalars", '[0,-0,1.5e-300,1e308,18446744073709551615,-9223372036854775809,true,null,""]')
    write("strict_json", "escapes", '{"a\\u0000b":"\\ud83d\\ude00\\t\\u00e9","\\/":[{}]}')
    write("strict_json", "nested", "[" * 100 + "]" * 100)
    write("strict_json", "duplicate", '{"a":{"b":1,"b":2}}')


def shard_index():
    reset("shard_index")
    write("shard_index", "llama3_untied_sharded", read("models", "llama3_untied_sharded", "model.safetensors.index.json"))
    write("shard_index", "extra_members",
          '{"metadata":{"total_size":12,"nested":[1,{"a":[]}]},"weight_map":{"a":"s1.safetensors","b":"s1.safetensors"},'
          '"other":null}')
    write("shard_index", "empty_map", '{"weight_map":{}}')


# ---------------------------------------------------------------------------------------------
# safetensors


DTYPE_SIZES = {"BOOL": 1, "U8": 1, "I8": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2, "I32": 4, "U32": 4,
               "F32": 4, "I64": 8, "U64": 8, "F64": 8, "F8_E4M3": 1, "F8_E5M2": 1}


def safetensors_bytes(tensors, metadata=None):
    """tensors: list of (name, dtype, shape, bytes); laid out in order as the reference writer does."""
    header = {}
    if metadata is not None:
        header["__metadata__"] = metadata
    offset = 0
    blobs = []
    for name, dtype, shape, blob in tensors:
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + len(blob)]}
        offset += len(blob)
        blobs.append(blob)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the reference writer pads the header to 8 bytes
    return struct.pack("<Q", len(text)) + text + b"".join(blobs)


def parse_safetensors_header(path):
    raw = open(path, "rb").read()
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8:8 + n])


def safetensors():
    reset("safetensors")
    # Each committed safetensors fixture, shrunk: the same names, dtypes and ranks, each tensor cut
    # to at most 4 elements so that a seed is a few hundred bytes.
    seen = set()
    for path in fixture_files(".safetensors"):
        name = tag(path) + ("_" + os.path.basename(path).split("-")[1] if "-of-" in path else "")
        header = parse_safetensors_header(path)
        tensors = []
        for key, info in list(header.items())[:6]:
            if key == "__metadata__":
                continue
            shape = [min(d, 2) for d in info["shape"]]
            numel = 1
            for d in shape:
                numel *= d
            tensors.append((key, info["dtype"], shape, bytes(range(numel * DTYPE_SIZES[info["dtype"]]))))
        signature = tuple((t[1], len(t[2])) for t in tensors)
        if signature in seen:
            continue
        seen.add(signature)
        write("safetensors", name, safetensors_bytes(tensors, header.get("__metadata__")))
    write("safetensors", "every_dtype", safetensors_bytes(
        [("t_" + d.lower(), d, [2], bytes(2 * s)) for d, s in DTYPE_SIZES.items()], {"format": "pt"}))
    write("safetensors", "edge_shapes", safetensors_bytes(
        [("scalar", "F32", [], b"\0\0\x80\x3f"), ("empty", "F16", [0, 4], b""), ("wide", "U8", [1, 1, 1, 3], b"abc")]))
    write("safetensors", "empty_header", safetensors_bytes([]))


# ---------------------------------------------------------------------------------------------
# torch.save archives and their pickles

# Stand-ins for the torch names a state_dict pickle refers to, so that CPython's own pickler
# (protocol 2, as torch.save uses) writes exactly the opcodes torch.save writes.
_torch = types.ModuleType("torch")
_utils = types.ModuleType("torch._utils")
for storage in ("FloatStorage", "HalfStorage", "BFloat16Storage", "LongStorage", "IntStorage", "BoolStorage",
                "ByteStorage"):
    cls = type(storage, (), {"__module__": "torch"})
    setattr(_torch, storage, cls)


def _rebuild_tensor_v2(*args):
    raise AssertionError("never called")


def _rebuild_parameter(*args):
    raise AssertionError("never called")


_rebuild_tensor_v2.__module__ = _rebuild_parameter.__module__ = "torch._utils"
_utils._rebuild_tensor_v2 = _rebuild_tensor_v2
_utils._rebuild_parameter = _rebuild_parameter
_torch._utils = _utils
sys.modules.setdefault("torch", _torch)
sys.modules.setdefault("torch._utils", _utils)


class Storage:
    def __init__(self, cls_name, key, numel):
        self.cls, self.key, self.numel = getattr(_torch, cls_name), key, numel


class Tensor:
    def __init__(self, storage, offset, size, stride, parameter=False):
        self.args = (storage, offset, tuple(size), tuple(stride), False, collections.OrderedDict())
        self.parameter = parameter

    def __reduce__(self):
        if self.parameter:
            return (_rebuild_parameter, (Tensor(*self.args[:4]), True, collections.OrderedDict()))
        return (_rebuild_tensor_v2, self.args)


class TorchPickler(pickle.Pickler):
    def persistent_id(self, obj):
        if isinstance(obj, Storage):
            return ("storage", obj.cls, obj.key, "cpu", obj.numel)
        return None


def torch_pickle(obj):
    buf = io.BytesIO()
    TorchPickler(buf, protocol=2).dump(obj)
    return buf.getvalue()


def torch_archive(name, obj, storages):
    """A STORED zip laid out as torch.save's: <name>/data.pkl, byteorder, data/<key>, version."""
    records = [("data.pkl", torch_pickle(obj)), ("byteorder", b"little")]
    records += [("data/" + key, blob) for key, blob in storages.items()]
    records.append(("version", b"3\n"))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
        for record, blob in records:
            # A fixed timestamp, so that the seeds come out the same on every run.
            z.writestr(zipfile.ZipInfo(name + "/" + record, date_time=(1980, 1, 1, 0, 0, 0)), blob)
    return buf.getvalue()


def synthetic_state_dict():
    w = Storage("FloatStorage", "0", 6)
    b = Storage("BFloat16Storage", "1", 4)
    state = collections.OrderedDict()
    state["layer.weight"] = Tensor(w, 0, [2, 3], [3, 1])
    state["layer.weight_t"] = Tensor(w, 0, [3, 2], [1, 3])      # a strided view: copied by the reader
    state["layer.bias"] = Tensor(b, 1, [3], [1])                 # an offset into its storage
    state["scale"] = Tensor(b, 0, [], [])                        # a scalar
    state["param"] = Tensor(w, 2, [2], [1], parameter=True)      # nn.Parameter
    return state, {"0": bytes(range(24)), "1": bytes(range(8))}


def pickle_corpus():
    reset("pickle")
    for path in fixture_files(".pt") + fixture_files(".bin"):
        with zipfile.ZipFile(path) as z:
            for info in z.infolist():
                if info.filename.endswith("/data.pkl"):
                    write("pickle", tag(path) + ".pkl", z.read(info))
    state, _ = synthetic_state_dict()
    write("pickle", "synthetic_state_dict.pkl", torch_pickle(state))
    write("pickle", "int_list.pkl", pickle.dumps([0, 1, 255, 256, 65535, 65536, -1, 2**31, -2**63], protocol=2))
    write("pickle", "tensor.pkl", torch_pickle(Tensor(Storage("LongStorage", "0", 3), 0, [3], [1])))


def torch_checkpoint():
    reset("torch_checkpoint")
    for path in fixture_files(".pt"):
        write("torch_checkpoint", tag(path) + ".pt", open(path, "rb").read())
    state, storages = synthetic_state_dict()
    write("torch_checkpoint", "synthetic_state_dict.bin", torch_archive("archive", state, storages))
    write("torch_checkpoint", "int_list.pt", torch_archive("freq_4", [3, 1, 0, 2], {}))
    ids = Storage("LongStorage", "0", 4)
    write("torch_checkpoint", "int_tensor.pt",
          torch_archive("ids", Tensor(ids, 0, [4], [1]), {"0": struct.pack("<4q", 5, 6, 7, 8)}))


def frspec():
    reset("frspec")
    for path in fixture_files(".pt"):
        if os.path.basename(path).startswith("freq_"):
            write("frspec", tag(path) + ".pt", open(path, "rb").read())
    write("frspec", "small_list.pt", torch_archive("freq_8", [7, 0, 3, 63, 1], {}))


# ---------------------------------------------------------------------------------------------
# tokenizers


def trim_tokenizer(name, keep_ids):
    """The .deps tokenizer `name` cut to vocabulary ids < keep_ids, the merges among them, and its
    first added tokens renumbered to follow the cut vocabulary (post-processor ids remapped)."""
    path = os.path.join(DEPS, name, "tokenizer.json")
    if not os.path.exists(path):
        sys.exit(f"{path} is missing: run scripts/fetch-deps.sh first")
    doc = json.load(open(path, encoding="utf-8"))
    model = doc["model"]
    vocab = {t: i for t, i in model["vocab"].items() if i < keep_ids}
    merges = []
    for m in model["merges"]:
        a, b = m.split(" ", 1) if isinstance(m, str) else m
        if a in vocab and b in vocab and a + b in vocab:
            merges.append(m)
    model["vocab"], model["merges"] = vocab, merges
    remap = {}
    added = []
    for token in doc["added_tokens"][:8]:
        new_id = token["id"] if token["id"] < keep_ids else keep_ids + len(remap)
        remap[token["id"]] = new_id
        added.append(dict(token, id=new_id))
    # Qwen3's non-special added tokens (<think>, <tool_call>) come after its special ones.
    for token in doc["added_tokens"][8:]:
        if not token["special"] and len(added) < 12:
            remap[token["id"]] = keep_ids + len(remap)
            added.append(dict(token, id=remap[token["id"]]))
    doc["added_tokens"] = added

    def fix_ids(node):
        if isinstance(node, dict):
            for k, v in node.items():
                if k == "ids" and isinstance(v, list):
                    node[k] = [remap.get(i, i) for i in v]
                else:
                    fix_ids(v)
        elif isinstance(node, list):
            for v in node:
                fix_ids(v)

    fix_ids(doc["post_processor"])
    return json.dumps(doc, ensure_ascii=False, separators=(",", ":"))


def tokenizers():
    reset("tokenizer_json")
    # Byte-level vocabularies start with the 256 byte tokens, so 300 ids keep a few merges.
    for name, keep in (("llama3", 300), ("qwen3", 300), ("llama2", 400)):
        write("tokenizer_json", name + "_tiny.json", trim_tokenizer(name, keep))
    os.makedirs(FIXED, exist_ok=True)
    for name in ("llama3", "llama2"):
        with open(os.path.join(FIXED, name + "_small.json"), "w", encoding="utf-8") as f:
            f.write(trim_tokenizer(name, 1000))

    # One component at a time (fuzz_tokenizer_components.cpp): slot letter, JSON value, NUL, text.
    reset("tokenizer_components")
    slots = {"normalizer": "n", "pre_tokenizer": "p", "post_processor": "o", "decoder": "d"}
    texts = ["Hello, world! 123", " \u00e9t\u00e9  \u4e16\u754c\n\tx", "<|begin_of_text|>hi<|eot_id|>"]
    seen = set()
    for i, name in enumerate(("llama3", "llama2", "qwen3")):
        doc = json.load(open(os.path.join(DEPS, name, "tokenizer.json"), encoding="utf-8"))
        for slot, letter in slots.items():
            value = json.dumps(doc[slot], ensure_ascii=False)
            if value in seen:
                continue
            seen.add(value)
            write("tokenizer_components", f"{name}_{slot}", letter + value + "\0" + texts[i])
        options = {k: v for k, v in doc["model"].items() if k not in ("vocab", "merges")}
        write("tokenizer_components", f"{name}_model", "m" + json.dumps(options) + "\0" + texts[i])
        added = [dict(t, id=300 + j) for j, t in enumerate(doc["added_tokens"][:4])]
        write("tokenizer_components", f"{name}_added_tokens", "a" + json.dumps(added) + "\0" + texts[(i + 2) % 3])

    reset("tokenizer_encode")
    # Short texts of the tokenizer goldens: words, digits, whitespace runs, scripts, special tokens.
    texts = []
    for golden in ("golden_llama3.json", "golden_qwen3.json", "golden_llama2.json"):
        for case in json.load(open(os.path.join(DATA, "tokenizers", golden), encoding="utf-8"))["cases"]:
            t = case["text"]
            if 0 < len(t.encode("utf-8")) <= 120 and t not in texts:
                texts.append(t)
    step = max(1, len(texts) // 24)
    for i, t in enumerate(texts[::step][:24]):
        write("tokenizer_encode", f"golden_{i:02d}.txt", t)
    write("tokenizer_encode", "invalid_utf8.txt", b"ab\xff\xc3(\xed\xa0\x80")


# ---------------------------------------------------------------------------------------------
# dictionaries (tests/fuzz/dict/<target>.dict): tokens libFuzzer splices into inputs


DICTS = os.path.join(ROOT, "tests", "fuzz", "dict")
JSON_TOKENS = ["{", "}", "[", "]", ":", ",", '""', "true", "false", "null", "-0", "1e999", "0.5", "\\u0000",
               "\\ud83d\\ude00", "\\ud800", "18446744073709551616", "-9223372036854775809"]


def source_keys(*sources):
    """The quoted identifiers of the given library sources: the JSON keys and type names they look
    for, so the dictionaries follow the readers without being maintained by hand."""
    keys = set()
    for src in sources:
        text = open(os.path.join(ROOT, "src", "specula", src), encoding="utf-8").read()
        keys.update(re.findall(r'"([A-Za-z_][A-Za-z0-9_.]{1,40})"', text))
    return sorted(keys)


def write_dict(target, tokens, quoted_keys=()):
    def escape(t):
        if isinstance(t, str):
            t = t.encode("utf-8")
        return "".join(chr(b) if 32 <= b < 127 and b not in (34, 92) else "\\x%02X" % b for b in t)
    lines = [f'"{escape(t)}"' for t in tokens] + [f'"{escape(json.dumps(k))}"' for k in quoted_keys]
    os.makedirs(DICTS, exist_ok=True)
    with open(os.path.join(DICTS, target + ".dict"), "w") as f:
        f.write("# Made by tools/make_fuzz_corpus.py.\n" + "\n".join(lines) + "\n")


def dictionaries():
    json_tokens = JSON_TOKENS  # as they appear in JSON text (escapes unexpanded)
    write_dict("openai_request", json_tokens, source_keys("server/openai_request.cpp"))
    write_dict("model_config", json_tokens, source_keys("model/config.cpp"))
    write_dict("strict_json", json_tokens)
    write_dict("shard_index", json_tokens, ["weight_map", "metadata", "total_size"])
    write_dict("safetensors", json_tokens, source_keys("io/safetensors.cpp") + list(DTYPE_SIZES))
    tok_keys = source_keys("text/tokenizer.cpp", "text/tokenizer_json.cpp", "text/bpe_model.cpp",
                           "text/pipeline.cpp", "text/decoders.cpp", "text/added_tokens.cpp", "text/regex.cpp")
    write_dict("tokenizer_json", json_tokens + ["\u2581", "<0x0A>", "\\\\p{L}", "(?i:", "(?!", "\\\\s+"], tok_keys)
    write_dict("tokenizer_components", json_tokens + ["\u2581", "<0x0A>", "\\\\p{L}", "(?i:", "(?!", "\\\\s+"], tok_keys)
    write_dict("tokenizer_encode", ["<|begin_of_text|>", "<|eot_id|>", "<s>", "</s>", "<unk>", "\u2581", " ", "\n",
                                    "\r\n", "'s", "\u00e9", "e\u0301", "\U0001F600", "\xff"])
    # Protocol-2 opcodes with typical operands, the globals torch.save names, and zip signatures.
    pickle_tokens = [b"\x80\x02", b".", b"(", b"}", b"]", b")", b"t", b"\x85", b"\x86", b"\x87", b"s", b"u",
                     b"a", b"e", b"q\x00", b"r\x00\x00\x00\x00", b"h\x00", b"j\x00\x00\x00\x00", b"K\x01",
                     b"M\x00\x01", b"J\xff\xff\xff\x7f", b"\x8a\x08", b"X\x01\x00\x00\x00", b"G", b"\x88",
                     b"\x89", b"N", b"R", b"b", b"Q", b"ccollections\nOrderedDict\n",
                     b"ctorch._utils\n_rebuild_tensor_v2\n", b"ctorch._utils\n_rebuild_parameter\n",
                     b"ctorch\nFloatStorage\n", b"ctorch\nBFloat16Storage\n", b"ctorch\nLongStorage\n",
                     b"storage", b"cpu"]
    write_dict("pickle", pickle_tokens)
    zip_tokens = [b"PK\x03\x04", b"PK\x01\x02", b"PK\x05\x06", b"PK\x06\x06", b"PK\x06\x07", b"PK\x07\x08",
                  b"\x01\x00", b"\xff\xff\xff\xff", b"/data.pkl", b"/byteorder", b"little", b"big", b"/data/0",
                  b"/version"]
    write_dict("torch_checkpoint", pickle_tokens + zip_tokens)
    write_dict("frspec", pickle_tokens + zip_tokens)


def main():
    dictionaries()
    openai_request()
    strict_json()
    model_config()
    shard_index()
    safetensors()
    pickle_corpus()
    torch_checkpoint()
    frspec()
    tokenizers()
    for target in sorted(os.listdir(OUT)):
        d = os.path.join(OUT, target)
        files = os.listdir(d)
        print(f"{target}: {len(files)} seeds, {sum(os.path.getsize(os.path.join(d, f)) for f in files)} bytes")


if __name__ == "__main__":
    main()
