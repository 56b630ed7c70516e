#!/usr/bin/env bash
# tests/fuzz/run.sh - builds the fuzz targets (tests/fuzz/build.sh), replays
# every saved crash input of tests/fuzz/regressions/<target>/, then fuzzes
# each target for N seconds starting from its seed corpus.
#
# The seed corpus is copied to a scratch folder first, so a run never grows
# the repository; with FUZZ_KEEP_CORPUS=1 the corpus lives on in
# build-fuzz/corpus/<target>/ instead (for long campaigns). A crash, a
# sanitizer report, a timeout or an out-of-memory fails the run; the input
# that caused it is copied to build-fuzz/crashes/<target>/ and the log to
# build-fuzz/logs/<target>.log.
#
# Usage: tests/fuzz/run.sh [seconds-per-target] [target ...]
#        (default 10 seconds, every target); FUZZ_ARGS adds libFuzzer flags
#        (e.g. "-detect_leaks=0" in a campaign past a known leak).
# Exit:  0 all clean, 1 a build failure or a finding, 2 no fuzzer toolchain.
set -u

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
out=${FUZZ_BUILD_DIR:-$repo/build-fuzz}
secs=${1:-10}
shift $(($# > 0 ? 1 : 0))

# Input size bound per target: large enough for real headers, configs,
# prompts and templates, small enough to keep executions fast.
declare -A max_len=(
  [fuzz_json]=8192
  [fuzz_safetensors]=4096
  [fuzz_model_config]=4096
  [fuzz_tokenizer]=2048
  [fuzz_chat_template]=4096
  [fuzz_openai_request]=4096
  [fuzz_client_sse]=4096
  [fuzz_step_wire]=4096
)

if (($# > 0)); then targets=("$@"); else
  targets=()
  for f in "$here"/fuzz_*.c; do targets+=("$(basename "${f%.c}")"); done
fi

"$here/build.sh" "${targets[@]}"
rc=$?
if ((rc != 0)); then
  echo "run.sh: build failed (exit $rc)" >&2
  exit "$rc"
fi

mkdir -p "$out/logs"
failed=()
for t in "${targets[@]}"; do
  bin="$out/$t"
  log="$out/logs/$t.log"
  : >"$log"
  # 1. Replay the saved crash inputs: each must now run clean.
  reg="$here/regressions/$t"
  if [[ -d "$reg" ]] && compgen -G "$reg/*" >/dev/null; then
    if ! "$bin" -timeout=10 -rss_limit_mb=2048 "$reg"/* >>"$log" 2>&1; then
      echo "FAIL $t: a regression input crashes again (see $log)"
      tail -n 40 "$log"
      failed+=("$t"); continue
    fi
    echo "ok   $t: $(ls "$reg" | wc -l) regression inputs replayed"
  fi
  # 2. Fuzz for $secs seconds from the seeds.
  if [[ "${FUZZ_KEEP_CORPUS:-0}" == 1 ]]; then
    work="$out/corpus/$t"
    mkdir -p "$work"
  else
    work=$(mktemp -d "${TMPDIR:-/tmp}/fuzz-$t.XXXXXX")
  fi
  [[ -d "$here/corpus/$t" ]] && cp -n "$here/corpus/$t"/* "$work"/ 2>/dev/null
  crashes="$out/crashes/$t"
  mkdir -p "$crashes"
  "$bin" -max_total_time="$secs" -max_len="${max_len[$t]:-4096}" -timeout=10 \
    -rss_limit_mb=2048 -print_final_stats=1 -artifact_prefix="$crashes/" ${FUZZ_ARGS:-} "$work" \
    >>"$log" 2>&1
  st=$?
  [[ "${FUZZ_KEEP_CORPUS:-0}" == 1 ]] || rm -rf "$work"
  runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -n1)
  cov=$(grep -o 'cov: [0-9]*' "$log" | tail -n1)
  if ((st != 0)); then
    echo "FAIL $t: exit $st after ${runs:-?} runs; input kept in $crashes/, log $log"
    grep -E 'ERROR: |SUMMARY: |invariant failed|runtime error|^ *#[0-9]+ ' "$log" | head -n 30
    failed+=("$t")
  else
    echo "ok   $t: ${runs:-?} runs in ${secs}s, ${cov:-cov: ?}"
  fi
done

if ((${#failed[@]})); then
  echo "run.sh: FAILED: ${failed[*]}" >&2
  exit 1
fi
echo "run.sh: all ${#targets[@]} targets clean"
