#!/usr/bin/env bash
# make demo: kmemleak for user space end to end, on this machine, as root, without systemd.
#
# Starts kmemleakd on a temporary mount point and run directory, runs the sample client kmemleak-test
# under LD_PRELOAD=libkmemleak.so, scans twice (the kernel's checksum rule: an object that changed since
# the previous scan is reported one scan later), prints /MNT/kmemleak and compares the reported
# addresses with the LEAK/PCPU-LEAK lines of the client. Then `unload` (the client unlinks its list:
# ten more leaks), scans twice again and compares again. Exit status 0 only if both comparisons match
# exactly. Everything is cleaned up on every exit path.
#
# usage: scripts/demo.sh [--no-build]
#   --no-build               use the binaries in .build/release as they are (no make deps/build)
# environment (used by Tests/ServiceTests):
#   DEMO_TIMEOUT=30          seconds to wait for the mount, READY, the unload output
#   DEMO_SCAN_TIMEOUT=120    seconds allowed for one write or read of MNT/kmemleak
#   DEMO_DAEMON_WRAPPER=...  command prefix for kmemleakd (e.g. setpriv with the unit's capabilities)
#   DEMO_CLIENT_USER=nobody  run kmemleak-test as this user (the daemon then needs CAP_SYS_PTRACE)
#   KMEMLEAKD, LIBKMEMLEAK, KMEMLEAK_TEST   other binaries than those in .build/release
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
BUILD=$ROOT/.build/release
KMEMLEAKD=${KMEMLEAKD:-$BUILD/kmemleakd}
LIBKMEMLEAK=${LIBKMEMLEAK:-$BUILD/libkmemleak.so}
KMEMLEAK_TEST=${KMEMLEAK_TEST:-$BUILD/kmemleak-test}
TIMEOUT=${DEMO_TIMEOUT:-30}
SCAN_TIMEOUT=${DEMO_SCAN_TIMEOUT:-120}
BUILD_FIRST=1
for arg in "$@"; do
    case $arg in
        --no-build) BUILD_FIRST=0 ;;
        -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
        *) echo "demo: unknown argument $arg" >&2; exit 2 ;;
    esac
done

