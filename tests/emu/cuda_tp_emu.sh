#!/bin/sh
# cuda_tp_emu.sh MKMODEL EVALSERVER_EMU - the CUDA backend's tensor and
# pipeline parallelism on the CPU emulation (four emulated devices, the
# emulated NCCL of tests/emu/nccl.h), through the server's HTTP API, on
# two small random models: cuda_tp_emu.py runs the CPU backend, --tp 1,
# --tp 2, --pp 2 and --pp 2 over NCCL on both, --dp 2, --tp 2 --pp 2 (both
# transports) and --tp 2 with CUDA graphs on tiny, --tp 2 over two
# processes (NCCL between them) on both, --precision high on tiny
# and with --tp 2 on qwen2-odd, and
# compares them (tests/gpu/tp_compare.py's tolerances). Exit 77 (skipped)
# without the shared tokenizers or Python's requests, except under CI
# (the CI variable set), where a skip would hide the test: exit 1. Run
# from the repository root (meson's workdir).
set -eu
mkmodel=$1
server=$2
name=cuda_tp_emu
. tests/emu/emu_setup.sh
need_python_requests
"$mkmodel" --shape tiny --tokenizer "$tok" --out "$dir/tiny" >/dev/null
# biases, an untied LM head, a vocabulary and an MLP that do not split
# evenly over two ranks (the last rank's larger slices, zero padding)
"$mkmodel" --shape custom --arch qwen2 --hidden 64 --layers 2 --heads 4 --kv-heads 2 \
    --head-dim 16 --intermediate 131 --vocab 128257 --tokenizer "$tok" --out "$dir/qwen2-odd" \
    >/dev/null
"$py" tests/emu/cuda_tp_emu.py "$server" "$dir" "$dir/tiny:tp2,pp2,dp2,tp2pp2,tp2graphs,pp2nccl,tp2pp2nccl,pp2nodes,tp2nodes,high" "$dir/qwen2-odd:tp2,pp2,pp2nccl,pp2nodes,tp2nodes,tp2high"
