#!/usr/bin/env bash
# Shim overhead benchmark (make bench-shim). Not a timed test: it prints a table for BENCHMARKS.md.
# usage: run.sh <churn binary> <libkmemleak.so> <liblsan.so>
# env: OPS (default 10000000), REPS (default 5), SMALL_OPS for heaptrack/valgrind (default 1000000),
#      PEERS=0 to skip heaptrack and valgrind.
set -euo pipefail
CHURN=$1 SHIM=$(realpath "$2") LSAN=$3
OPS=${OPS:-10000000} REPS=${REPS:-5} SMALL_OPS=${SMALL_OPS:-1000000} PEERS=${PEERS:-1}
RUN_DIR=$(mktemp -d); trap 'rm -rf "$RUN_DIR"' EXIT
export KMEMLEAK_RUN_DIR=$RUN_DIR

median() { sort -n | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
nsop() { "$@" | sed -n 's/.*ns_per_op=\([0-9.]*\).*/\1/p'; }

declare -A R
configs=(plain shim shim_libgcc shim_nounwind lsan)
run_cfg() {
    case $1 in
    plain) nsop env "$CHURN" "$2" ;;
    shim) nsop env LD_PRELOAD="$SHIM" "$CHURN" "$2" ;;
    shim_libgcc) nsop env LD_PRELOAD="$SHIM" KMEMLEAK_UNWINDER=libgcc "$CHURN" "$2" ;;
    shim_nounwind) nsop env LD_PRELOAD="$SHIM" KMEMLEAK_UNWINDER=none "$CHURN" "$2" ;;
    lsan) nsop env LD_PRELOAD="$LSAN" LSAN_OPTIONS=detect_leaks=0 "$CHURN" "$2" ;;
    esac
}
echo "machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(uname -r)"
echo "workload: $CHURN $OPS ops (free + malloc of 16..1039 B, 100k live, 3 calls deep), $REPS reps interleaved, median ns/op"
for ((r = 0; r < REPS; r++)); do
    for c in "${configs[@]}"; do
        ops=$OPS
        [[ $c == shim_libgcc ]] && ops=$((OPS / 10))
        R[$c]+="$(run_cfg "$c" "$ops") "
    done
done
printf "%-16s %10s %10s %12s\n" config ns/op overhead "x plain"
for c in "${configs[@]}"; do
    m=$(echo "${R[$c]}" | tr ' ' '\n' | grep . | median)
    declare "MED_$c=$m"
done
P=$MED_plain
for c in "${configs[@]}"; do
    v="MED_$c"; v=${!v}
    printf "%-16s %10.1f %10.1f %12.2f   (all: %s)\n" "$c" "$v" "$(echo "$v - $P" | bc -l)" "$(echo "$v / $P" | bc -l)" "${R[$c]}"
done
echo "shim overhead / LSan overhead: $(echo "($MED_shim - $P) / ($MED_lsan - $P)" | bc -l | cut -c1-5)"

if [[ $PEERS == 1 ]]; then
    echo "peers on $SMALL_OPS ops (one run each, wall time of the whole process incl. start-up):"
    t() { local s=$(date +%s.%N); "$@" >/dev/null 2>&1; echo "$(date +%s.%N) - $s" | bc -l | cut -c1-6; }
    echo "  plain:    $(t "$CHURN" "$SMALL_OPS") s"
    echo "  shim:     $(t env LD_PRELOAD="$SHIM" "$CHURN" "$SMALL_OPS") s"
    echo "  lsan:     $(t env LD_PRELOAD="$LSAN" LSAN_OPTIONS=detect_leaks=0 "$CHURN" "$SMALL_OPS") s"
    if command -v heaptrack >/dev/null; then
        HT=$(mktemp -d)
        echo "  heaptrack: $(cd "$HT" && t heaptrack "$CHURN" "$SMALL_OPS") s"
        rm -rf "$HT"
    fi
    if command -v valgrind >/dev/null; then
        echo "  valgrind memcheck (--leak-check=no): $(t valgrind --tool=memcheck --leak-check=no "$CHURN" "$SMALL_OPS") s"
    fi
fi
