#!/usr/bin/env bash
# ctest client.curl: `specula serve` driven with curl, as a person at a shell would: malformed
# JSON, wrong types, missing fields, an oversized body, an unknown model, a missing and a wrong
# API key, and a client that hangs up mid-stream. Each bad request must get its status and an
# OpenAI error object that names the problem, and after each one a good request must still be
# answered correctly (the same greedy text as before any bad request).
# Needs SPECULA_CLI (ctest sets it) and curl; fails saying so when either is missing.
set -uo pipefail
cli=${SPECULA_CLI:-}
[ -x "$cli" ] || { echo "client.curl: SPECULA_CLI must name the built specula program (got '$cli')" >&2; exit 1; }
command -v curl >/dev/null || { echo "client.curl: curl is not installed (apt-get install curl)" >&2; exit 1; }

work=$(mktemp -d)
server_pid=""
cleanup() {
  [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null && wait "$server_pid" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT
"$cli" create-demo-model "$work/demo" --chat-tokens >/dev/null || { echo "client.curl: create-demo-model failed" >&2; exit 1; }
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
key=secret-key
"$cli" serve -m "$work/demo" --device cpu --threads 1 --port "$port" --api-key "$key" >"$work/server.log" 2>&1 &
server_pid=$!
base=http://127.0.0.1:$port
for _ in $(seq 100); do curl -sf "$base/health" >/dev/null && break; sleep 0.1; done
curl -sf "$base/health" >/dev/null || { echo "client.curl: the server did not come up"; cat "$work/server.log"; exit 1; }

failures=0
check() {  # check NAME CONDITION-RESULT
  if [ "$2" = ok ]; then echo "ok - $1"; else echo "not ok - $1: $2"; failures=$((failures + 1)); fi
}
# request METHOD PATH BODY [extra curl args...]: sets $status and $body
request() {
  local method=$1 path=$2 data=$3
  shift 3
  body=$(curl -s -o - -w '\n%{http_code}' -X "$method" -H "Authorization: Bearer $key" \
         -H 'Content-Type: application/json' --data-binary "$data" "$@" "$base$path")
  status=${body##*$'\n'}
  body=${body%$'\n'*}
}
good='{"model":"demo","messages":[{"role":"user","content":"Hello there"}],"max_tokens":12,"temperature":0}'
answer() { request POST /v1/chat/completions "$good"; printf '%s' "$body" | python3 -c 'import json,sys; print(json.load(sys.stdin)["choices"][0]["message"]["content"])'; }
reference=$(answer)
[ -n "$reference" ] && check "a good request is answered" ok || check "a good request is answered" "empty answer"
still_good() {
  local now
  now=$(answer)
  [ "$now" = "$reference" ] && check "  and the server still answers correctly after it" ok \
    || check "  and the server still answers correctly after it" "got '$now'"
}
# expect_error NAME STATUS NEEDLE: the last response has that status and an error object whose
# message (or param) contains NEEDLE.
expect_error() {
  local got
  got=$(printf '%s' "$body" | python3 -c 'import json,sys
try:
    e = json.load(sys.stdin)["error"]; print(e.get("message", "") + " | " + str(e.get("param")))
except Exception as x:
    print("no OpenAI error object: " + repr(x))')
  if [ "$status" = "$2" ] && [[ "$got" == *"$3"* ]]; then check "$1 -> $2" ok; else check "$1" "status $status, error '$got'"; fi
  still_good
}

request POST /v1/chat/completions '{"model": "demo", "messages": [' ; expect_error "malformed JSON" 400 "JSON"
request POST /v1/chat/completions '{"model":"demo","messages":[{"role":"user","content":"hi"}],"max_tokens":"ten"}'
expect_error "max_tokens as a string" 400 "max_tokens"
request POST /v1/chat/completions '{"model":"demo","messages":[{"role":"user","content":"hi"}],"temperature":[1]}'
expect_error "temperature as an array" 400 "temperature"
request POST /v1/chat/completions '{"model":"demo","max_tokens":4}' ; expect_error "missing messages" 400 "messages"
request POST /v1/completions '{"model":"demo","max_tokens":4}' ; expect_error "missing prompt" 400 "prompt"
big=$(python3 -c 'print("{\"model\":\"demo\",\"prompt\":\"" + "a" * (5 << 20) + "\"}")')
printf '%s' "$big" >"$work/big.json"
request POST /v1/completions "@$work/big.json" ; expect_error "a 5 MiB body" 413 ""
request POST /v1/chat/completions '{"model":"no-such-model","messages":[{"role":"user","content":"hi"}]}'
expect_error "an unknown model" 404 "no-such-model"
body=$(curl -s -w '\n%{http_code}' -H 'Content-Type: application/json' --data-binary "$good" "$base/v1/chat/completions")
status=${body##*$'\n'}; body=${body%$'\n'*}
expect_error "no API key" 401 ""
body=$(curl -s -w '\n%{http_code}' -H 'Authorization: Bearer wrong' -H 'Content-Type: application/json' \
       --data-binary "$good" "$base/v1/chat/completions")
status=${body##*$'\n'}; body=${body%$'\n'*}
expect_error "a wrong API key" 401 ""

# A client that hangs up mid-stream: curl reads the first bytes of a long stream and exits.
cancelled_before=$(curl -s "$base/metrics" | sed -n 's/^specula_scheduler_requests_total{outcome="cancelled"} //p')
long='{"model":"demo","messages":[{"role":"user","content":"Go on"}],"max_tokens":1500,"stream":true,"temperature":0}'
curl -sN -H "Authorization: Bearer $key" -H 'Content-Type: application/json' --data-binary "$long" \
     "$base/v1/chat/completions" 2>/dev/null | head -c 300 >/dev/null
cancelled=no
for _ in $(seq 100); do
  now=$(curl -s "$base/metrics" | sed -n 's/^specula_scheduler_requests_total{outcome="cancelled"} //p')
  if [ "${now:-0}" != "${cancelled_before:-0}" ]; then cancelled=ok; break; fi
  sleep 0.05
done
check "a client hanging up mid-stream cancels its generation" "$cancelled"
still_good

if [ $failures -ne 0 ]; then
  echo "client.curl: $failures check(s) failed; server log:"; tail -20 "$work/server.log"; exit 1
fi
echo "client.curl: all checks passed"
