#!/usr/bin/env bash
# Build the libFuzzer harnesses with clang (outside automake) and run each for
# a bounded time from its seed corpus; fail on any crash or model mismatch.
#
#   .ci/fuzz.sh                 # 60 s per harness
#   FUZZ_SECONDS=600 .ci/fuzz.sh
#   FUZZ_BUILD=/tmp/fuzz .ci/fuzz.sh   # where to build (default: a temp dir)
#
# New inputs found during the run go to the build directory, never into the
# repository's corpus (add interesting ones there by hand).
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
seconds=${FUZZ_SECONDS:-60}
build=${FUZZ_BUILD:-$(mktemp -d /tmp/uvq-fuzz.XXXXXX)}
cc=${FUZZ_CC:-clang}
mkdir -p "$build"

if ! command -v "$cc" >/dev/null; then
  echo "fuzz.sh: $cc not found (install the Debian package clang)" >&2
  exit 1
fi

cflags=(-g -O1 -std=c11 -D_GNU_SOURCE -Wall -Wextra
        -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined
        -I"$here/include" $(pkg-config --cflags libuv))
libs=($(pkg-config --libs libuv) -lpthread)

status=0
for src in "$here"/fuzz/fuzz_*.c; do
  name=$(basename "$src" .c)          # fuzz_queue
  corpus="$here/fuzz/corpus/${name#fuzz_}"
  echo "== $name: build"
  "$cc" "${cflags[@]}" "$src" "$here"/lib/*.c "${libs[@]}" -o "$build/$name"
  mkdir -p "$build/$name.corpus" "$build/$name.artifacts"
  echo "== $name: ${seconds}s from $corpus"
  if ! ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 \
       UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
       "$build/$name" -max_total_time="$seconds" -print_final_stats=1 \
         -artifact_prefix="$build/$name.artifacts/" \
         "$build/$name.corpus" "$corpus" >"$build/$name.log" 2>&1; then
    status=1
    echo "== $name: FAILED; the input is in $build/$name.artifacts/:" >&2
    ls "$build/$name.artifacts" >&2 || true
    tail -40 "$build/$name.log" >&2
  fi
  grep -E '^stat::(number_of_executed_units|average_exec_per_sec|new_units_added)' \
    "$build/$name.log" || true
  grep -E '^Done [0-9]+ runs' "$build/$name.log" || true
done
if [ "$status" -eq 0 ]; then
  echo "fuzz.sh: no crash, no model mismatch"
fi
exit $status
