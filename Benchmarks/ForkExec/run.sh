#!/usr/bin/env bash
# fork+exec benchmark (make bench-fork), issue 10 goal 4. Not a timed test: it prints a table for
# BENCHMARKS.md. A bash loop of N command substitutions `$(true)` (fork, no exec: `true` is a
# builtin) and N `$(/bin/true)` (fork + exec), plain, under the shim and under LeakSanitizer's
# preload, REPS times interleaved; the figures are the medians of wall time and of CPU time (user +
# system of bash and all its children).
# env SHIM_BASE=<another libkmemleak.so> adds it as configuration shim_base.
# usage: run.sh <libkmemleak.so> <liblsan.so>    env: N (default 1000), REPS (default 5)
set -euo pipefail
SHIM=$(realpath "$1") LSAN=$2
N=${N:-1000} REPS=${REPS:-5}
RUN_DIR=$(mktemp -d /dev/shm/kml-bench-fork.XXXXXX); trap 'rm -rf "$RUN_DIR"' EXIT
export KMEMLEAK_RUN_DIR=$RUN_DIR
BASH_BIN=$(command -v bash)

. "$(dirname "$(realpath "$0")")/../peers.sh"
# prints "wall cpu" in seconds for one run of the loop body $1 under configuration $2
run_once() {
    local out
    peer_env "$2"
    out=$( { /usr/bin/time -f '%e %U %S' env "${PEER_ENV[@]}" "$BASH_BIN" -c "for ((i = 0; i < $N; i++)); do x=$1; done" >/dev/null; } 2>&1 | tail -1)
    awk '{printf "%.3f %.3f\n", $1, $2 + $3}' <<<"$out"
}
mapfile -t configs < <(with_base plain shim lsan)
machine
echo "workload: bash loop of $N command substitutions, $REPS reps interleaved, medians (s)"
for body in '$(true)' '$(/bin/true)'; do
    declare -A W=() C=()
    for ((r = 0; r < REPS; r++)); do
        for c in "${configs[@]}"; do
            read -r w cpu < <(run_once "$body" "$c")
            W[$c]+="$w " C[$c]+="$cpu "
        done
    done
    printf "%-14s %-8s %8s %8s %8s %8s\n" "loop body" config wall "x plain" cpu "x plain"
    mw=$(tr ' ' '\n' <<<"${W[plain]}" | grep . | median) mc=$(tr ' ' '\n' <<<"${C[plain]}" | grep . | median)
    for c in "${configs[@]}"; do
        w=$(tr ' ' '\n' <<<"${W[$c]}" | grep . | median) cpu=$(tr ' ' '\n' <<<"${C[$c]}" | grep . | median)
        printf "%-14s %-8s %8.3f %8.2f %8.3f %8.2f   (wall: %s)\n" "$body" "$c" "$w" "$(bc -l <<<"$w / $mw")" \
            "$cpu" "$(bc -l <<<"$cpu / $mc")" "${W[$c]}"
    done
done
