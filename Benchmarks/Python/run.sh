#!/usr/bin/env bash
# Interpreter overhead benchmark (make bench-python), issue 10 goal 3. Not a timed test: it prints a
# table for BENCHMARKS.md. Debian's python3 with PYTHONMALLOC=malloc (every object a malloc) runs
# workload.py plain, under the shim and under LeakSanitizer's preload (default fast unwinder, and
# fast_unwind_on_malloc=0, which gives it full stacks), REPS times interleaved; figures are medians
# of CPU seconds (user + system) and of the peak RSS.
# env SHIM_BASE=<another libkmemleak.so> adds it as configuration shim_base.
# usage: run.sh <libkmemleak.so> <liblsan.so>   env: ROUNDS (default 30), REPS (default 3), PYTHON (default /usr/bin/python3)
set -euo pipefail
SHIM=$(realpath "$1") LSAN=$2
ROUNDS=${ROUNDS:-30} REPS=${REPS:-3} PY=${PYTHON:-/usr/bin/python3}
WORKLOAD=$(dirname "$(realpath "$0")")/workload.py
RUN_DIR=$(mktemp -d /dev/shm/kml-bench-python.XXXXXX); trap 'rm -rf "$RUN_DIR"' EXIT
export KMEMLEAK_RUN_DIR=$RUN_DIR PYTHONMALLOC=malloc
. "$(dirname "$(realpath "$0")")/../peers.sh"
mapfile -t configs < <(with_base plain shim lsan lsan_full)
run_cfg() { # config -> "cpu_seconds max_rss_mb"
    peer_env "$1"
    { /usr/bin/time -f '%U %S %M' env "${PEER_ENV[@]}" "$PY" "$WORKLOAD" "$ROUNDS" >/dev/null; } 2>&1 | tail -1 |
        awk '{printf "%.2f %.0f\n", $1 + $2, $3 / 1024}'
}
machine
echo "workload: PYTHONMALLOC=malloc $PY workload.py $ROUNDS, $REPS reps interleaved, medians"
declare -A C M
for ((r = 0; r < REPS; r++)); do
    for c in "${configs[@]}"; do
        read -r cpu rss < <(run_cfg "$c")
        C[$c]+="$cpu " M[$c]+="$rss "
    done
done
m() { tr ' ' '\n' <<<"$1" | grep . | median; }
pc=$(m "${C[plain]}")
printf "%-10s %8s %8s %10s\n" config "cpu s" "x plain" "max RSS MB"
for c in "${configs[@]}"; do
    printf "%-10s %8.2f %8.2f %10.0f   (cpu, all: %s)\n" "$c" "$(m "${C[$c]}")" "$(bc -l <<<"$(m "${C[$c]}") / $pc")" "$(m "${M[$c]}")" "${C[$c]}"
done
