#!/usr/bin/env bash
# The daemon's memory over time (issue 10 goal 5): where its peak is set. One kmemleakd, one scan-client
# with N live objects (HEAP as for run.sh), SCANS scans; the daemon's VmRSS, VmHWM, RssAnon and RssFile
# are sampled every 10 ms from before the first scan (adoption happens there) to the end. Run from the
# repository root (needs root + FUSE):
#
#   Benchmarks/ScanVsLSan/memory-timeline.sh [N] [SCANS]        (defaults 1000000 3)
#
# Prints one line each time VmHWM has grown by 2 MiB or a scan ended (seconds since the first scan, kB),
# then the peak's phase. HWM well above RSS while objects are being registered means a growing array's
# old and new copies (see BENCHMARKS.md). The raw samples go to $SAMPLES (default /tmp/memory-timeline.txt).
set -euo pipefail

N=${1:-1000000}
SCANS=${2:-3}
cd "$(dirname "$0")/../.."
source Benchmarks/daemon-run.sh memory-timeline
CLIENT=${CLIENT:-.build/clients/scan-client}
SAMPLES=${SAMPLES:-/tmp/memory-timeline.txt}
HEAP=${HEAP:-real}
for f in "$KMEMLEAKD" "$SHIM" "$CLIENT"; do
    [[ -e $f ]] || { echo "missing $f (build: see Benchmarks/ScanVsLSan/run.sh)" >&2; exit 1; }
done

run=$TMP/run mnt=$TMP/mnt log=$TMP/daemon.log
mkdir -p "$run" "$mnt"; MNT=$mnt
"$KMEMLEAKD" --run-dir "$run" --min-age 0 --scan-period 0 --first-scan-delay 3600 "$mnt" 2>"$log" &
DPID=$!
wait_for grep -qs 'serving ' "$log"
mkfifo "$TMP/in"
env LD_PRELOAD="$SHIM" KMEMLEAK_RUN_DIR="$run" "$CLIENT" "$N" 1000 ${HEAP:+"$HEAP"} <"$TMP/in" >"$TMP/client.out" &
CPID=$!
exec 3>"$TMP/in"
wait_for grep -qs '^READY' "$TMP/client.out"

sample() {
    while [[ -e "$TMP/sampling" ]]; do
        printf '%s %s\n' "$(date +%s.%N)" \
            "$(awk '/^VmRSS:|^VmHWM:|^RssAnon:|^RssFile:/ { printf "%s %s ", $1, $2 }' "/proc/$DPID/status" 2>/dev/null || true)"
        sleep 0.01
    done >"$SAMPLES"
}
touch "$TMP/sampling"
sample &
SAMPLER=$!
for ((s = 1; s <= SCANS; s++)); do
    echo scan >"$mnt/kmemleak"
    echo "$(date +%s.%N) SCAN_END $s" >>"$TMP/marks"
done
rm -f "$TMP/sampling"; wait "$SAMPLER"

echo "# memory timeline: heap=$HEAP N=$N scans=$SCANS load=$(cut -d' ' -f1-3 /proc/loadavg) kmemleakd=$KMEMLEAKD"
sort -n "$SAMPLES" "$TMP/marks" | awk -v scans="$SCANS" '
    $2 == "SCAN_END" {
        if (t0 != "") printf "%7.2f s  scan %d ended\n", $1 - t0, $3
        phase = $3 < scans ? "scan " ($3 + 1) : "after the scans"
        next
    }
    {
        for (i = 2; i < NF; i += 2) v[$i] = $(i + 1)
        if (t0 == "") { t0 = $1; phase = "scan 1 (adoption: the first sync, then the scan)" }
        if (v["VmHWM:"] >= last + 2048) {
            printf "%7.2f s  VmHWM %d  VmRSS %d  RssAnon %d  RssFile %d kB\n", $1 - t0, v["VmHWM:"], v["VmRSS:"], v["RssAnon:"], v["RssFile:"]
            last = v["VmHWM:"]
        }
        if (v["VmHWM:"] > peak) { peak = v["VmHWM:"]; peakPhase = phase }
    }
    END { printf "peak VmHWM %d kB, reached during %s\n", peak, peakPhase }'
stop_client() { echo exit >&3; exec 3>&-; wait "$CPID" || true; CPID=; }
stop_client
