#!/bin/sh
# callgrind.sh: instructions per event for uvq and the hand-written
# references, a figure that stays put on a noisy machine.
#
# Usage (from the build directory):
#   sh bench/callgrind.sh [BENCH [N1 N2]]
#     BENCH  the uvq-bench program (default: bench/uvq-bench)
#     N1 N2  the two event counts (default: 200000 400000)
#   or `make bench-callgrind`.
#
# For each pattern it runs, under valgrind --tool=callgrind,
#   BENCH --callgrind PATTERN --events N
# (one producer thread, the loop thread only counting) for N1 and N2 events,
# reads the total instruction count of the whole process (every thread:
# producer and loop; user space only, the kernel is not seen) and prints
#   (Ir(N2) - Ir(N1)) / (N2 - N1)
# so that startup and teardown cancel out; then the same for the
# broadcaster fed through a queue (--callgrind broadcast-S, S = 1 and 100).
# A libtool wrapper script is run
# through `libtool --mode=execute` (LIBTOOL, default ./libtool).
set -eu

bench=${1:-bench/uvq-bench}
n1=${2:-200000}
n2=${3:-400000}
libtool=${LIBTOOL:-./libtool}

command -v valgrind >/dev/null 2>&1 || {
  echo "callgrind.sh: valgrind not found (Debian package: valgrind)" >&2
  exit 2
}
[ -e "$bench" ] || { echo "callgrind.sh: no $bench (run make)" >&2; exit 2; }
[ "$n2" -gt "$n1" ] || { echo "callgrind.sh: need N2 > N1" >&2; exit 2; }

# A libtool wrapper is a shell script: valgrind must run the real program.
run_prefix=""
if head -c 2 "$bench" | grep -q '^#!'; then
  run_prefix="$libtool --mode=execute"
fi

tmp=$(mktemp -d "${TMPDIR:-/tmp}/uvq-callgrind.XXXXXX")
trap 'rm -rf "$tmp"' EXIT INT TERM

# Prints the instructions callgrind collected for one run.
instructions() {
  log="$tmp/$1-$2.log"
  if ! $run_prefix valgrind --tool=callgrind \
         --callgrind-out-file="$tmp/$1-$2.out" \
         "$bench" --callgrind "$1" --events "$2" >"$tmp/$1-$2.txt" \
         2>"$log"; then
    echo "callgrind.sh: $1 with $2 events failed:" >&2
    cat "$tmp/$1-$2.txt" "$log" >&2
    exit 1
  fi
  sed -n 's/.*Collected : *\([0-9][0-9]*\).*/\1/p' "$log" | tail -n 1
}

printf '%-14s %14s %14s %14s\n' pattern "Ir($n1)" "Ir($n2)" "instr/event"
for p in uvq-unbounded uvq-bounded ref-malloc ref-ring; do
  a=$(instructions "$p" "$n1")
  b=$(instructions "$p" "$n2")
  per=$(awk -v a="$a" -v b="$b" -v n1="$n1" -v n2="$n2" \
          'BEGIN { printf "%.1f", (b - a) / (n2 - n1) }')
  printf '%-14s %14s %14s %14s\n' "$p" "$a" "$b" "$per"
  eval "per_$(echo "$p" | tr - _)=$per"
done

# The broadcaster fed by one producer thread through an unbounded queue
# (the benchmark's "thread" writer; the benchmark's sinks count and check
# the order), per event and per delivery (event x sink): the queue, the
# fan-out, the sinks and the release. No target; 100 sinks run a tenth of
# the events.
echo
printf '%-14s %14s %14s %14s %14s\n' case "Ir(small)" "Ir(large)" \
  "instr/event" "instr/delivery"
for s in 1 100; do
  m1=$n1
  m2=$n2
  if [ "$s" -gt 1 ]; then
    m1=$((n1 / 10))
    m2=$((n2 / 10))
  fi
  a=$(instructions "broadcast-$s" "$m1")
  b=$(instructions "broadcast-$s" "$m2")
  awk -v a="$a" -v b="$b" -v n1="$m1" -v n2="$m2" -v s="$s" 'BEGIN {
    e = (b - a) / (n2 - n1)
    printf "%-14s %14s %14s %14.1f %14.1f\n", "broadcast-" s, a, b, e, e / s
  }'
done

# Targets of issue 4: at most 60 instructions per event unbounded, 100
# bounded (blocking).
verdict() { # figure limit
  awk -v x="$1" -v l="$2" 'BEGIN { print (x <= l) ? "MET    " : "NOT MET" }'
}
echo
echo "Targets (issue 4)"
echo "  $(verdict "$per_uvq_unbounded" 60) uvq-unbounded <= 60 instructions/event: $per_uvq_unbounded"
echo "  $(verdict "$per_uvq_bounded" 100) uvq-bounded (blocking, capacity 1024) <= 100 instructions/event: $per_uvq_bounded"
awk -v u="$per_uvq_unbounded" -v b="$per_uvq_bounded" \
    -v m="$per_ref_malloc" -v r="$per_ref_ring" 'BEGIN {
  printf "  ratios: ref-malloc / uvq-unbounded %.2fx, ref-ring / uvq-unbounded %.2fx,\n", m / u, r / u
  printf "          ref-malloc / uvq-bounded %.2fx, ref-ring / uvq-bounded %.2fx\n", m / b, r / b
}'
