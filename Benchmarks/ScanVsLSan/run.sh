#!/usr/bin/env bash
# Scan vs LeakSanitizer (issue 4): the time of one kmemleakd scan of a client with N live objects and
# L leaks, against LeakSanitizer's __lsan_do_recoverable_leak_check() on the same heap, plus the
# daemon's memory per tracked object. Run from the repository root:
#
#   Benchmarks/ScanVsLSan/run.sh [N] [L] [REPS]         (defaults 1000000 1000 3; needs root + FUSE)
#
# HEAP=real (issue 10) gives the client a realistic heap (mixed sizes, pointer-like words, text; see
# scan-client.c); the default is issue 4's zero-filled heap. CLIENT=Benchmarks/ScanVsLSan/py-heap.py
# (python3, PYTHONMALLOC=malloc) and CLIENT=Benchmarks/ScanVsLSan/pl-heap.pl (Debian's perl; needs
# FFI::Platypus, Debian libffi-platypus-perl) are interpreter heaps with the same protocol; N is the
# number of live malloc blocks they aim at (the daemon's count is in the "per object it tracks" line).
#
# Binaries (override through the environment):
#   KMEMLEAKD  (default .build-bench/release/kmemleakd, else .build/release/kmemleakd)
#   SHIM       (default .build/release/libkmemleak.so)         build: make shim clients
#   CLIENT     (default .build/clients/scan-client)
#   LSAN_SO    (default /usr/lib/x86_64-linux-gnu/liblsan.so.0)
#   LSAN_INIT_SO  preloaded after LSAN_SO (default: libstdc++.so.6 for a .pl client, see below)
# SCAN_BUDGET (default 3600 s) is passed as the daemon's --client-scan-budget; a rep whose scan went over it
# is flagged (daemon_scans_over_budget, a WARNING on stderr): its scan figures are partial.
# Each repetition runs: the daemon (scan #1 = adoption + first scan, #2 = steady state, reports the
# leaks, #3 = steady state, nothing new; one `cat` of the report), then LSan with symbolization (3
# checks), then LSan with symbolize=0 (3 checks; LSAN=nosym runs only these, LSAN=none neither; PERF_SCAN=3
# records the daemon with `perf record -g` during scan #3 into $PERF_OUT). Raw figures go to $RESULTS (default
# /tmp/scanvslsan-results.tsv), the summary (medians and ranges over the repetitions) to stdout. The raw
# figures place the daemon's peak: VmHWM and RssAnon after each scan, VmRSS and RssAnon after the report.
set -euo pipefail

N=${1:-1000000}
L=${2:-1000}
REPS=${3:-3}
cd "$(dirname "$0")/../.."
source Benchmarks/daemon-run.sh scanvslsan
CLIENT=${CLIENT:-.build/clients/scan-client}
LSAN_SO=${LSAN_SO:-/usr/lib/x86_64-linux-gnu/liblsan.so.0}
# liblsan.so installs its interceptors at its first malloc; perl calls signal() first thing in main and
# jumps through the interceptor's still null pointer (SIGSEGV at address 0). A preloaded library whose
# constructor mallocs (libstdc++'s exception emergency pool) initializes LSan before main.
if [[ -z ${LSAN_INIT_SO+set} && $CLIENT == *.pl ]]; then LSAN_INIT_SO=/usr/lib/x86_64-linux-gnu/libstdc++.so.6; fi
LSAN_INIT_SO=${LSAN_INIT_SO:-}
RESULTS=${RESULTS:-/tmp/scanvslsan-results.tsv}
KEEP_LOGS=${KEEP_LOGS:-}          # a directory: copy each rep's daemon log / report there
# The daemon's per-client scan budget (default 30 s) cuts a 1M-object scan short on a loaded machine: the
# scan then reports nothing and its CPU figure is partial. A benchmark measures whole scans.
SCAN_BUDGET=${SCAN_BUDGET:-3600}
PERF_SCAN=${PERF_SCAN:-}          # 1, 2 or 3: `perf record -g` the daemon during that scan into $PERF_OUT
PERF_OUT=${PERF_OUT:-/tmp/scanvslsan.perf.data}
LSAN=${LSAN:-both}                # both, nosym (only symbolize=0, the ratios' reference) or none
for f in "$KMEMLEAKD" "$SHIM" "$CLIENT" "$LSAN_SO" $LSAN_INIT_SO; do
    [[ -e $f ]] || { echo "missing $f (build: see the header of $0)" >&2; exit 1; }
