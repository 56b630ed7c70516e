#!/usr/bin/env bash
# Prints the shared data folder (real tokenizers, MT-Bench data): the
# EVAL_SHARED_DIR variable, else ../shared beside the checkout, else /work/shared.
root=$(cd "$(dirname "$0")/.." && pwd)
for d in "${EVAL_SHARED_DIR:-}" "$root/../shared" /work/shared; do
  if [ -n "$d" ] && [ -d "$d/tokenizers" ]; then (cd "$d" && pwd); exit 0; fi
done
echo "find-shared: no shared folder with tokenizers/ found; set EVAL_SHARED_DIR" >&2
exit 1
