#!/usr/bin/env bash
# Run the whole test binary under valgrind memcheck; fail on any report
# (invalid access, uninitialised value, definite or indirect leak) and on any
# failing test.
#
#   .ci/valgrind.sh                        # builds in _build-ci/valgrind
#   VALGRIND_BUILD=/tmp/b .ci/valgrind.sh  # build (or reuse) another dir
#   CK_RUN_SUITE=queue .ci/valgrind.sh     # one suite (Check's variable)
#
# Tests run in one process (CK_FORK=no) so that valgrind follows every one
# of them. Check cannot time tests out without fork, so the whole run is
# bounded by `timeout` (VALGRIND_TIMEOUT, default 1500 s). The stress suite
# runs its full iteration count, as under the sanitizers (about 100 s in
# all on two cores); STRESS_ITERATIONS=n overrides it for a quicker look.
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
build=${VALGRIND_BUILD:-$here/_build-ci/valgrind}

if ! command -v valgrind >/dev/null; then
  echo "valgrind.sh: valgrind not found (install the Debian package valgrind)" >&2
  exit 1
fi

mkdir -p "$build"
cd "$build"
if [ ! -f Makefile ]; then
  (cd "$here" && { test -f configure || ./autogen.sh; })
  # -O1 -g: readable stacks; no sanitizer (valgrind would fight it).
  "$here/configure" -q CFLAGS="-O1 -g"
fi
make -j"$(nproc 2>/dev/null || echo 2)" >/dev/null
make -j"$(nproc 2>/dev/null || echo 2)" test/check_uvq >/dev/null

export CK_FORK=no
log=$build/valgrind.log
set +e
timeout "${VALGRIND_TIMEOUT:-1500}" \
  ./libtool --mode=execute valgrind --tool=memcheck --error-exitcode=99 \
    --leak-check=full --errors-for-leak-kinds=definite,indirect \
    --show-leak-kinds=definite,indirect --num-callers=30 \
    --suppressions="$here/.ci/valgrind.supp" \
    --log-file="$log" ./test/check_uvq
rc=$?
set -e

errors=$(grep -E '^==[0-9]+== ERROR SUMMARY' "$log" | tail -1 || true)
echo "valgrind: ${errors:-no summary}"
case $rc in
  0) echo "valgrind.sh: every test passed, no valgrind report"; exit 0 ;;
  99) echo "valgrind.sh: valgrind reported errors (log: $log):" >&2
      grep -E '^==[0-9]+== ' "$log" | head -200 >&2 ;;
  124) echo "valgrind.sh: timed out after ${VALGRIND_TIMEOUT:-1500} s" >&2 ;;
  *) echo "valgrind.sh: tests failed (exit status $rc); valgrind log: $log" >&2
     grep -E '^==[0-9]+== (Invalid|Conditional|Use of|.*definitely|.*indirectly)' \
       "$log" | head -50 >&2 || true ;;
esac
exit 1