done
KMEMLEAKD=$(realpath "$KMEMLEAKD"); SHIM=$(realpath "$SHIM"); CLIENT=$(realpath "$CLIENT")

status_kb() { awk -v k="$2:" '$1 == k { print $2 }' "/proc/$1/status"; }
# CPU ticks (utime+stime+cutime+cstime; LSan's StopTheWorld tracer is a cloned child, reaped by the
# client, so it lands in cutime/cstime)
cpu_ticks() { sed 's/^.*) //' "/proc/$1/stat" | awk '{ print $12 + $13 + $14 + $15 }'; }
TICK_NS=$((1000000000 / $(getconf CLK_TCK)))
canon_lines() { sed 's/^LEAK //' | tr 'A-F' 'a-f' | sed 's/^0x0*/0x/'; }

# start_client OUTFILE ENV... : scan-client with stdin on fifo fd 3; sets CPID
start_client() {
    local out=$1; shift
    rm -f "$TMP/in"; mkfifo "$TMP/in"
    env "$@" "$CLIENT" "$N" "$L" ${HEAP:+"$HEAP"} <"$TMP/in" >"$out" &
    CPID=$!
    exec 3>"$TMP/in"
    wait_for client_printed "$out" '^READY' 0
}
# client_printed OUTFILE PATTERN K : the client has printed more than K lines matching PATTERN; a client
# that died first (e.g. pl-heap.pl without its FFI module: its message is on stderr) stops the benchmark
# instead of a 600 s wait
client_printed() {
    [[ $(grep -c "$2" "$1" || true) -gt $3 ]] && return 0
    if ! kill -0 "$CPID" 2>/dev/null; then
        local rc=0; wait "$CPID" || rc=$?
        CPID=; echo "the client $CLIENT exited (status $rc) before printing $2" >&2; exit 1
    fi
    return 1
}
stop_client() {
    echo exit >&3; exec 3>&-
    wait "$CPID" || true
    CPID=
}

