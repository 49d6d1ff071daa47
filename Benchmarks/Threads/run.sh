#!/usr/bin/env bash
# Thread scaling benchmark (make bench-threads), issue 10 goal 6. Not a timed test: it prints a
# table for BENCHMARKS.md. The same churn with 1 and with 8 threads (each thread its own live
# window), plain, under the shim and under LeakSanitizer's preload (default and full unwinding),
# REPS times interleaved; figures are medians of process CPU ns per operation. "scaling" is the
# 8-thread figure over the 1-thread one: 1.0 means the threads cost no more per operation than one.
# "switches (8)": the median of the 8-thread runs' context switches inside the timed loops, voluntary
# (blocked) + involuntary (preempted, or sched_yield: a spinning lock waiter).
# env SHIM_BASE=<another libkmemleak.so> adds it as configuration shim_base.
# usage: run.sh <threads binary> <libkmemleak.so> <liblsan.so>   env: OPS (per thread, default 500000), REPS (default 5)
set -euo pipefail
BIN=$(realpath "$1") SHIM=$(realpath "$2") LSAN=$3
OPS=${OPS:-500000} REPS=${REPS:-5}
RUN_DIR=$(mktemp -d /dev/shm/kml-bench-threads.XXXXXX); trap 'rm -rf "$RUN_DIR"' EXIT
export KMEMLEAK_RUN_DIR=$RUN_DIR
. "$(dirname "$(realpath "$0")")/../peers.sh"
mapfile -t configs < <(with_base plain shim lsan lsan_full)
run_cfg() { # config threads ops -> "cpu_ns_per_op switches"
    peer_env "$1"
    env "${PEER_ENV[@]}" "$BIN" "$2" "$3" |
        sed -n 's/.*cpu_ns_per_op=\([0-9.]*\) voluntary_switches=\([0-9]*\) involuntary_switches=\([0-9]*\).*/\1 \2 \3/p' |
        awk '{print $1, $2 + $3}'
}
machine
echo "workload: $BIN, $OPS ops per thread (free + malloc of 16..1039 B, 10k live per thread), $REPS reps interleaved, median CPU ns/op"
declare -A R S
for ((r = 0; r < REPS; r++)); do
    for c in "${configs[@]}"; do
        ops=$OPS
        [[ $c == lsan_full ]] && ops=$((OPS / 10))
        for n in 1 8; do
            read -r ns sw < <(run_cfg "$c" "$n" "$ops")
            R[$c.$n]+="$ns " S[$c.$n]+="$sw "
        done
    done
done
printf "%-10s %10s %10s %8s %12s %12s %13s\n" config "1 thread" "8 threads" scaling "x plain (1)" "x plain (8)" "switches (8)"
m() { tr ' ' '\n' <<<"${R[$1]}" | grep . | median; }
ms() { tr ' ' '\n' <<<"${S[$1]}" | grep . | median; }
p1=$(m plain.1) p8=$(m plain.8)
for c in "${configs[@]}"; do
    a=$(m "$c.1") b=$(m "$c.8")
    printf "%-10s %10.1f %10.1f %8.2f %12.2f %12.2f %13.0f   (8 threads, all: %s; switches: %s)\n" "$c" "$a" "$b" \
        "$(bc -l <<<"$b / $a")" "$(bc -l <<<"$a / $p1")" "$(bc -l <<<"$b / $p8")" "$(ms "$c.8")" "${R[$c.8]}" "${S[$c.8]}"
done
