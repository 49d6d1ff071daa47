#!/usr/bin/env bash
# Pause (issue 10, goal 2): the longest time a client thread is stopped by a scan, measured from
# INSIDE the client by pause-client's gap thread, at N live objects with L new leak candidates per
# scan. Run from the repository root (root + FUSE):
#
#   Benchmarks/Pause/run.sh [N] [L] [REPS]        (defaults 1000000 1000 3)
#
# Binaries (override through the environment):
#   KMEMLEAKD  (default .build-bench/release/kmemleakd, else .build/release/kmemleakd)
#   SHIM       (default .build/release/libkmemleak.so)      build: make shim
#   CLIENT     (default .build/bench/pause-client)          build: make bench-pause
# Per repetition: a fresh daemon adopts a fresh client (scan #0: adoption, 1M new objects, none
# unreferenced); then three times {plant L leaks; settle scan; confirm scan}: as in the kernel, a new
# object's checksum changes in its first scan, which therefore spares it, so the settle scan has no
# candidates (no freeze) and the confirm scan has the L new ones (it freezes the client for the
# confirmation); last, one control scan with nothing new (no freeze). The gaps of the scans that do
# not freeze are the machine's scheduling noise, the floor under the confirm figures. The largest gap is read
# after each scan. Every planted leak must be reported. Raw figures go to $RESULTS (default
# /tmp/pause-results.tsv), the summary (medians and ranges) to stdout.
set -euo pipefail

N=${1:-1000000}
L=${2:-1000}
REPS=${3:-3}
cd "$(dirname "$0")/../.."
source Benchmarks/daemon-run.sh pause
CLIENT=${CLIENT:-.build/bench/pause-client}
RESULTS=${RESULTS:-/tmp/pause-results.tsv}
KEEP_LOGS=${KEEP_LOGS:-}          # a directory: copy each rep's daemon log there
for f in "$KMEMLEAKD" "$SHIM" "$CLIENT"; do
    [[ -e $f ]] || { echo "missing $f (build: see the header of $0)" >&2; exit 1; }
done
KMEMLEAKD=$(realpath "$KMEMLEAKD"); SHIM=$(realpath "$SHIM"); CLIENT=$(realpath "$CLIENT")

lines() { grep -c "$1" "$TMP/client.out" || true; }
# ask CMD REPLY_PREFIX : send a command to the client and wait for one more line starting with the prefix
ask() {
    local before; before=$(lines "^$2")
    echo "$1" >&3
    wait_for eval "[[ \$(grep -c '^$2' '$TMP/client.out') -gt $before ]]"
}
ms() { awk -v d="$1" 'BEGIN { printf "%.1f", d / 1e6 }'; }

echo "# pause: N=$N L=$L reps=$REPS nproc=$(nproc) load(1/5/15)=$(cut -d' ' -f1-3 /proc/loadavg) $(date -u +%FT%TZ)"
echo "# kmemleakd=$KMEMLEAKD"
printf 'rep\tmetric\tvalue\n' >"$RESULTS"
rec() { printf '%s\t%s\t%s\n' "$REP" "$1" "$2" >>"$RESULTS"; echo "  $1 = $2"; }

# scan_and_gap NAME : reset the gap, scan once, record the scan's wall time and the largest gap
scan_and_gap() {
    local t0 t1 gap
    ask gap GAP
    t0=$(now); echo scan >"$MNT/kmemleak"; t1=$(now)
    ask gap GAP
    gap=$(grep '^GAP' "$TMP/client.out" | tail -1)
    rec "$1_scan_ms" "$(ms $((t1 - t0)))"
    rec "$1_max_gap_ms" "$(ms "$(cut -d' ' -f2 <<<"$gap")")"
    rec "$1_gaps_over_1ms" "$(cut -d' ' -f3 <<<"$gap")"
}