LOAD0=$(cut -d' ' -f1-3 /proc/loadavg)
MEM_TOTAL=$(awk '/^MemTotal:/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo)
echo "# scan vs LSan: client=${CLIENT##*/} heap=${HEAP:-zero} N=$N L=$L reps=$REPS nproc=$(nproc) mem=$MEM_TOTAL load(1/5/15)=$LOAD0 $(date -u +%FT%TZ)"
echo "# kmemleakd=$KMEMLEAKD"
printf 'rep\tmetric\tvalue\n' >"$RESULTS"
rec() { printf '%s\t%s\t%s\n' "$REP" "$1" "$2" >>"$RESULTS"; echo "  $1 = $2"; }

daemon_rep() {
    local run=$TMP/run mnt=$TMP/mnt log=$TMP/daemon.log
    rm -rf "$run" "$mnt"; mkdir -p "$run" "$mnt"; MNT=$mnt
    "$KMEMLEAKD" --run-dir "$run" --min-age 0 --scan-period 0 --first-scan-delay 3600 \
        --client-scan-budget "$SCAN_BUDGET" "$mnt" 2>"$log" &
    DPID=$!
    wait_for grep -qs 'serving ' "$log"
    local rss0 hwm0; rss0=$(status_kb "$DPID" VmRSS); hwm0=$(status_kb "$DPID" VmHWM)
    rec daemon_rss_before_kb "$rss0"; rec daemon_hwm_before_kb "$hwm0"
    local anon0; anon0=$(status_kb "$DPID" RssAnon); rec daemon_rssanon_before_kb "$anon0"
    rec daemon_rssshmem_before_kb "$(status_kb "$DPID" RssShmem)"

    local t0 t1 c0 c1 k0 k1
    t0=$(now); start_client "$TMP/client.out" LD_PRELOAD="$SHIM" KMEMLEAK_RUN_DIR="$run"; t1=$(now)
    rec client_shim_setup_ms $(((t1 - t0) / 1000000))
    grep '^LEAK ' "$TMP/client.out" | canon '^LEAK \(0x[0-9a-fA-F]*\)$' >"$TMP/leaks.expected"
    for s in 1 2 3; do
        local perf_pid=
        if [[ $PERF_SCAN == "$s" ]]; then
            perf record -q -g -p "$DPID" -o "$PERF_OUT" 2>"$TMP/perf.err" & perf_pid=$!
            wait_for grep -qs . "$PERF_OUT"
        fi
        c0=$(cpu_ticks "$DPID"); k0=$(cpu_ticks "$CPID"); t0=$(now)
        echo scan >"$mnt/kmemleak"
        t1=$(now); c1=$(cpu_ticks "$DPID"); k1=$(cpu_ticks "$CPID")
        if [[ -n $perf_pid ]]; then kill -INT "$perf_pid"; wait "$perf_pid" || true; fi
        rec "daemon_scan${s}_ms" "$(awk -v d=$((t1 - t0)) 'BEGIN { printf "%.1f", d / 1e6 }')"
        rec "daemon_scan${s}_cpu_ms" $(((c1 - c0) * TICK_NS / 1000000))
        rec "client_cpu_during_scan${s}_ms" $(((k1 - k0) * TICK_NS / 1000000))
        rec "daemon_rss_after_scan${s}_kb" "$(status_kb "$DPID" VmRSS)"
        rec "daemon_hwm_after_scan${s}_kb" "$(status_kb "$DPID" VmHWM)"
        rec "daemon_rssanon_after_scan${s}_kb" "$(status_kb "$DPID" RssAnon)"
        rec "daemon_new_leak_log_lines_after_scan${s}" "$(grep -c 'new suspected' "$log" || true)"
        if [[ $s == 2 ]]; then
            t0=$(now); cat "$mnt/kmemleak" >"$TMP/report"; t1=$(now)
            rec daemon_cat_report_ms "$(awk -v d=$((t1 - t0)) 'BEGIN { printf "%.1f", d / 1e6 }')"
            t0=$(now); cat "$mnt/kmemleak" >/dev/null; t1=$(now)
            rec daemon_cat_report_again_ms "$(awk -v d=$((t1 - t0)) 'BEGIN { printf "%.1f", d / 1e6 }')"
            rec daemon_rss_after_cat_kb "$(status_kb "$DPID" VmRSS)"
            rec daemon_rssanon_after_cat_kb "$(status_kb "$DPID" RssAnon)"
            rec daemon_report_bytes "$(wc -c <"$TMP/report")"
            canon '^unreferenced object \(0x[0-9a-fA-F]*\) .*' <"$TMP/report" >"$TMP/leaks.reported"
            rec daemon_leaks_reported "$(wc -l <"$TMP/leaks.reported")"
            rec daemon_leaks_matching "$(comm -12 "$TMP/leaks.expected" "$TMP/leaks.reported" | wc -l)"
            rec daemon_leaks_unexpected "$(comm -13 "$TMP/leaks.expected" "$TMP/leaks.reported" | wc -l)"
            rec daemon_leaks_missed "$(comm -23 "$TMP/leaks.expected" "$TMP/leaks.reported" | wc -l)"
            # which ones: their 1-based positions in the client's LEAK order
            rec daemon_missed_positions "$(comm -23 "$TMP/leaks.expected" "$TMP/leaks.reported" | while read -r a; do
                grep '^LEAK ' "$TMP/client.out" | canon_lines | grep -nx "$a" | cut -d: -f1; done | sort -n | tr '\n' ',' | sed 's/,$//')"
        fi
    done
    cat "$mnt/kmemleak" | canon '^unreferenced object \(0x[0-9a-fA-F]*\) .*' >"$TMP/leaks.after3"
    rec daemon_leaks_after_scan3 "$(wc -l <"$TMP/leaks.after3")"
    local rss1 hwm1 anon1; rss1=$(status_kb "$DPID" VmRSS); hwm1=$(status_kb "$DPID" VmHWM)
    anon1=$(status_kb "$DPID" RssAnon)
    rec daemon_rss_after_kb "$rss1"; rec daemon_hwm_after_kb "$hwm1"
    rec daemon_rssanon_after_kb "$anon1"; rec daemon_rssshmem_after_kb "$(status_kb "$DPID" RssShmem)"
    rec daemon_rssfile_after_kb "$(status_kb "$DPID" RssFile)"
    # the objects the daemon actually tracks (the client's own allocations too: an interpreter's heap
    # is more than the N blocks asked for), from the metrics view
    local tracked; tracked=$(awk '/^kmemleak_tracked_objects[{ ]/ { n += $NF } END { printf "%d", n }' "$mnt/kmemleak.prom")
    rec daemon_tracked_objects "$tracked"
    # the client's shared table (memfd) pages the daemon touched count in its VmRSS as RssShmem; they are
    # the client's memory (the shim's table), not the daemon's: RssAnon is the daemon's own
    rec daemon_B_per_object_rssanon "$(awk -v a="$anon1" -v b="$anon0" -v n="$N" 'BEGIN { printf "%.1f", (a - b) * 1024 / n }')"
    rec daemon_B_per_object_hwm "$(awk -v a="$hwm1" -v b="$rss0" -v n="$N" 'BEGIN { printf "%.1f", (a - b) * 1024 / n }')"
    rec daemon_B_per_object_rss "$(awk -v a="$rss1" -v b="$rss0" -v n="$N" 'BEGIN { printf "%.1f", (a - b) * 1024 / n }')"
    # the same over the objects tracked (python3: N undercounts them)
    rec daemon_B_per_tracked_object_hwm "$(awk -v a="$hwm1" -v b="$rss0" -v n="$tracked" 'BEGIN { printf "%.1f", (n > 0 ? (a - b) * 1024 / n : 0) }')"
    rec daemon_B_per_tracked_object_rss "$(awk -v a="$rss1" -v b="$rss0" -v n="$tracked" 'BEGIN { printf "%.1f", (n > 0 ? (a - b) * 1024 / n : 0) }')"
    rec client_rss_kb "$(status_kb "$CPID" VmRSS)"
    stop_client
    kill -TERM "$DPID"; wait "$DPID" || true; DPID=
    if grep -q " $mnt " /proc/mounts; then fusermount3 -u "$mnt"; fi
    MNT=
    local cut; cut=$(grep -c 'exceeded its time budget' "$log" || true)
    rec daemon_scans_over_budget "$cut"
    if ((cut > 0)); then
        echo "WARNING: rep $REP: $cut scan(s) exceeded --client-scan-budget $SCAN_BUDGET s: this rep's scan figures are partial" >&2
    fi
    if [[ -n $KEEP_LOGS ]]; then
        mkdir -p "$KEEP_LOGS"; cp "$log" "$KEEP_LOGS/daemon.rep$REP.log"; cp "$TMP/report" "$KEEP_LOGS/report.rep$REP"
    fi
}

