#!/usr/bin/env bash
# Tokenizer encode speed, C (evaltok --bench) vs Python `tokenizers` with one
# thread, on the same ~10 MB of deterministic mixed text, for the shared
# tokenizers. Prints MB/s for both and the ratio (C / tokenizers).
# Usage: scripts/bench_tokenizer.sh [MB]   (env: EVAL_SHARED_DIR, PYTHON, BUILD)
set -euo pipefail
cd "$(dirname "$0")/.."
build=${BUILD:-build-bench-tok}
py=${PYTHON:-}
if [ -z "$py" ]; then
  if [ -x .venv/bin/python ]; then py=.venv/bin/python; else py=python3; fi
fi
shared=${EVAL_SHARED_DIR:-}
for c in "$shared" ../shared /work/shared; do
  if [ -n "$c" ] && [ -d "$c/tokenizers" ]; then shared=$c; break; fi
done
[ -d "$shared/tokenizers" ] || { echo "shared/tokenizers not found; set EVAL_SHARED_DIR" >&2; exit 1; }
if [ ! -f "$build/build.ninja" ]; then
  meson setup "$build" -Dbuildtype=release -Dcuda=disabled >/dev/null
fi
ninja -C "$build" tools/evaltok >/dev/null
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"
TOKENIZERS_PARALLELISM=false RAYON_NUM_THREADS=1 \
  "$py" tests/tokenizer/bench_tokenizer.py --evaltok "$build/tools/evaltok" --shared "$shared" \
  --mb "${1:-10}"
