# emu_setup.sh - sourced by the emulation tests' drivers (cuda_backend_emu.sh,
# cuda_tp_emu.sh, cuda_invariance_emu.sh), from the repository root, with `name` set: defines
# skip MESSAGE (exit 77, skipped; exit 1 under CI, where a skip would hide
# the test), finds the shared Llama-3.1 tokenizer ($tok) or skips, and makes
# a scratch directory ($dir) removed on exit; need_python_requests sets $py
# to a Python that has requests ($PYTHON, else the venv's, else python3)
# or skips.
skip() {
    echo "$1"
    if [ -n "${CI:-}" ]; then exit 1; fi
    exit 77
}
shared=$(scripts/find-shared.sh 2>/dev/null) || skip "no shared tokenizers"
tok="$shared/tokenizers/llama3_1"
[ -d "$tok" ] || skip "no $tok"
dir=$(mktemp -d "${TMPDIR:-/tmp}/$name.XXXXXX")
trap 'rm -rf "$dir"' EXIT
need_python_requests() {
    py=${PYTHON:-}
    if [ -z "$py" ]; then
        if [ -x .venv/bin/python ]; then py=.venv/bin/python; else py=python3; fi
    fi
    "$py" -c 'import requests' 2>/dev/null || skip "no Python requests ($py)"
}