# lsan_rep TAG EXTRA_OPTIONS
lsan_rep() {
    local tag=$1 opts=$2 out=$TMP/lsan.out lp=$TMP/lsanlog
    rm -f "$lp".*
    # report_objects=1: each leak group lists its objects' addresses, matched against the planted ones
    start_client "$out" LD_PRELOAD="$LSAN_SO${LSAN_INIT_SO:+ $LSAN_INIT_SO}" \
        LSAN_OPTIONS="detect_leaks=1:exitcode=0:report_objects=1:log_path=$lp$opts"
    grep '^LEAK ' "$out" | canon '^LEAK \(0x[0-9a-fA-F]*\)$' >"$TMP/lsan.expected"
    local i line before after k0 k1 logf
    for i in 1 2 3; do
        before=$(grep -c '^LSAN' "$out" || true)
        k0=$(cpu_ticks "$CPID")
        echo lsan >&3
        wait_for client_printed "$out" '^LSAN' "$before"
        k1=$(cpu_ticks "$CPID")
        line=$(grep '^LSAN' "$out" | tail -1)
        rec "${tag}_check${i}_ms" "$(awk -v d="$(cut -d' ' -f2 <<<"$line")" 'BEGIN { printf "%.1f", d / 1e6 }')"
        rec "${tag}_check${i}_cpu_ms" $(((k1 - k0) * TICK_NS / 1000000))
        logf=$(ls "$lp".* 2>/dev/null | head -1)
        # objects in "Direct leak of B byte(s) in K object(s)" lines of this check's report
        if [[ -n $logf ]]; then
            after=$(awk '/^Direct leak of/ { for (j = 1; j <= NF; j++) if ($j == "in") k += $(j + 1) } END { print k + 0 }' "$logf")
            rec "${tag}_check${i}_direct_leaks" "$after"
            # the addresses listed under "Direct leak" groups ("0x... (B bytes)" after "Objects leaked above:")
            awk '/^Direct leak of/ { d = 1 } /^Indirect leak of/ { d = 0 } d && /^0x[0-9a-f]+ \(/ { print $1 }' "$logf" |
                canon '^\(0x[0-9a-f]*\)$' >"$TMP/lsan.reported"
            rec "${tag}_check${i}_planted_found" "$(comm -12 "$TMP/lsan.expected" "$TMP/lsan.reported" | wc -l)"
            : >"$logf"
        else
            rec "${tag}_check${i}_direct_leaks" 0
            rec "${tag}_check${i}_planted_found" 0
        fi
    done
    rec "${tag}_client_rss_kb" "$(status_kb "$CPID" VmRSS)"
    stop_client
}

