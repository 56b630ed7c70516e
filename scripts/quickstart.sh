#!/usr/bin/env bash
# The main job, end to end, on a fresh Debian machine: installs what is
# missing, builds, writes a small demo model (random weights, the real
# Llama-3.1 tokenizer), starts evalserver on the CPU, shows a chat completion
# and a scored prompt through curl, then runs an MT-Bench-format task from the
# shipped example data with evalclient and prints its summary.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
shared=$(scripts/find-shared.sh)
port=${PORT:-8321}

scripts/install-deps.sh
[ -f build/build.ninja ] || meson setup build -Dbuildtype=release >/dev/null
ninja -C build

model=models/demo
if [ ! -f $model/config.json ]; then
  build/tools/mkmodel --shape tiny --tokenizer "$shared/tokenizers/llama3_1" --out $model
fi

echo "== tokenizer and chat template"
echo '"Hello, world! Évaluer 12345 tokens."' | build/tools/evaltok --tokenizer $model
echo '{"messages": [{"role": "user", "content": "What is 2+2?"}], "add_generation_prompt": true}' |
  build/tools/evaltok --tokenizer $model --chat

echo "== evalserver on the CPU backend (port $port)"
build/server/evalserver --model $model --served-model-name demo --port $port &
server=$!
trap 'kill $server 2>/dev/null; wait $server 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do
  curl -sf "http://127.0.0.1:$port/health" >/dev/null && break
  sleep 0.2
done

echo "-- chat completion"
curl -s "http://127.0.0.1:$port/v1/chat/completions" -H 'Content-Type: application/json' \
  -d '{"model": "demo", "messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 12, "temperature": 0}'
echo
echo "-- scored prompt (echo + logprobs, as lm-evaluation-harness sends it)"
curl -s "http://127.0.0.1:$port/v1/completions" -H 'Content-Type: application/json' \
  -d '{"model": "demo", "prompt": "The capital of France is Paris", "max_tokens": 0, "echo": true, "logprobs": 1}'
echo

echo "== evalclient: MT-Bench-format example task"
out=$(mktemp -d)
build/client/evalclient --tasks mtbench --url "http://127.0.0.1:$port" --model demo \
  --judge-url "http://127.0.0.1:$port" --judge-model demo --out "$out" \
  --max-tokens 64 --judge-max-tokens 64
# (The demo model has random weights: its answers are noise and the judge
# rarely writes a [[rating]], so the summary shows counts, not a score.)
