#!/usr/bin/env bash
# tests/fuzz/build.sh - builds the libFuzzer targets of tests/fuzz/ into
# build-fuzz/ (git-ignored), with clang, ASan and UBSan.
#
# The project's own sources are compiled once per group (base, tokenizer,
# template, model, ...) into a small archive with -fsanitize=fuzzer-no-link so
# that coverage reaches into them; each fuzz_*.c is then linked against the
# groups it needs. A group that does not compile (a module someone is still
# writing) makes only the targets that need it fail; the others are built.
#
# Usage: tests/fuzz/build.sh [target ...]     (default: every fuzz_*.c)
# Env:   FUZZ_CC (default clang), FUZZ_BUILD_DIR (default <repo>/build-fuzz), JOBS,
#        FUZZ_EXTRA_CFLAGS (appended; e.g. -fno-sanitize=float-cast-overflow to
#        let a campaign look past a known finding; use its own FUZZ_BUILD_DIR).
# Exit:  0 when every requested target was built, 1 otherwise, 2 when clang
#        or its fuzzer runtime is missing (the pytest wrapper skips on 2).
set -u

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
CC=${FUZZ_CC:-clang}
out=${FUZZ_BUILD_DIR:-$repo/build-fuzz}
jobs=${JOBS:-$(nproc)}

# Sources of each group, relative to the repository root.
declare -A group_src=(
  [base]="common/status.c common/strbuf.c common/json.c common/log.c"
  [model]="common/safetensors.c common/model_config.c"
  # Globs, so a module that grows a file is still built whole.
  [tok]="common/tokenizer*.c"
  [ct]="common/chat_template*.c"
  [cli]="client/http_client.c"
  # The server's API wing with the engine and the CPU backend (no main.c).
  [srv]="server/api/*.c server/engine/*.c server/backend/sampling.c server/backend/backend_cpu*.c"
  # The multi-node step wire; sampling.c for sp_defaults.
  [wire]="server/backend/step_wire.c server/backend/sampling.c"
)
# Groups each target links, in link order (dependants first).
declare -A target_groups=(
  [fuzz_json]="base"
  [fuzz_safetensors]="model base"
  [fuzz_model_config]="model base"
  [fuzz_tokenizer]="tok base"
  [fuzz_chat_template]="ct base"
  [fuzz_openai_request]="srv tok ct model base"
  [fuzz_client_sse]="cli base"
  [fuzz_step_wire]="wire base"
)

if ! command -v "$CC" >/dev/null 2>&1; then
  echo "build.sh: $CC not found (scripts/install-deps.sh installs clang)" >&2
  exit 2
fi
probe=$(mktemp -d)
trap 'rm -rf "$probe"' EXIT
printf 'int LLVMFuzzerTestOneInput(const char *d, unsigned long n){(void)d;(void)n;return 0;}\n' \
  >"$probe/p.c"
if ! "$CC" -fsanitize=fuzzer,address,undefined "$probe/p.c" -o "$probe/p" 2>"$probe/log"; then
  echo "build.sh: $CC cannot link -fsanitize=fuzzer (install libclang-rt-14-dev):" >&2
  cat "$probe/log" >&2
  exit 2
fi

pkgs="libcjson libpcre2-8 libutf8proc libmicrohttpd libcurl"
if ! pkg_cflags=$(pkg-config --cflags $pkgs) || ! pkg_libs=$(pkg-config --libs $pkgs); then
  echo "build.sh: pkg-config could not find $pkgs" >&2
  exit 1
fi

san="-fsanitize=address,undefined -fno-sanitize-recover=all"
cflags="-std=gnu11 -g -O1 -D_GNU_SOURCE -DHAVE_UTF8PROC=1 -Wall -Wextra -Wno-unused-parameter -Wno-psabi
        -I$repo/common -I$repo/server -I$repo/server/api -I$repo/server/engine
        -I$repo/server/backend -I$repo/client $pkg_cflags $san ${FUZZ_EXTRA_CFLAGS:-}"
# Targets find the shared folder (tokenizers) relative to the repository.
tcflags="-DFUZZ_REPO_DIR=\"$repo\""
mkdir -p "$out/obj"

# Compiles one group into $out/lib<group>.a; recompiles a source when it, or
# any header of common/, is newer than its object.
build_group() {
  local g=$1 src obj objs=() newest_h pids=() rc=0
  newest_h=$(ls -t "$repo"/common/*.h | head -n1)
  for src in $(cd "$repo" && echo ${group_src[$g]}); do
    obj="$out/obj/$(echo "${src%.c}" | tr / _).o"  # by path: no basename clashes
    objs+=("$obj")
    if [[ ! -f "$obj" || "$repo/$src" -nt "$obj" || "$newest_h" -nt "$obj" ]]; then
      # shellcheck disable=SC2086
      $CC $cflags -fsanitize=fuzzer-no-link -c "$repo/$src" -o "$obj.tmp" && mv "$obj.tmp" "$obj" &
      pids+=($!)
      if ((${#pids[@]} >= jobs)); then
        wait "${pids[0]}" || rc=1
        pids=("${pids[@]:1}")
      fi
    fi
  done
  for p in "${pids[@]}"; do wait "$p" || rc=1; done
  ((rc == 0)) || return 1
  rm -f "$out/lib$g.a"
  ar rcs "$out/lib$g.a" "${objs[@]}"
}

if (($# > 0)); then targets=("$@"); else
  targets=()
  for f in "$here"/fuzz_*.c; do targets+=("$(basename "${f%.c}")"); done
fi

declare -A group_ok=()
failed=()
for t in "${targets[@]}"; do
  if [[ -z "${target_groups[$t]+x}" || ! -f "$here/$t.c" ]]; then
    echo "build.sh: unknown target $t (add it to target_groups)" >&2
    failed+=("$t"); continue
  fi
  libs=() ok=1
  for g in ${target_groups[$t]}; do
    if [[ -z "${group_ok[$g]+x}" ]]; then
      if build_group "$g"; then group_ok[$g]=1; else group_ok[$g]=0
        echo "build.sh: group '$g' does not compile" >&2; fi
    fi
    ((group_ok[$g])) || ok=0
    libs+=("$out/lib$g.a")
  done
  if ((ok)); then
    # shellcheck disable=SC2086
    if $CC $cflags $tcflags -fsanitize=fuzzer "$here/$t.c" "${libs[@]}" $pkg_libs -lpthread -lm \
        -o "$out/$t"; then
      echo "built $out/$t"; continue
    fi
  fi
  echo "build.sh: FAILED to build $t" >&2
  failed+=("$t")
done

if ((${#failed[@]})); then
  echo "build.sh: not built: ${failed[*]}" >&2
  exit 1
fi
