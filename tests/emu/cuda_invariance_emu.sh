#!/bin/sh
# cuda_invariance_emu.sh MKMODEL EVALSERVER_EMU - --batch-invariant on the
# CUDA backend's CPU emulation, through the server's HTTP API:
# cuda_invariance_emu.py checks that one request answers bit for bit the
# same alone, chunked by a small step budget, among longer requests and
# from the prefix cache, and that without the flag the chunked run
# differs. The model has 64-wide heads and 4 query heads per KV head, so
# the prefill kernel and the tensor-core flash-decoding take part. Then
# all of it again with --precision high added to both modes. Exit 77
# (skipped) without the shared tokenizers or Python's requests, except
# under CI (the CI variable set), where a skip would hide the test: exit 1.
# Run from the repository root (meson's workdir).
set -eu
mkmodel=$1
server=$2
name=cuda_invariance_emu
. tests/emu/emu_setup.sh
need_python_requests
"$mkmodel" --shape custom --arch llama --hidden 128 --layers 2 --heads 4 --kv-heads 1 \
    --head-dim 64 --intermediate 256 --tokenizer "$tok" --out "$dir/hd64" >/dev/null
"$py" tests/emu/cuda_invariance_emu.py "$server" "$dir" "$dir/hd64"
# the same with --precision high in both modes (the flags compose)
"$py" tests/emu/cuda_invariance_emu.py "$server" "$dir" "$dir/hd64" --extra "--precision high"