say() { echo "demo: $*"; }
die() { echo "demo: error: $*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "run as root (it mounts FUSE and reads another process's memory): sudo make demo"

# ---- what the demo needs -----------------------------------------------------------------------
if [ -d /opt/swift/usr/bin ]; then PATH=/opt/swift/usr/bin:$PATH; fi
if [ "$BUILD_FIRST" = 1 ]; then
    make --no-print-directory deps
    command -v swift >/dev/null || die "swift not found: install a Swift 6 toolchain (swift.org) and put it on PATH"
    make --no-print-directory build
fi
for f in "$KMEMLEAKD" "$LIBKMEMLEAK" "$KMEMLEAK_TEST"; do
    [ -f "$f" ] || die "$f is missing (make build)"
done
if [ ! -c /dev/fuse ]; then modprobe fuse 2>/dev/null || true; fi
[ -c /dev/fuse ] || die "/dev/fuse is missing (modprobe fuse; in a container: --device /dev/fuse --cap-add SYS_ADMIN)"
command -v fusermount3 >/dev/null || die "fusermount3 is missing (make deps installs fuse3)"

read -r -a DAEMON_WRAP <<<"${DEMO_DAEMON_WRAPPER:-}"
CLIENT_WRAP=()
if [ -n "${DEMO_CLIENT_USER:-}" ]; then
    CLIENT_WRAP=(setpriv "--reuid=$DEMO_CLIENT_USER" "--regid=$(id -g "$DEMO_CLIENT_USER")" --clear-groups)
fi

# ---- state and cleanup (every exit path) ------------------------------------------------------
TMP=$(mktemp -d /tmp/kmemleak-demo.XXXXXX)
chmod 0755 "$TMP"                      # a DEMO_CLIENT_USER client must reach the run directory
MNT=$TMP/mnt
RUN=$TMP/run
LOG=$TMP/kmemleakd.log
OUT=$TMP/client.out
ERR=$TMP/client.err
mkdir "$MNT" "$RUN"
chmod 1777 "$RUN"                      # like /run/kmemleak (tmpfiles.d)
DAEMON_PID=
CLIENT_PID=
CLIENT_FD=0

mounted() { awk -v m="$1" '$5 == m { found = 1 } END { exit !found }' /proc/self/mountinfo; }

# wait_gone PID SECONDS: poll until the process has exited (bash reaps its children by itself).
wait_gone() {
    local i
    for ((i = 0; i < $2 * 10; i++)); do
        kill -0 "$1" 2>/dev/null || return 0
        sleep 0.1
    done
    return 1
}

cleanup() {
    local rc=$? drc
    set +e
    trap - EXIT INT TERM HUP
    if [ "$CLIENT_FD" = 1 ]; then exec 3>&-; fi          # EOF on the client's stdin
    if [ -n "$CLIENT_PID" ] && kill -0 "$CLIENT_PID" 2>/dev/null; then
        kill -TERM "$CLIENT_PID"
        wait_gone "$CLIENT_PID" 5 || kill -KILL "$CLIENT_PID"
    fi
    [ -n "$CLIENT_PID" ] && wait "$CLIENT_PID" 2>/dev/null
    if [ -n "$DAEMON_PID" ]; then
        if kill -0 "$DAEMON_PID" 2>/dev/null; then
            kill -TERM "$DAEMON_PID"
            if ! wait_gone "$DAEMON_PID" 15; then
                say "kmemleakd did not exit 15 s after SIGTERM: SIGKILL"
                kill -KILL "$DAEMON_PID"; rc=1
            fi
        fi
        wait "$DAEMON_PID" 2>/dev/null; drc=$?
        if [ "$drc" -ne 0 ]; then say "kmemleakd exited with status $drc (expected 0 after SIGTERM)"; rc=1; fi
    fi
    if mounted "$MNT"; then
        say "$MNT still mounted after the daemon exited: fusermount3 -u -z"
        fusermount3 -u -z "$MNT" || umount -l "$MNT"
        rc=1
    fi
    if [ "$rc" -ne 0 ]; then
        echo "---- kmemleakd log ($LOG) ----" >&2
        cat "$LOG" >&2 2>/dev/null
        if [ -s "$ERR" ]; then echo "---- kmemleak-test stderr ----" >&2; cat "$ERR" >&2; fi
        echo "----" >&2
        say "FAILED"
    fi
    if mounted "$MNT"; then say "leaving $TMP (still mounted)"; else rm -rf "$TMP"; fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

# ---- the daemon ---------------------------------------------------------------------------------
say "starting kmemleakd on $MNT (run dir $RUN)"
"${DAEMON_WRAP[@]}" "$KMEMLEAKD" --run-dir "$RUN" --min-age 0 --first-scan-delay 3600 "$MNT" >"$LOG" 2>&1 &
DAEMON_PID=$!
for ((i = 0; ; i++)); do
    [ -e "$MNT/kmemleak" ] && break
    kill -0 "$DAEMON_PID" 2>/dev/null || die "kmemleakd exited before mounting $MNT"
    [ "$i" -lt $((TIMEOUT * 10)) ] || die "$MNT/kmemleak did not appear within $TIMEOUT s"
    sleep 0.1
done
say "mounted: $MNT/kmemleak"

# ---- the client: stdin from a fifo (kept open on fd 3), stdout to a file ---------------------------
mkfifo "$TMP/stdin"
"${CLIENT_WRAP[@]}" env LD_PRELOAD="$LIBKMEMLEAK" KMEMLEAK_RUN_DIR="$RUN" "$KMEMLEAK_TEST" \
    <"$TMP/stdin" >"$OUT" 2>"$ERR" &
CLIENT_PID=$!
exec 3>"$TMP/stdin"
CLIENT_FD=1
# wait_output COUNT-COMMAND: poll until the command succeeds, the client still alive.
wait_output() {
    local what=$1 i
    shift
    for ((i = 0; ; i++)); do
        "$@" && return 0
        kill -0 "$CLIENT_PID" 2>/dev/null || die "kmemleak-test exited while waiting for $what"
        [ "$i" -lt $((TIMEOUT * 10)) ] || die "no $what from kmemleak-test within $TIMEOUT s"
        sleep 0.1
    done
}
wait_output READY grep -qx READY "$OUT"
say "kmemleak-test (pid $CLIENT_PID) is READY"

# ---- scan, report, compare ------------------------------------------------------------------------
norm() { tr 'A-F' 'a-f' | sed -E 's/^0x//; s/^0+([0-9a-f])/\1/' | sort -u; }
expected() { awk '$1 == "LEAK" || $1 == "PCPU-LEAK" { print $2 }' "$OUT" | norm; }
kept() { awk '$1 == "KEEP" { print $2 }' "$OUT" | norm; }
reported() { sed -nE 's/^unreferenced object( \([a-z]+\))? 0x([0-9a-fA-F]+) \(size .*/\2/p' "$1" | norm; }
count() { local n; n=$(grep -c . "$1" || true); echo "${n:-0}"; }

# The control file is used under `timeout`: a hung file operation must not keep the demo (and its
# cleanup, which bash runs only after the foreground command) waiting for ever.
ctl() {
    timeout -k 5 "$SCAN_TIMEOUT" sh -c 'echo "$1" >"$2"' sh "$1" "$MNT/kmemleak" ||
        die "echo $1 > $MNT/kmemleak failed"
}

FAILED=0
scan_and_compare() {
    local phase=$1 report=$TMP/report.$1
    say "echo scan > $MNT/kmemleak (twice)"
    ctl scan
    ctl scan
    timeout -k 5 "$SCAN_TIMEOUT" cat "$MNT/kmemleak" >"$report" || die "cat $MNT/kmemleak failed"
    echo "---- cat $MNT/kmemleak ($phase) ----"
    cat "$report"
    echo "----"
    expected >"$TMP/expected.$phase"
    kept >"$TMP/kept.$phase"
    reported "$report" >"$TMP/reported.$phase"
    comm -12 "$TMP/expected.$phase" "$TMP/reported.$phase" >"$TMP/found.$phase"
    comm -23 "$TMP/expected.$phase" "$TMP/reported.$phase" >"$TMP/missing.$phase"
    comm -13 "$TMP/expected.$phase" "$TMP/reported.$phase" >"$TMP/unexpected.$phase"
    local e f u
    e=$(count "$TMP/expected.$phase"); f=$(count "$TMP/found.$phase"); u=$(count "$TMP/unexpected.$phase")
    say "$f of $e leaks reported, $u unexpected ($phase)"
    if [ "$e" -eq 0 ]; then say "kmemleak-test printed no LEAK lines"; FAILED=1; fi
    if [ -s "$TMP/missing.$phase" ]; then
        say "not reported:"; sed 's/^/  0x/' "$TMP/missing.$phase"; FAILED=1
    fi
    if [ -s "$TMP/unexpected.$phase" ]; then
        say "reported but not a LEAK of kmemleak-test:"
        while read -r a; do
            if grep -qx "$a" "$TMP/kept.$phase"; then echo "  0x$a (a KEEP object: false positive)"; else echo "  0x$a"; fi
        done <"$TMP/unexpected.$phase"
        FAILED=1
    fi
}

scan_and_compare loaded

BEFORE=$(grep -c '^LEAK ' "$OUT" || true)
say "unload (the client unlinks its list: ten more leaks)"
echo unload >&3
ten_more() { [ "$(grep -c '^LEAK ' "$OUT" || true)" -ge $((BEFORE + 10)) ]; }
wait_output "ten more LEAK lines" ten_more

scan_and_compare unloaded

if [ "$FAILED" -ne 0 ]; then exit 1; fi
say "OK"
