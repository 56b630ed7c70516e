#!/bin/sh
# cuda_backend_emu.sh MKMODEL TEST_GPU_EMU - the CUDA backend on the CPU
# emulation against the CPU backend (tests/gpu/test_gpu.c `model`, built
# as test_gpu_emu by tests/emu/meson.build) on a tiny random model: the
# plain path (no graphs, host sampler), then the defaults: decode through
# CUDA graphs (1 capture, 23 replays) with the GPU sampler, then the
# defaults with --precision high (near-fp32 bounds). Exit 77
# (skipped) without the shared tokenizers, except under CI (the CI variable
# set), where a skip would hide the test: exit 1.
# Run from the repository root (meson's workdir).
set -eu
mkmodel=$1
test_gpu=$2
name=cuda_backend_emu
. tests/emu/emu_setup.sh
"$mkmodel" --shape tiny --tokenizer "$tok" --out "$dir/model" >/dev/null
echo "== plain (EVAL_CUDA_GRAPHS=0 EVAL_CUDA_SAMPLER=host)"
EVAL_CUDA_GRAPHS=0 EVAL_CUDA_SAMPLER=host "$test_gpu" model "$dir/model"
# The defaults, graphs and the GPU sampler, in one run (every check of
# both: 1 capture and 23 replays, the tolerances with kern_sample drawing
# the sampled rows after each replayed step), which keeps the test near a
# minute in a debug build.
echo "== defaults (graphs, GPU sampler)"
"$test_gpu" model "$dir/model"
# --precision high (defaults otherwise): q, the KV cache and every GEMM
# input carry their bf16 remainders; test_gpu holds it to near-fp32 bounds
echo "== --precision high"
"$test_gpu" model "$dir/model" high
