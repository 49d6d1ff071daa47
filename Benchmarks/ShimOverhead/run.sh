#!/usr/bin/env bash
# Shim overhead benchmark (make bench-shim). Not a timed test: it prints a table for BENCHMARKS.md.
# usage: run.sh <churn binary> <libkmemleak.so> <liblsan.so>
# env: SHIM_BASE=<another libkmemleak.so> adds configuration shim_base; OPS (default 10000000), REPS (default 5), SMALL_OPS for heaptrack/valgrind (default 1000000),
#      PEERS=0 to skip heaptrack and valgrind.
set -euo pipefail
CHURN=$(realpath "$1") SHIM=$(realpath "$2") LSAN=$3
OPS=${OPS:-10000000} REPS=${REPS:-5} SMALL_OPS=${SMALL_OPS:-1000000} PEERS=${PEERS:-1}
RUN_DIR=$(mktemp -d); trap 'rm -rf "$RUN_DIR"' EXIT
export KMEMLEAK_RUN_DIR=$RUN_DIR

minimum() { sort -n | head -1; }
# the figure is the thread CPU time per operation (cpu_ns_per_op): wall time on a shared machine is noise
nsop() { "$@" | sed -n 's/.*cpu_ns_per_op=\([0-9.]*\).*/\1/p'; }

declare -A R
. "$(dirname "$(realpath "$0")")/../peers.sh"
mapfile -t configs < <(with_base plain shim shim_libgcc shim_nounwind lsan lsan_full)
run_cfg() {
    case $1 in
    plain | shim | shim_base | lsan | lsan_full) peer_env "$1" && nsop env "${PEER_ENV[@]}" "$CHURN" "$2" ;;
    shim_libgcc) nsop env LD_PRELOAD="$SHIM" KMEMLEAK_UNWINDER=libgcc "$CHURN" "$2" ;;
    shim_nounwind) nsop env LD_PRELOAD="$SHIM" KMEMLEAK_UNWINDER=none "$CHURN" "$2" ;;
    esac
}
echo "machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(uname -r)"
echo "workload: $CHURN $OPS ops (free + malloc of 16..1039 B, 100k live, 3 calls deep), $REPS reps interleaved, median and min of CPU ns/op"
for ((r = 0; r < REPS; r++)); do
    for c in "${configs[@]}"; do
        ops=$OPS
        [[ $c == shim_libgcc || $c == lsan_full ]] && ops=$((OPS / 10))
        R[$c]+="$(run_cfg "$c" "$ops") "
    done
done
printf "%-16s %10s %10s %10s %10s\n" config "median" "overhead" "min" "overhead"
for c in "${configs[@]}"; do
    declare "MED_$c=$(echo "${R[$c]}" | tr ' ' '\n' | grep . | median)"
    declare "MIN_$c=$(echo "${R[$c]}" | tr ' ' '\n' | grep . | minimum)"
done
for c in "${configs[@]}"; do
    v="MED_$c"; v=${!v}; m="MIN_$c"; m=${!m}
    printf "%-16s %10.1f %10.1f %10.1f %10.1f   (ns/op, all: %s)\n" "$c" "$v" "$(echo "$v - $MED_plain" | bc -l)" \
        "$m" "$(echo "$m - $MIN_plain" | bc -l)" "${R[$c]}"
done
echo "lsan_full overhead / shim overhead (goal: 4 or more): median $(echo "($MED_lsan_full - $MED_plain) / ($MED_shim - $MED_plain)" | bc -l | cut -c1-5)"
echo "shim overhead / LSan overhead: median $(echo "($MED_shim - $MED_plain) / ($MED_lsan - $MED_plain)" | bc -l | cut -c1-5)," \
     "min $(echo "($MIN_shim - $MIN_plain) / ($MIN_lsan - $MIN_plain)" | bc -l | cut -c1-5)"

# paired per rep (the configurations of one rep ran back to back): (shim-plain)/(lsan-plain), median
paired=$(paste <(echo "${R[plain]}" | tr ' ' '\n' | grep .) <(echo "${R[shim]}" | tr ' ' '\n' | grep .) \
    <(echo "${R[lsan]}" | tr ' ' '\n' | grep .) | awk '{ if ($3 > $1) print ($2 - $1) / ($3 - $1) }' | median)
echo "paired per-rep ratio (median): $paired"

if [[ $PEERS == 1 ]]; then
    echo "peers on $SMALL_OPS ops (one run each, ns/op of the timed loop):"
    W=$(mktemp -d)
    pushd "$W" >/dev/null
    echo "  plain:     $(nsop env "$CHURN" "$SMALL_OPS")"
    echo "  shim:      $(nsop env LD_PRELOAD="$SHIM" "$CHURN" "$SMALL_OPS")"
    echo "  lsan:      $(nsop env LD_PRELOAD="$LSAN" LSAN_OPTIONS=detect_leaks=0 "$CHURN" "$SMALL_OPS")"
    command -v heaptrack >/dev/null && echo "  heaptrack: $(nsop heaptrack "$CHURN" "$SMALL_OPS" 2>/dev/null)"
    command -v valgrind >/dev/null && echo "  valgrind memcheck --leak-check=no: $(nsop valgrind -q --tool=memcheck --leak-check=no "$CHURN" "$SMALL_OPS" 2>/dev/null)"
    popd >/dev/null
    rm -rf "$W"
fi
