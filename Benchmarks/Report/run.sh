#!/usr/bin/env bash
# Report reading (issue 11 item 1): the time of `cat MNT/kmemleak` with L symbolized records, the first
# read (the symbolizer loads each file's symbols and DWARF through elfutils, then memoizes per return
# address) and the next ones. Run from anywhere, as root with FUSE:
#
#   Benchmarks/Report/run.sh [L] [REPS]        (defaults 10000 5)
#
# The client is Benchmarks/ScanVsLSan/scan-client with 1000 live objects and L leaks (one call site, as a
# real leak is: 100k leaks from one site were issue 11's example). Binaries as in Benchmarks/daemon-run.sh
# (KMEMLEAKD, SHIM; CLIENT default .build/clients/scan-client); separate debug files from
# DEBUG_DIR (default /usr/lib/debug, where libc6-dbg puts libc's).
set -euo pipefail

L=${1:-10000}
REPS=${2:-5}
cd "$(dirname "$0")/../.."
source Benchmarks/daemon-run.sh report
CLIENT=${CLIENT:-.build/clients/scan-client}
DEBUG_DIR=${DEBUG_DIR:-/usr/lib/debug}
for f in "$KMEMLEAKD" "$SHIM" "$CLIENT"; do
    [[ -e $f ]] || { echo "missing $f (build: make shim clients; swift build -c release --product kmemleakd)" >&2; exit 1; }
done
# Older daemons have no --debug-file-directory (a "before" figure from an earlier build).
DEBUG_OPTION=()
"$KMEMLEAKD" --help 2>&1 | grep -q -- --debug-file-directory && DEBUG_OPTION=(--debug-file-directory "$DEBUG_DIR")

echo "# report reading: L=$L reps=$REPS nproc=$(nproc) load(1/5/15)=$(cut -d' ' -f1-3 /proc/loadavg) $KMEMLEAKD $(date -u +%FT%TZ)"
printf "rep\tfirst_cat_ms\tsecond_cat_ms\tthird_cat_ms\trecords\tbytes\n"
ms() { echo $(( ($2 - $1) / 1000000 )); }
for ((rep = 1; rep <= REPS; rep++)); do
    MNT=$TMP/mnt; RUN=$TMP/run
    mkdir -p "$MNT" "$RUN"
    "$KMEMLEAKD" --run-dir "$RUN" --min-age 0 --scan-period 0 --first-scan-delay 3600 "${DEBUG_OPTION[@]}" "$MNT" 2>"$TMP/daemon.log" &
    DPID=$!
    wait_for test -e "$MNT/kmemleak"
    rm -f "$TMP/in"; mkfifo "$TMP/in"
    LD_PRELOAD=$(realpath "$SHIM") KMEMLEAK_RUN_DIR=$RUN "$CLIENT" 1000 "$L" <"$TMP/in" >"$TMP/client.out" &
    CPID=$!
    exec 3>"$TMP/in"
    wait_for grep -qs '^READY' "$TMP/client.out"
    echo scan > "$MNT/kmemleak"; echo scan > "$MNT/kmemleak"
    t0=$(now); cat "$MNT/kmemleak" > "$TMP/report1"; t1=$(now)
    cat "$MNT/kmemleak" > /dev/null; t2=$(now)
    cat "$MNT/kmemleak" > /dev/null; t3=$(now)
    records=$(grep -c '^unreferenced object' "$TMP/report1" || true)
    printf "%d\t%d\t%d\t%d\t%d\t%d\n" "$rep" "$(ms "$t0" "$t1")" "$(ms "$t1" "$t2")" "$(ms "$t2" "$t3")" "$records" "$(stat -c %s "$TMP/report1")"
    [[ $rep == 1 ]] && { echo "# first record:"; sed -n '1,/^$/p' "$TMP/report1" | sed -n '1,16p' | sed 's/^/#   /'; }
    echo exit >&3; exec 3>&-; wait "$CPID" || true; CPID=
    kill -TERM "$DPID"; wait "$DPID" || true; DPID=
    grep -q " $MNT " /proc/mounts && fusermount3 -u "$MNT"
    rm -rf "$MNT" "$RUN"
done
