#!/usr/bin/env bash
# Runs ON the GPU machine (the device tool), from the repository root, with
# .device/ carried (setup-remote.sh, the Debian packages, tok/llama3_1 and
# bench/ holding the shared peer scripts). Builds with CUDA, writes the
# benchmark models with mkmodel, then runs the phases named on the command
# line, appending everything to $OUT/bench.log and one JSON line per figure
# to $OUT/results.jsonl:
#   gpu-tests   tests/gpu/run.sh quick (kernels and model vs the CPU backend)
#   gpu-tests-hf  tests/gpu/run.sh hf (1B and 8B with --precision high vs transformers in fp32)
#   attn-bench  test_gpu attn-bench: the decode-attention kernel variants side by side
#   decode-1b decode-8b   test_gpu bench: decode steps with and without CUDA graphs
#   w1-1b w1-8b w2-8b w3-8b   evalserver --device cuda, measured by evalclient bench
#   w1-1b-sync w1-8b-sync     W1 with --async-scheduling off (each step scheduled after the last)
#   w1-1b-prof w1-8b-prof     W1 with EVAL_CUDA_PROFILE=1 (per-kernel shares in the server log)
#   two GPUs (nvidia-h200-x2): tp-check (tests/gpu/tp_check.sh), w1-1b-dp2, w1-8b-dp2,
#   w1-8b-tp2(-graphs), w1-70b-tp2, w1-70b-pp2(-nccl) (256 prompts; the 70b model in /dev/shm)
#   one GPU: pp-nodes-1gpu (tp_check.sh ONE_GPU=1: --pp 2 over two node processes sharing GPU 0)
#   hf-1b hf-8b hf-w2-8b      the Hugging Face transformers peer (hf_baseline.py)
#   cmp-1b cmp-8b (-f32)      tests/gpu/hf_compare.py: logprobs vs transformers (bf16, fp32)
#   cmp-1b-high cmp-8b-high   the same with --precision high, against transformers in fp32
#   w1-1b-high w1-8b-high     W1 with --precision high (its cost)
#   soak-1b                   scripts/soak.py for 90 s: mixed greedy / sampled / streamed / scored load
#   invariance-1b             tests/emu/cuda_invariance_emu.py on the device: --batch-invariant
#                             answers bit for bit alike alone, chunked, crowded and cached
#   w1-1b-invariant w1-8b-invariant   W1 with --batch-invariant (its cost)
# MAX_SEQS sets the server's --max-num-seqs (default 256); SERVER_ARGS adds flags.
set -uo pipefail
out=${OUT:-/tmp/out}
mkdir -p "$out"
log=$out/bench.log
results=$out/results.jsonl
say() { echo "== $*" | tee -a "$log"; }

eval "$(bash .device/setup-remote.sh)"
say "build"
if ! { { [ -f /tmp/b/build.ninja ] || meson setup /tmp/b -Dcuda=enabled -Dbuildtype=release >/dev/null; } &&
       ninja -C /tmp/b ${BUILD_TARGETS:-server/evalserver client/evalclient tools/mkmodel tests/gpu/test_gpu} >>"$log" 2>&1; }; then
  tail -40 "$log"; exit 1
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee -a "$log"
tok=.device/tok/llama3_1
model_dir() {
  # the 70b shape (141 GB) does not fit the two-GPU machine's disk (128 GiB)
  # but does fit its memory: it goes to /dev/shm
  local shape=$1 dir=/tmp/models/$1
  [ "$shape" = llama-3.1-70b ] && dir=/dev/shm/models/$1
  [ -f "$dir/config.json" ] || /tmp/b/tools/mkmodel --shape "$shape" --tokenizer $tok --out "$dir" >>"$log" 2>&1
  echo "$dir"
}

