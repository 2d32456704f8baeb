#!/usr/bin/env python3
"""Makes the tokenizer goldens in tests/data/tokenizers/ with the Hugging Face `tokenizers`
package (run on the GPU machine, which has it; never used by the engine).

For each tokenizer.json fetched by scripts/fetch-deps.sh (.deps/tokenizers/<name>/) it encodes a
fixed corpus -- English, Chinese, Japanese, code, emoji and ZWJ sequences, long whitespace runs,
digit runs, contractions, special-token strings inside text, combining marks that NFC composes,
invalid-looking byte sequences -- plus seeded random strings drawn from the same character
classes, and records for each text:
  ids          encode(text, add_special_tokens=True)
  ids_plain    encode(text, add_special_tokens=False)
  decoded      decode(ids_plain, skip_special_tokens=False)
  decoded_skip decode(ids_plain, skip_special_tokens=True)
Usage: make_tokenizer_goldens.py DEPS_DIR OUT_DIR
"""
import json
import random
import sys

import tokenizers
from tokenizers import Tokenizer

DEPS = sys.argv[1] if len(sys.argv) > 1 else ".deps/tokenizers"
OUT = sys.argv[2] if len(sys.argv) > 2 else "tests/data/tokenizers"

CORPUS = [
    "",
    " ",
    "Hello world",
    "Hello, world! How's it going? I'm fine, you'll see; they'd've LIKED it. DON'T SHOUT.",
    " leading space and trailing space ",
    "The quick brown fox jumps over the lazy dog.\nNew line\r\nWindows line\rOld Mac line",
    "tabs\tand\t\tdouble tabs\t\t\tend",
    "many     spaces          here                                        and more",
    "\n\n\n\nparagraphs\n\n  indented\n    more indented\n\t\ttabbed",
    "   \n   \n",
    "1234567890 12 123 1234 12345 3.14159 -42 1,000,000 0x1F 1e-5 ٣٤٥ ５６７",
    "2026-11-25T19:20:00Z version 3.11.7 v1.2.3-rc4",
    "你好，世界！这是一个测试。我们正在测试分词器。",
    "中文和English混合的句子，包括数字123和标点。",
    "日本語のテキスト：ひらがな、カタカナ、漢字。",
    "한국어 텍스트도 있습니다.",
    "Ελληνικά και русский текст, עברית, العربية, हिन्दी",
    "Emoji: 😀 😃 👍🏽 👨‍👩‍👧‍👦 🇺🇸 🏳️‍🌈 ❤️ ✨",
    "café naïve résumé Åström coöperate",
    "cafe\u0301 e\u0301 A\u030a n\u0303 (combining marks NFC composes)",
    "\u212b \u2126 \ufb01 \u00bd ligatures and compatibility chars",
    "def fib(n):\n    if n < 2:\n        return n\n    return fib(n - 1) + fib(n - 2)\n",
    "#include <stdio.h>\nint main(void) {\n\tprintf(\"%d\\n\", 42);\n\treturn 0;\n}\n",
    "func (s *Server) Handle(w http.ResponseWriter, r *http.Request) {\n\tif err := s.do(r); err != nil {\n\t\thttp.Error(w, err.Error(), 500)\n\t}\n}",
    "const x = {a: 1, 'b': [2, 3], \"c\": null}; // comment\n/* block */ x?.a ?? y;",
    "SELECT id, name FROM users WHERE age >= 18 AND name LIKE '%smith%';",
    "<html><body class=\"main\">&nbsp;&amp;&lt;</body></html>",
    "$ ls -la | grep '^d' && echo \"done\" > /dev/null 2>&1",
    "!!!???...,,,;;;:::---___+++===***&&&%%%$$$###@@@~~~```",
    "'s 't 're 've 'm 'll 'd 'S 'T 'RE 'VE 'M 'LL 'D",
    "<|begin_of_text|>Hello<|end_of_text|>",
    "<|start_header_id|>user<|end_header_id|>\n\nHi there<|eot_id|>",
    "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n",
    "<think>\n\n</think>\n\nanswer",
    "<s>[INST] hello [/INST] hi </s>",
    "<unk> < s> <|im_start |> <|unknown_token|>",
    "x" * 300,
    "ab" * 200,
    " " * 100 + "word",
    "\u00a0non-breaking\u00a0spaces\u2003em space\u3000ideographic",
    "zero\u200bwidth\u200cjoiners\u200d",
    "\x00\x01\x07 control \x1b[31m ansi \x7f",
    "\ufeffBOM at start",
    "math: ∑ ∫ √ ∞ ≠ ≤ ≥ → ⇒ ∀ ∃ ∈ ℝ",
    "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 𝕋𝕖𝕩𝕥 𐍈 supplementary planes",
    "The year 1999 and 2000, 1234567 items, 00000 zeros.",
    "snake_case camelCase PascalCase SCREAMING_CASE kebab-case",
    "https://example.com/path?query=1&x=y#frag user@example.org",
]

CLASSES = [
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ",
    "0123456789",
    " \t\n\r",
    "     ",
    ".,;:!?'\"()[]{}<>-_=+*/\\|@#$%^&~`",
    "你好世界中文分词器测试汉字",
    "ひらがなカタカナ",
    "éèêëàâäôöûüçñÅØ",
    "😀👍🏽❤️✨🇺🇸",
    "\u0301\u0308\u200d",
    "٣٤५६",
]


def random_strings(seed, count):
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        n = rng.randint(1, 60)
        s = []
        for _ in range(n):
            cls = rng.choice(CLASSES)
            s.append(rng.choice(cls) * (rng.randint(1, 4) if rng.random() < 0.2 else 1))
        out.append("".join(s))
    return out


def main():
    texts = CORPUS + random_strings(20261125, 150)
    for name in ("llama3", "qwen3", "llama2"):
        tok = Tokenizer.from_file(f"{DEPS}/{name}/tokenizer.json")
        cases = []
        for t in texts:
            ids = tok.encode(t, add_special_tokens=True).ids
            plain = tok.encode(t, add_special_tokens=False).ids
            cases.append({
                "text": t,
                "ids": ids,
                "ids_plain": plain,
                "decoded": tok.decode(plain, skip_special_tokens=False),
                "decoded_skip": tok.decode(plain, skip_special_tokens=True),
            })
        with open(f"{OUT}/golden_{name}.json", "w", encoding="utf-8") as f:
            json.dump({"tokenizer": name, "tokenizers_version": tokenizers.__version__, "cases": cases},
                      f, ensure_ascii=False, indent=0)
        print(name, len(cases), "cases")


if __name__ == "__main__":
    main()