rep() {
    local run=$TMP/run log=$TMP/daemon.log
    MNT=$TMP/mnt
    rm -rf "$run" "$MNT"; mkdir -p "$run" "$MNT"
    "$KMEMLEAKD" --run-dir "$run" --min-age 0 --scan-period 0 --first-scan-delay 3600 "$MNT" 2>"$log" &
    DPID=$!
    wait_for grep -qs 'serving ' "$log"
    rm -f "$TMP/in"; mkfifo "$TMP/in"
    LD_PRELOAD="$SHIM" KMEMLEAK_RUN_DIR="$run" "$CLIENT" "$N" "$L" <"$TMP/in" >"$TMP/client.out" &
    CPID=$!
    exec 3>"$TMP/in"
    wait_for grep -qs '^READY' "$TMP/client.out"
    scan_and_gap adoption
    local s
    for s in 1 2 3; do
        ask plant PLANTED
        # as in the kernel, an object whose checksum changed since the last scan (a new one's does)
        # is not reported by this scan: its leaks become candidates in the next one
        scan_and_gap "settle$s"
        scan_and_gap "confirm$s"
    done
    scan_and_gap control
    rec new_leak_log_lines "$(grep -c 'new suspected' "$log" || true)"
    grep '^LEAK ' "$TMP/client.out" | canon '^LEAK \(0x[0-9a-fA-F]*\)$' >"$TMP/leaks.expected"
    canon '^unreferenced object \(0x[0-9a-fA-F]*\) .*' <"$MNT/kmemleak" >"$TMP/leaks.reported"
    rec leaks_planted "$(wc -l <"$TMP/leaks.expected")"
    rec leaks_missed "$(comm -23 "$TMP/leaks.expected" "$TMP/leaks.reported" | wc -l)"
    rec leaks_unexpected "$(comm -13 "$TMP/leaks.expected" "$TMP/leaks.reported" | wc -l)"
    echo exit >&3; exec 3>&-
    wait "$CPID" || true; CPID=
    kill -TERM "$DPID"; wait "$DPID" || true; DPID=
    if grep -q " $MNT " /proc/mounts; then fusermount3 -u "$MNT"; fi
    MNT=
    if [[ -n $KEEP_LOGS ]]; then mkdir -p "$KEEP_LOGS"; cp "$log" "$KEEP_LOGS/daemon.rep$REP.log"; fi
}

for ((REP = 1; REP <= REPS; REP++)); do
    echo "rep $REP (load $(cut -d' ' -f1 /proc/loadavg))"
    rep
done

vals() { awk -F'\t' -v m="$1" 'NR > 1 && $2 ~ ("^" m "$") { print $3 }' "$RESULTS" | sort -g; }
median() { vals "$1" | awk '{ a[NR] = $1 } END { if (NR == 0) print "-"; else if (NR % 2) print a[(NR + 1) / 2]; else print (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }
range() { vals "$1" | awk 'NR == 1 { lo = $1 } { hi = $1 } END { if (NR) printf "%s-%s", lo, hi; else print "-" }'; }
stat() { echo "$(median "$1") ($(range "$1"))"; }
echo
echo "## pause: N=$N live objects, L=$L new candidates per confirming scan, $REPS reps; median (min-max)"
echo "| scan | max gap in the client, ms | gaps > 1 ms | scan wall ms |"
echo "| --- | ---: | ---: | ---: |"
printf '| adoption (no candidates) | %s | %s | %s |\n' "$(stat adoption_max_gap_ms)" "$(stat adoption_gaps_over_1ms)" "$(stat adoption_scan_ms)"
printf '| settle: planted leaks not yet candidates (no freeze), scans 1-3 pooled | %s | %s | %s |\n' "$(stat 'settle[123]_max_gap_ms')" "$(stat 'settle[123]_gaps_over_1ms')" "$(stat 'settle[123]_scan_ms')"
printf '| confirm: %s new candidates (freezes), scans 1-3 pooled | %s | %s | %s |\n' "$L" "$(stat 'confirm[123]_max_gap_ms')" "$(stat 'confirm[123]_gaps_over_1ms')" "$(stat 'confirm[123]_scan_ms')"
printf '| control: nothing new (no freeze) | %s | %s | %s |\n' "$(stat control_max_gap_ms)" "$(stat control_gaps_over_1ms)" "$(stat control_scan_ms)"
echo "leaks: planted $(stat leaks_planted), missed $(stat leaks_missed), unexpected $(stat leaks_unexpected)"
echo "load at end: $(cut -d' ' -f1-3 /proc/loadavg); raw figures: $RESULTS"
