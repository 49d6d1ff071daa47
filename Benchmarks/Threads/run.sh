#!/usr/bin/env bash
# Thread scaling benchmark (make bench-threads), issue 10 goal 6. Not a timed test: it prints a
# table for BENCHMARKS.md. The same churn with 1 and with 8 threads (each thread its own live
# window), plain, under the shim and under LeakSanitizer's preload (default and full unwinding),
# REPS times interleaved; figures are medians of process CPU ns per operation. "scaling" is the
# 8-thread figure over the 1-thread one: 1.0 means the threads cost no more per operation than one.
# env SHIM_BASE=<another libkmemleak.so> adds it as configuration shim_base.
# usage: run.sh <threads binary> <libkmemleak.so> <liblsan.so>   env: OPS (per thread, default 500000), REPS (default 5)
set -euo pipefail
BIN=$(realpath "$1") SHIM=$(realpath "$2") LSAN=$3
OPS=${OPS:-500000} REPS=${REPS:-5}
RUN_DIR=$(mktemp -d /dev/shm/kml-bench-threads.XXXXXX); trap 'rm -rf "$RUN_DIR"' EXIT
export KMEMLEAK_RUN_DIR=$RUN_DIR
. "$(dirname "$(realpath "$0")")/../peers.sh"
mapfile -t configs < <(with_base plain shim lsan lsan_full)
run_cfg() { # config threads ops -> cpu_ns_per_op
    peer_env "$1"
    env "${PEER_ENV[@]}" "$BIN" "$2" "$3" | sed -n 's/.*cpu_ns_per_op=\([0-9.]*\).*/\1/p'
}
machine
echo "workload: $BIN, $OPS ops per thread (free + malloc of 16..1039 B, 10k live per thread), $REPS reps interleaved, median CPU ns/op"
declare -A R
for ((r = 0; r < REPS; r++)); do
    for c in "${configs[@]}"; do
        ops=$OPS
        [[ $c == lsan_full ]] && ops=$((OPS / 10))
        for n in 1 8; do R[$c.$n]+="$(run_cfg "$c" "$n" "$ops") "; done
    done
done
printf "%-10s %10s %10s %8s %12s %12s\n" config "1 thread" "8 threads" scaling "x plain (1)" "x plain (8)"
m() { tr ' ' '\n' <<<"${R[$1]}" | grep . | median; }
p1=$(m plain.1) p8=$(m plain.8)
for c in "${configs[@]}"; do
    a=$(m "$c.1") b=$(m "$c.8")
    printf "%-10s %10.1f %10.1f %8.2f %12.2f %12.2f   (8 threads, all: %s)\n" "$c" "$a" "$b" "$(bc -l <<<"$b / $a")" \
        "$(bc -l <<<"$a / $p1")" "$(bc -l <<<"$b / $p8")" "${R[$c.8]}"
done
