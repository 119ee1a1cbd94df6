#!/usr/bin/env bash
# Install uvq into a temporary prefix and build programs against that
# installed copy only, the way a user of the library would:
#   - `make install` puts uvq.h, libuvq (shared and static) and uvq.pc there;
#   - the shared library exports uvq_* symbols and nothing else, and the
#     static one defines no global symbol outside the uvq_ namespace;
#   - samples/seed-example.c and samples/worker-bridge.c, compiled with
#     `cc x.c $(pkg-config --cflags --libs uvq)`, run against the installed
#     shared library, and the seed example also links statically;
#   - the README's C example compiles (warning-free) and runs;
#   - a C++ program can include uvq.h, sees the same struct sizes and links.
#
# Usage: .ci/installed-check.sh   (from anywhere)
# Needs a bootstrapped source tree (./autogen.sh) that is not configured in
# place (out-of-tree builds only: run `make distclean` first if it is).
# Builds in a temporary directory that is removed afterwards; set
# KEEP_WORKDIR=1 to keep it.
set -euo pipefail

srcdir=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cc=${CC:-cc}
cxx=${CXX:-c++}

if [ ! -x "$srcdir/configure" ]; then
  echo "installed-check: $srcdir/configure missing: run ./autogen.sh" >&2
  exit 1
fi
if [ -f "$srcdir/config.status" ]; then
  echo "installed-check: $srcdir is configured in place;" \
    "run 'make distclean' there first" >&2
  exit 1
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/uvq-installed.XXXXXX")
if [ "${KEEP_WORKDIR:-0}" = 1 ]; then
  echo "installed-check: keeping $work"
else
  trap 'rm -rf "$work"' EXIT
fi
prefix=$work/prefix
fail() { echo "installed-check: FAIL: $*" >&2; exit 1; }

echo "--- build and install into $prefix (warnings are errors)"
mkdir "$work/build"
(cd "$work/build" &&
  "$srcdir/configure" -q --prefix="$prefix" --enable-shared --enable-static &&
  make -s -j2 WARN_CFLAGS="-Wall -Wextra -Werror" &&
  make -s install) >"$work/build.log" 2>&1 || {
  tail -n 50 "$work/build.log"
  fail "build or install failed"
}

echo "--- installed files"
(cd "$prefix" && find . \( -type f -o -type l \) | sort)
for f in include/uvq.h lib/libuvq.so lib/libuvq.a lib/pkgconfig/uvq.pc; do
  [ -e "$prefix/$f" ] || fail "$f was not installed"
done

echo "--- exported symbols"
bad=$(nm -D --defined-only "$prefix/lib/libuvq.so" | awk '{print $3}' |
  grep -v '^uvq_' || true)
[ -z "$bad" ] || fail "libuvq.so exports symbols outside uvq_*: $bad"
nm -D --defined-only "$prefix/lib/libuvq.so" | awk '{print $3}' | tr '\n' ' '
echo
bad=$(nm -g --defined-only "$prefix/lib/libuvq.a" | awk 'NF == 3 {print $3}' |
  grep -v '^uvq_' || true)
[ -z "$bad" ] || fail "libuvq.a defines global symbols outside uvq_*: $bad"
echo "libuvq.so exports only uvq_* ($(nm -D --defined-only \
  "$prefix/lib/libuvq.so" | wc -l) symbols); libuvq.a defines no other global"

echo "--- pkg-config"
export PKG_CONFIG_PATH=$prefix/lib/pkgconfig
pkg-config --exists --print-errors uvq || fail "pkg-config cannot find uvq"
echo "uvq $(pkg-config --modversion uvq):" \
  "cflags '$(pkg-config --cflags uvq)' libs '$(pkg-config --libs uvq)'"

cd "$work"
echo "--- seed-example against the installed shared library"
# shellcheck disable=SC2046 # word splitting of pkg-config output is wanted
"$cc" -Wall -Wextra -Werror "$srcdir/samples/seed-example.c" \
  $(pkg-config --cflags --libs uvq) -o seed-shared
export LD_LIBRARY_PATH=$prefix/lib
# Captured first: grep -q may exit before ldd is done (pipefail).
deps=$(ldd ./seed-shared)
grep -q "libuvq.so.* => $prefix/lib/" <<<"$deps" ||
  fail "seed-shared does not load libuvq.so from $prefix/lib"
./seed-shared | tee seed-shared.out
grep -qx 'processed event2' seed-shared.out || fail "seed-example output"

echo "--- seed-example linked statically against libuvq.a"
# shellcheck disable=SC2046
"$cc" -Wall -Wextra -Werror "$srcdir/samples/seed-example.c" \
  $(pkg-config --cflags uvq) "$prefix/lib/libuvq.a" \
  $(pkg-config --libs libuv) -lpthread -o seed-static
deps=$(ldd ./seed-static)
if grep -q libuvq <<<"$deps"; then
  fail "seed-static still loads libuvq.so"
fi
./seed-static >seed-static.out
cmp seed-shared.out seed-static.out || fail "static and shared outputs differ"
echo "static build: same output"

echo "--- worker-bridge against the installed shared library"
# shellcheck disable=SC2046
"$cc" -Wall -Wextra -Werror "$srcdir/samples/worker-bridge.c" \
  $(pkg-config --cflags --libs uvq) -o worker-bridge
./worker-bridge -q -n 20000 -k 1

echo "--- the README's example (its first C code block)"
awk '/^```c$/ { inside = 1; next } /^```/ && inside { exit } inside' \
  "$srcdir/README.md" >readme-example.c
[ -s readme-example.c ] || fail "no \`\`\`c block in README.md"
# shellcheck disable=SC2046
"$cc" -Wall -Wextra -Werror readme-example.c \
  $(pkg-config --cflags --libs uvq) -o readme-example
./readme-example >readme-example.out
echo "ran: $(wc -l <readme-example.out) lines of output"

echo "--- C++ includes uvq.h"
if command -v "$cxx" >/dev/null 2>&1; then
  cat >sizes.inc <<'EOF'
#include <uvq.h>
#include <stdio.h>
int main(void) {
  printf("%d %d %d %d %d\n", (int) sizeof(uvq_queue_t),
         (int) sizeof(uvq_event_t), (int) sizeof(uvq_sink_t),
         (int) sizeof(uvq_queue_stats_t),
         uvq_strerror(UVQ_ECLOSED) != NULL);
  return 0;
}
EOF
  cp sizes.inc sizes.c
  cp sizes.inc sizes.cc
  # shellcheck disable=SC2046
  "$cc" -Wall -Wextra -Werror sizes.c $(pkg-config --cflags --libs uvq) \
    -o sizes-c
  # shellcheck disable=SC2046
  "$cxx" -Wall -Wextra -Werror sizes.cc $(pkg-config --cflags --libs uvq) \
    -o sizes-cxx
  c_sizes=$(./sizes-c)
  cxx_sizes=$(./sizes-cxx)
  [ "$c_sizes" = "$cxx_sizes" ] ||
    fail "C and C++ disagree on struct sizes: C '$c_sizes', C++ '$cxx_sizes'"
  echo "C and C++ agree (queue, event, sink, stats sizes; strerror):" \
    "$c_sizes"
else
  echo "no C++ compiler ($cxx): skipped"
fi

echo "installed-check: OK"