server_pid=""
start_server() { # shape port
  local dir; dir=$(model_dir "$1")
  /tmp/b/server/evalserver --model "$dir" --served-model-name "$1" --device cuda --port "$2" \
    --max-num-seqs ${MAX_SEQS:-256} --max-connections-per-ip 4096 --max-connections 4096 --http-threads 8 ${SERVER_ARGS:-} >>"$log" 2>&1 &
  server_pid=$!
  for _ in $(seq 1 600); do
    curl -sf "http://127.0.0.1:$2/health" >/dev/null && return 0
    kill -0 $server_pid 2>/dev/null || { say "server died"; return 1; }
    sleep 0.5
  done
  say "server did not become healthy"; return 1
}
stop_server() {
  [ -n "$server_pid" ] && kill -TERM $server_pid 2>/dev/null && wait $server_pid 2>/dev/null
  server_pid=""
}
step_share() { # port label: host vs device time per engine step, from /metrics
  # host: engine-thread time (hidden behind the device when steps are
  # scheduled ahead); gap: time between forwards, the host time not hidden.
  curl -s "http://127.0.0.1:$1/metrics" |
    awk -v label="$2" '/^evalserver_engine_steps_total/{s=$2} /^evalserver_engine_step_host_seconds_total/{h=$2}
      /^evalserver_engine_step_device_seconds_total/{d=$2} /^evalserver_engine_step_gap_seconds_total/{g=$2}
      /^evalserver_engine_steps_scheduled_ahead_total/{a=$2}
      END{if (s>0 && d>0) printf("{\"figure\":\"step_time\",\"run\":\"%s\",\"steps\":%d,\"steps_ahead\":%d,\"host_ms_per_step\":%.3f,\"device_ms_per_step\":%.3f,\"gap_ms_per_step\":%.3f,\"host_share\":%.4f,\"gap_share\":%.4f}\n", label, s, a, 1000*h/s, 1000*d/s, 1000*g/s, h/d, g/d)}' |
    tee -a "$results"
}
bench() { # shape workload [extra args]
  local shape=$1 w=$2; shift 2
  start_server "$shape" 8100 || return
  say "evalserver $shape $w"
  timeout "${BENCH_TIMEOUT:-900}" /tmp/b/client/evalclient bench --url http://127.0.0.1:8100 --model "$shape" --workload "$w" \
    --json /tmp/bench.json "$@" 2>&1 | tee -a "$log"
  python3 -c "import json,sys; d=json.load(open('/tmp/bench.json')); d.update(engine='evalserver', model='$shape'); print(json.dumps(d))" >>"$results"
  step_share 8100 "$shape-$w"
  curl -s http://127.0.0.1:8100/metrics | grep -E '^evalserver_(prefix_cache|request_success|prompt_tokens|engine_steps)' | tee -a "$log"
  stop_server
}
hf_compare() { # shape dtype [server flags] (the server leaves room for transformers on the GPU)
  SERVER_ARGS="--gpu-memory-utilization 0.45 ${3:-}" start_server "$1" 8100 || return
  say "hf_compare $1 (transformers in $2) ${3:-}"
  python3 tests/gpu/hf_compare.py --model "$(model_dir "$1")" --url http://127.0.0.1:8100 \
    --prompts 64 --prompt-len 128 --gen-len 128 --hf-dtype "$2" ${CMP_ARGS:-} 2>>"$log" | tee -a "$results"
  stop_server
}
decode_bench() { # shape: decode steps at batch 256, 512-token contexts, with and without graphs
  local dir; dir=$(model_dir "$1")
  say "decode bench $1 (CUDA graphs, then EVAL_CUDA_GRAPHS=0)"
  /tmp/b/tests/gpu/test_gpu bench "$dir" 256 512 40 2>&1 | tail -3 | tee -a "$log"
  EVAL_CUDA_GRAPHS=0 /tmp/b/tests/gpu/test_gpu bench "$dir" 256 512 40 2>&1 | tail -3 | tee -a "$log"
}
soak() { # shape minutes: scripts/soak.py's mixed load (half the plain completions sampled)
  say "soak $1 ($2 min, 64 client threads)"
  python3 scripts/soak.py --server /tmp/b/server/evalserver --model "$(model_dir "$1")" \
    --server-args "--device cuda" --minutes "$2" --interval 30 --concurrency 64 \
    --out "$out/soak-$1.jsonl" --log "$out/soak-server-$1.log" 2>&1 | tail -6 | tee -a "$log"
}
hf() { # shape workload prompts batch
  say "hf-transformers $1 $2"
  PYTHONUNBUFFERED=1 python3 .device/bench/hf_baseline.py --model "$(model_dir "$1")" --workload "$2" \
    --prompts "$3" --batch "$4" 2>>"$log" | tee -a "$results"
}

