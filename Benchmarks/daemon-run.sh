# daemon-run.sh - sourced by the benchmarks that run a real kmemleakd and a client (ScanVsLSan, Pause):
# a temporary directory, clean-up of the client, the daemon and the mount on every exit path, and the
# polling helpers. Usage: `source Benchmarks/daemon-run.sh NAME`; the script sets CPID, DPID and MNT
# as it starts them (and opens the client's stdin fifo as fd 3). Sourced from the repository root; the
# binaries default to the release builds (KMEMLEAKD: .build-bench's if there, for a benchmark build).
if [[ -z "${KMEMLEAKD:-}" ]]; then
    if [[ -x .build-bench/release/kmemleakd ]]; then KMEMLEAKD=.build-bench/release/kmemleakd
    else KMEMLEAKD=.build/release/kmemleakd; fi
fi
SHIM=${SHIM:-.build/release/libkmemleak.so}
TMP=$(mktemp -d "/tmp/$1.XXXXXX")
DPID= CPID= MNT=
cleanup() {
    exec 3>&- 2>/dev/null || true
    [[ -n $CPID ]] && kill "$CPID" 2>/dev/null && wait "$CPID" 2>/dev/null || true
    [[ -n $DPID ]] && kill -TERM "$DPID" 2>/dev/null && wait "$DPID" 2>/dev/null || true
    if [[ -n $MNT ]] && grep -q " $MNT " /proc/mounts; then fusermount3 -u "$MNT" 2>/dev/null || true; fi
    rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

now() { date +%s%N; }
# wait_for CMD... : poll a condition (20 ms steps, 600 s limit)
wait_for() {
    local i
    for ((i = 0; i < 30000; i++)); do "$@" && return 0; sleep 0.02; done
    echo "timed out waiting for: $*" >&2; return 1
}
# canon SED_PATTERN : the addresses captured by the pattern's group 1, lower case, no leading zeros, sorted
canon() { sed -n "s/$1/\\1/p" | tr 'A-F' 'a-f' | sed 's/^0x0*/0x/' | sort -u; }
