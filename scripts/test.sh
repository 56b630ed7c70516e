#!/usr/bin/env bash
# The test command (README, .ci/run): installs what the tests need, builds
# three times (AddressSanitizer+UBSan for the C unit tests; ThreadSanitizer
# for those with threads; an optimised build,
# with the CUDA parts where nvcc exists, for everything driven from Python)
# and runs every suite. Exits non-zero on the first failing suite.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
jobs=$(nproc)

scripts/install-deps.sh
# The real tokenizers and MT-Bench data the tests check against; C and
# Python tests alike read them through this variable.
EVAL_SHARED_DIR=$(scripts/find-shared.sh)
export EVAL_SHARED_DIR
if [ ! -x .venv/bin/python ]; then python3 -m venv .venv; fi
.venv/bin/pip install -q --disable-pip-version-check -r tests/requirements.txt

echo "== C unit tests (ASan + UBSan)"
if [ ! -f build-asan/build.ninja ]; then
  meson setup build-asan -Db_sanitize=address,undefined -Db_lundef=false -Dcuda=disabled \
    -Dwerror=true >/dev/null
fi
ninja -C build-asan -j "$jobs"
ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
  meson test -C build-asan --print-errorlogs --num-processes "$jobs"

echo "== threaded C unit tests under ThreadSanitizer (engine thread + step runner, router, collectives, node workers, tp, pp)"
if [ ! -f build-tsan/build.ninja ]; then
  meson setup build-tsan -Db_sanitize=thread -Dbuildtype=debugoptimized -Dcuda=disabled \
    -Dwerror=true >/dev/null
fi
tsan_tests=(engine router comm comm_tcp node_worker backend_tp backend_pp engine_cpu)
ninja -C build-tsan -j "$jobs" tools/mkmodel "${tsan_tests[@]/#/tests/unit/test_}"
TSAN_OPTIONS=halt_on_error=1 \
  meson test -C build-tsan --no-rebuild --print-errorlogs --num-processes "$jobs" "${tsan_tests[@]}"

echo "== optimised build (CUDA parts compiled where nvcc is found)"
if [ ! -f build/build.ninja ]; then
  meson setup build -Dbuildtype=release -Dcuda=auto -Dwerror=true >/dev/null
fi
ninja -C build -j "$jobs"

echo "== the CUDA backend on the CPU emulation against the CPU backend, then --tp/--pp, then --batch-invariant (tests/emu; too slow under ASan)"
meson test -C build --print-errorlogs --num-processes "$jobs" cuda_backend_emu cuda_tp_emu \
  cuda_invariance_emu

echo "== Python-driven suites (real tokenizers, jinja2, openai SDK, curl)"
export EVAL_BUILD_DIR="$root/build"
.venv/bin/python -m pytest -q -x tests "$@"
