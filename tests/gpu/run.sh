#!/bin/bash
# tests/gpu/run.sh - the device-only checks of the CUDA backend, one command.
# Run on a GPU machine from the repository root after building with CUDA:
#   BUILD=/tmp/b TOK=.device/tok/llama3_1 tests/gpu/run.sh [quick|all|bench|hf]
# Generates the random-weight models with mkmodel under $MODELS (default
# /tmp/models), runs the kernel checks, the CPU-vs-CUDA model comparison on
# the tiny and llama-3.2-1b shapes (with the defaults: decode steps from
# CUDA graphs, the GPU sampler, the AUTO decode-attention kernel; then
# without graphs, with the host sampler and the SIMT kernel; with
# rows-simt; with --precision high), compute-sanitizer on the tiny model
# (both precisions), and
# (all|bench) the decode benchmark at batch 256 with 512-token contexts on
# the 1B and 8B shapes, and (all|hf) the rule against Hugging Face
# transformers in float32 (tests/gpu/hf_compare.py: 64 prompts x 256
# positions, 0.02 nats mean, 0.1 max, no greedy flip over a 0.05 margin) on
# the 1B and 8B shapes, served with --precision high. Logs go to $LOGS
# (default $OUT or /tmp/gpu-logs).
set -uo pipefail
B=${BUILD:-build-cuda}
TOK=${TOK:-.device/tok/llama3_1}
M=${MODELS:-/tmp/models}
LOGS=${LOGS:-${OUT:-/tmp/gpu-logs}}
MODE=${1:-all}
case $MODE in quick | all | bench | hf) ;; *) echo "usage: tests/gpu/run.sh [quick|all|bench|hf]" >&2; exit 2 ;; esac
mkdir -p "$M" "$LOGS"
fail=0
run() { # name command...
    local name=$1; shift
    echo "=== $name: $*"
    local t0=$(date +%s)
    "$@" > "$LOGS/$name.log" 2>&1
    local rc=$?
    tail -n ${TAIL:-8} "$LOGS/$name.log"
    echo "=== $name: rc=$rc ($(( $(date +%s) - t0 )) s)"
    [ $rc -eq 0 ] || fail=1
}
model() { # shape
    [ -f "$M/$1/config.json" ] || "$B/tools/mkmodel" --shape "$1" --tokenizer "$TOK" --out "$M/$1" \
        > "$M/mkmodel-$1.log" 2>&1 || { echo "mkmodel $1 failed"; tail "$M/mkmodel-$1.log"; fail=1; }
}
hf_check() { # shape: evalserver --precision high on port 8190, hf_compare against it
    local port=8190 pid rc=1 up=0
    "$B/server/evalserver" --model "$M/$1" --device cuda --port $port --precision high \
        --gpu-memory-utilization 0.45 > "$LOGS/hf-server-$1.log" 2>&1 &
    pid=$!
    for _ in $(seq 1 600); do
        curl -sf "http://127.0.0.1:$port/health" > /dev/null && { up=1; break; }
        kill -0 $pid 2> /dev/null || break
        sleep 0.5
    done
    if [ $up = 1 ]; then
        python3 tests/gpu/hf_compare.py --model "$M/$1" --url "http://127.0.0.1:$port" \
            --prompts 64 --prompt-len 128 --gen-len 128 --hf-dtype float32 && rc=0
    else
        echo "evalserver on $1 did not become healthy:"
        tail -20 "$LOGS/hf-server-$1.log"
    fi
    kill -TERM $pid 2> /dev/null
    wait $pid 2> /dev/null || true
    return $rc
}
nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.mem --format=csv
if [ "$MODE" = all ] || [ "$MODE" = quick ]; then
    model tiny
    model llama-3.2-1b
    run kernels "$B/tests/gpu/test_gpu" kernels
    run model-tiny "$B/tests/gpu/test_gpu" model "$M/tiny"
    run model-1b "$B/tests/gpu/test_gpu" model "$M/llama-3.2-1b"
    # the defaults (graphs, GPU sampler, AUTO decode attention) above; the other paths here
    EVAL_CUDA_GRAPHS=0 EVAL_CUDA_SAMPLER=host run model-tiny-plain "$B/tests/gpu/test_gpu" model "$M/tiny"
    EVAL_CUDA_GRAPHS=0 EVAL_CUDA_SAMPLER=host EVAL_CUDA_DECODE_KERNEL=simt \
        run model-1b-plain "$B/tests/gpu/test_gpu" model "$M/llama-3.2-1b"
    EVAL_CUDA_DECODE_KERNEL=rows-simt run model-1b-rows-simt "$B/tests/gpu/test_gpu" model "$M/llama-3.2-1b"
    # --precision high: near-fp32 bounds (0.001 mean, 0.005 max)
    run model-1b-high "$B/tests/gpu/test_gpu" model "$M/llama-3.2-1b" high
    if command -v compute-sanitizer > /dev/null; then
        run sanitizer compute-sanitizer --tool memcheck --error-exitcode 3 \
            "$B/tests/gpu/test_gpu" model "$M/tiny"
        run sanitizer-high compute-sanitizer --tool memcheck --error-exitcode 3 \
            "$B/tests/gpu/test_gpu" model "$M/tiny" high
    fi
fi
if [ "$MODE" = all ] || [ "$MODE" = hf ]; then
    model llama-3.2-1b
    model llama-3.1-8b
    run hf-1b-high hf_check llama-3.2-1b
    run hf-8b-high hf_check llama-3.1-8b
fi
if [ "$MODE" = all ] || [ "$MODE" = bench ]; then
    model llama-3.2-1b
    model llama-3.1-8b
    TAIL=40 run attn-bench "$B/tests/gpu/test_gpu" attn-bench
    run bench-1b "$B/tests/gpu/test_gpu" bench "$M/llama-3.2-1b" 256 512 40
    run bench-8b "$B/tests/gpu/test_gpu" bench "$M/llama-3.1-8b" 256 512 40
    EVAL_CUDA_DECODE_MMA=1 run bench-8b-mma "$B/tests/gpu/test_gpu" bench "$M/llama-3.1-8b" 256 512 40
    EVAL_CUDA_DECODE_MMA=1 run model-1b-mma "$B/tests/gpu/test_gpu" model "$M/llama-3.2-1b"
    TAIL=40 EVAL_CUDA_PROFILE=1 run profile-1b "$B/tests/gpu/test_gpu" bench "$M/llama-3.2-1b" 256 512 20
    TAIL=40 EVAL_CUDA_PROFILE=1 run profile-8b "$B/tests/gpu/test_gpu" bench "$M/llama-3.1-8b" 256 512 20
fi
echo "gpu tests: $([ $fail -eq 0 ] && echo PASS || echo FAIL)"
exit $fail