for phase in "$@"; do
  case $phase in
    gpu-tests) say "tests/gpu quick"; LOGS=/tmp/gpu-logs BUILD=/tmp/b TOK=$tok tests/gpu/run.sh quick 2>&1 | tail -60 | tee -a "$log" ;;
    gpu-tests-hf) say "tests/gpu hf"; LOGS=$out/gpu-hf BUILD=/tmp/b TOK=$tok tests/gpu/run.sh hf 2>&1 | tail -30 | tee -a "$log" ;;
    attn-bench) say "test_gpu attn-bench"; /tmp/b/tests/gpu/test_gpu attn-bench 2>&1 | tail -40 | tee -a "$log" ;;
    decode-1b) decode_bench llama-3.2-1b ;;
    decode-8b) decode_bench llama-3.1-8b ;;
    w1-1b) bench llama-3.2-1b W1 ;;
    w1-8b) bench llama-3.1-8b W1 ;;
    soak-1b) soak llama-3.2-1b 1.5 ;;
    w1-1b-prof) EVAL_CUDA_PROFILE=1 bench llama-3.2-1b W1 ;;
    w1-8b-prof) EVAL_CUDA_PROFILE=1 bench llama-3.1-8b W1 ;;
    w1-1b-sync) SERVER_ARGS="--async-scheduling off ${SERVER_ARGS:-}" bench llama-3.2-1b W1 ;;
    # two GPUs or more (kind nvidia-h200-x2), issue 6
    tp-check) say "tests/gpu/tp_check.sh"; BUILD=/tmp/b TOK=$tok LOGS=$out/tp-check tests/gpu/tp_check.sh 2>&1 | tail -5 | tee -a "$log" ;;
    pp-nodes-1gpu) say "tests/gpu/tp_check.sh, ONE_GPU=1: --pp 2 --nnodes 2, both processes on GPU 0"
      ONE_GPU=1 BUILD=/tmp/b TOK=$tok LOGS=$out/pp-nodes tests/gpu/tp_check.sh tiny qwen2-odd llama-3.2-1b llama-3.1-8b 2>&1 | tail -5 | tee -a "$log" ;;
    w1-1b-dp2) SERVER_ARGS="--dp 2 ${SERVER_ARGS:-}" bench llama-3.2-1b W1 ;;
    w1-8b-dp2) SERVER_ARGS="--dp 2 ${SERVER_ARGS:-}" bench llama-3.1-8b W1 ;;
    w1-8b-tp2) SERVER_ARGS="--tp 2 ${SERVER_ARGS:-}" bench llama-3.1-8b W1 ;;
    w1-8b-tp2-graphs) EVAL_CUDA_GRAPHS=1 SERVER_ARGS="--tp 2 ${SERVER_ARGS:-}" bench llama-3.1-8b W1 ;;
    w1-70b-tp2) SERVER_ARGS="--tp 2 ${SERVER_ARGS:-}" bench llama-3.1-70b W1 --num-prompts 256 ;;
    w1-70b-pp2) SERVER_ARGS="--pp 2 ${SERVER_ARGS:-}" bench llama-3.1-70b W1 --num-prompts 256 ;;
    w1-70b-pp2-nccl) EVAL_CUDA_PP_TRANSPORT=nccl SERVER_ARGS="--pp 2 ${SERVER_ARGS:-}" bench llama-3.1-70b W1 --num-prompts 256 ;;
    w1-8b-sync) SERVER_ARGS="--async-scheduling off ${SERVER_ARGS:-}" bench llama-3.1-8b W1 ;;
    w2-8b) bench llama-3.1-8b W2 ;;
    invariance-1b) say "--batch-invariant on llama-3.2-1b"; model_dir llama-3.2-1b >/dev/null
      python3 tests/emu/cuda_invariance_emu.py /tmp/b/server/evalserver "$out" \
        /tmp/models/llama-3.2-1b --contrast report 2>&1 | tail -8 | tee -a "$log" ;;
    w1-1b-invariant) SERVER_ARGS="--batch-invariant ${SERVER_ARGS:-}" bench llama-3.2-1b W1 ;;
    w1-8b-invariant) SERVER_ARGS="--batch-invariant ${SERVER_ARGS:-}" bench llama-3.1-8b W1 ;;
    w2-1b-small) bench llama-3.2-1b W2 --num-prompts 400 ;;
    w3-8b) bench llama-3.1-8b W3 ;;
    cmp-1b) hf_compare llama-3.2-1b bfloat16 ;;
    cmp-1b-f32) hf_compare llama-3.2-1b float32 ;;
    cmp-8b) hf_compare llama-3.1-8b bfloat16 ;;
    cmp-8b-f32) hf_compare llama-3.1-8b float32 ;;
    cmp-1b-high) hf_compare llama-3.2-1b float32 "--precision high" ;;
    cmp-8b-high) hf_compare llama-3.1-8b float32 "--precision high" ;;
    w1-1b-high) SERVER_ARGS="--precision high ${SERVER_ARGS:-}" bench llama-3.2-1b W1 ;;
    w1-8b-high) SERVER_ARGS="--precision high ${SERVER_ARGS:-}" bench llama-3.1-8b W1 ;;
    hf-1b) hf llama-3.2-1b W1 1024 256 ;;
    hf-8b) hf llama-3.1-8b W1 512 256 ;;
    hf-w2-8b) hf llama-3.1-8b W2 2000 32 ;;
    hf-w2-1b) hf llama-3.2-1b W2 2000 32 ;;
    *) say "unknown phase $phase" ;;
  esac
done
stop_server
say "done"