for ((REP = 1; REP <= REPS; REP++)); do
    echo "rep $REP: daemon (load $(cut -d' ' -f1 /proc/loadavg))"
    daemon_rep
    if [[ $LSAN == both ]]; then
        echo "rep $REP: LSan, symbolize=1 (default)"
        lsan_rep lsan ""
    fi
    if [[ $LSAN != none ]]; then
        echo "rep $REP: LSan, symbolize=0"
        lsan_rep lsan_nosym ":symbolize=0"
    fi
done

# ---- summary -------------------------------------------------------------------------------------
# stat METRIC -> "median (min-max)" over the reps; pooled for the lsan checks 1..3 when METRIC ends in *
vals() { awk -F'\t' -v m="$1" 'NR > 1 && $2 ~ ("^" m "$") { print $3 }' "$RESULTS" | sort -g; }
median() { vals "$1" | awk '{ a[NR] = $1 } END { if (NR == 0) print "-"; else if (NR % 2) print a[(NR + 1) / 2]; else print (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }
range() { vals "$1" | awk 'NR == 1 { lo = $1 } { hi = $1 } END { if (NR) printf "%s-%s", lo, hi; else print "-" }'; }
stat() { echo "$(median "$1") ($(range "$1"))"; }
row() { printf '| %s | %s | %s |\n' "$1" "$(stat "$2")" "$(stat "$3")"; }

echo
echo "## results: N=$N live objects, L=$L leaks, $REPS reps; median (min-max), ms"
echo "| measure | wall ms | CPU ms |"
echo "| --- | ---: | ---: |"
row "daemon scan #1 (adoption + first scan)" daemon_scan1_ms daemon_scan1_cpu_ms
row "daemon scan #2 (steady state, reports the leaks)" daemon_scan2_ms daemon_scan2_cpu_ms
row "daemon scan #3 (steady state)" daemon_scan3_ms daemon_scan3_cpu_ms
printf '| daemon: cat of the report (after scan #2) | %s | - |\n' "$(stat daemon_cat_report_ms)"
printf '| daemon: cat of the report, again | %s | - |\n' "$(stat daemon_cat_report_again_ms)"
row "LSan check, symbolize=1, checks 1-3 pooled" 'lsan_check[123]_ms' 'lsan_check[123]_cpu_ms'
row "LSan check, symbolize=1, check 1" lsan_check1_ms lsan_check1_cpu_ms
row "LSan check, symbolize=0, checks 1-3 pooled" 'lsan_nosym_check[123]_ms' 'lsan_nosym_check[123]_cpu_ms'
echo
S1=$(median daemon_scan1_ms); S2=$(median daemon_scan2_ms); S3=$(median daemon_scan3_ms)
S2C=$(median daemon_scan2_cpu_ms); S3C=$(median daemon_scan3_cpu_ms)
LS=$(median 'lsan_check[123]_ms'); LN=$(median 'lsan_nosym_check[123]_ms'); LNC=$(median 'lsan_nosym_check[123]_cpu_ms')
CAT=$(median daemon_cat_report_ms)
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "-" }'; }
echo "ratios to the LSan check with symbolize=0 (the fair one: the daemon's scan does not symbolize), medians (goal <= 2):"
echo "  scan #2 (finds and reports the leaks, incl. the confirmation pass) / LSan: $(ratio "$S2" "$LN") wall, $(ratio "$S2C" "$LNC") CPU"
echo "  scan #3 (steady state, nothing new)                                / LSan: $(ratio "$S3" "$LN") wall, $(ratio "$S3C" "$LNC") CPU"
echo "  scan #1 (adoption + first scan)                                    / LSan: $(ratio "$S1" "$LN") wall"
echo "  (scan #2 + cat of the report) / LSan check with symbolize=1:             $(ratio "$(awk -v a="$S2" -v b="$CAT" 'BEGIN { print a + b }')" "$LS") wall"
echo "daemon memory per tracked object (goal <= 64 B): $(stat daemon_B_per_object_hwm) B (VmHWM_after - VmRSS_before), $(stat daemon_B_per_object_rss) B (VmRSS), $(stat daemon_B_per_object_rssanon) B (RssAnon: without the client's shared table pages)"
echo "daemon memory per object it tracks ($(stat daemon_tracked_objects) objects; N above): $(stat daemon_B_per_tracked_object_hwm) B (VmHWM), $(stat daemon_B_per_tracked_object_rss) B (VmRSS)"
echo "daemon after: RssAnon $(stat daemon_rssanon_after_kb) kB, RssShmem $(stat daemon_rssshmem_after_kb) kB, RssFile $(stat daemon_rssfile_after_kb) kB"
echo "daemon VmRSS before/after: $(median daemon_rss_before_kb) / $(median daemon_rss_after_kb) kB, VmHWM after $(median daemon_hwm_after_kb) kB"
echo "daemon leaks reported after scan #2: $(stat daemon_leaks_reported) of $L; matching $(stat daemon_leaks_matching), unexpected $(stat daemon_leaks_unexpected), missed $(stat daemon_leaks_missed); after scan #3: $(stat daemon_leaks_after_scan3)"
echo "LSan direct leaks per check: symbolize=1 $(stat 'lsan_check[123]_direct_leaks'), symbolize=0 $(stat 'lsan_nosym_check[123]_direct_leaks'); of them planted: $(stat 'lsan_check[123]_planted_found'), $(stat 'lsan_nosym_check[123]_planted_found') of $L"
echo "client CPU during daemon scans (ms): #1 $(stat client_cpu_during_scan1_ms), #2 $(stat client_cpu_during_scan2_ms)"
echo "load at end: $(cut -d' ' -f1-3 /proc/loadavg); raw figures: $RESULTS"
