#!/usr/bin/env bash
# make test-service: the service around kmemleakd (unit, tmpfiles.d, install tree, pkg-config,
# sd_notify, demo). Tests that need the real binaries (.build/release/kmemleakd, libkmemleak.so,
# kmemleak-test) are SKIPPED, not passed, while those are not built. Tests marked "harness" run the
# scripts against stand-ins (fakes/) so that the scripts themselves are tested before the daemon exists.
# The last line is "N passed, M failed"; the exit status is nonzero if anything failed.
set -uo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
HERE=$ROOT/Tests/ServiceTests
FAKES=$HERE/fakes
BUILD=${SERVICE_TESTS_BUILD:-$ROOT/.build/release}   # override only to try the tests on other binaries
UNIT_TEMPLATE=$ROOT/systemd/kmemleakd.service
export PATH=/usr/sbin:/usr/bin:/sbin:/bin:$PATH

PASSED=0 FAILED=0 SKIPPED=0
FAILED_NAMES=() SKIPPED_NAMES=()
TMPROOT=$(mktemp -d /tmp/kmemleak-service-tests.XXXXXX)
chmod 0755 "$TMPROOT"

cleanup() {
    # Anything a failed test left mounted under our directory, then the directory.
    awk -v r="$TMPROOT/" 'index($5, r) == 1 { print $5 }' /proc/self/mountinfo | sort -r |
        while read -r m; do fusermount3 -u -z "$m" 2>/dev/null || umount -l "$m"; done
    rm -rf "$TMPROOT"
}
trap cleanup EXIT

# run NAME FUNCTION: a test passes (0), fails (1) or is skipped (77, reason on stdout).
run() {
    local name=$1 out rc
    shift
    out=$("$@" 2>&1)
    rc=$?
    case $rc in
        0) PASSED=$((PASSED + 1)); echo "PASS  $name" ;;
        77) SKIPPED=$((SKIPPED + 1)); SKIPPED_NAMES+=("$name"); echo "SKIP  $name: ${out##*$'\n'}"; return ;;
        *) FAILED=$((FAILED + 1)); FAILED_NAMES+=("$name"); echo "FAIL  $name" ;;
    esac
    if [ -n "$out" ] && { [ "$rc" -ne 0 ] || [ -n "${VERBOSE:-}" ]; }; then sed 's/^/      /' <<<"$out"; fi
}
skip() { echo "$*"; exit 77; }
fail() { echo "$*"; exit 1; }

have_daemon() { [ -x "$BUILD/kmemleakd" ]; }
have_client() { [ -f "$BUILD/libkmemleak.so" ] && [ -x "$BUILD/kmemleak-test" ]; }
need_root_fuse() {
    [ "$(id -u)" -eq 0 ] || skip "needs root"
    [ -c /dev/fuse ] || skip "no /dev/fuse"
}

# The unit's privileges without systemd: CapabilityBoundingSet= (setpriv --bounding-set),
# NoNewPrivileges=, SystemCallFilter=, RestrictAddressFamilies= and MemoryDenyWriteExecute=
# (seccomp-exec.py), as a command prefix.
unit_caps_setpriv() {
    local caps
    caps=$(sed -n 's/^CapabilityBoundingSet=//p' "$UNIT_TEMPLATE" | tr ' ' '\n' | sed -n 's/^CAP_//p' |
        tr 'A-Z' 'a-z' | sed 's/^/+/' | paste -sd, -)
    echo "setpriv --bounding-set=-all,$caps --inh-caps=-all --no-new-privs python3 $HERE/seccomp-exec.py $UNIT_TEMPLATE"
}

# Install into DESTDIR=$1 with PREFIX=$2 (real files where built, stubs otherwise; $3 = stub dir).
install_into() {
    local dest=$1 prefix=$2 stubs=$TMPROOT/stubs args=()
    mkdir -p "$stubs"
    if have_daemon; then args+=("KMEMLEAKD_BIN=$BUILD/kmemleakd"); else
        printf '#!/bin/sh\n# stub kmemleakd (the daemon is not built)\nexit 0\n' >"$stubs/kmemleakd"
        chmod 0755 "$stubs/kmemleakd"; args+=("KMEMLEAKD_BIN=$stubs/kmemleakd"); fi
    if [ -f "$BUILD/libkmemleak.so" ]; then args+=("LIBKMEMLEAK_SO=$BUILD/libkmemleak.so"); else
        : >"$stubs/libkmemleak.so"; args+=("LIBKMEMLEAK_SO=$stubs/libkmemleak.so"); fi
    if [ -f Sources/libkmemleak/include/kmemleak.h ]; then args+=("KMEMLEAK_HEADER=Sources/libkmemleak/include/kmemleak.h"); else
        echo '/* stub kmemleak.h */' >"$stubs/kmemleak.h"; args+=("KMEMLEAK_HEADER=$stubs/kmemleak.h"); fi
    make --no-print-directory -s install-only DESTDIR="$dest" PREFIX="$prefix" "${args[@]}"
}

EXPECTED_TREE='usr/bin/kmemleakd
usr/include/kmemleak.h
usr/lib/libkmemleak.so
usr/lib/pkgconfig/kmemleak.pc
usr/lib/systemd/system/kmemleakd.service
usr/lib/tmpfiles.d/kmemleak.conf
usr/share/doc/kmemleak/examples/override-kmemleak.conf'

# ---- the unit ------------------------------------------------------------------------------------
t_unit_contents() {
    local u=$UNIT_TEMPLATE k bad=0 active
    active=$(grep -v '^[[:space:]]*#' "$u")
    for k in 'Type=notify' 'NotifyAccess=main' 'ExecStart=@bindir@/kmemleakd --control-link /mnt/kmemleak /run/kmemleakd' \
        'ExecStartPre=-/bin/mkdir -p /run/kmemleakd' 'Restart=on-failure' \
        'KillSignal=SIGTERM' 'NoNewPrivileges=yes' \
        'CapabilityBoundingSet=CAP_SYS_ADMIN CAP_SYS_PTRACE CAP_DAC_READ_SEARCH' \
        'RuntimeDirectory=kmemleak' 'RuntimeDirectoryMode=1777' 'RuntimeDirectoryPreserve=yes' \
        'WantedBy=multi-user.target'; do
        grep -qxF "$k" <<<"$active" || { echo "missing: $k"; bad=1; }
    done
    grep -q '^ExecStopPost=-.*fusermount3 -u -z /run/kmemleakd' <<<"$active" || { echo "missing: ExecStopPost fusermount3 safety net"; bad=1; }
    # Options that create a mount namespace would hide the FUSE mount from the host (see the unit).
    for k in ProtectSystem ProtectHome PrivateTmp PrivateDevices PrivateMounts ProtectKernelTunables \
        ProtectKernelModules ProtectKernelLogs ProtectControlGroups ProtectProc ProcSubset ReadWritePaths \
        ReadOnlyPaths InaccessiblePaths ExecPaths NoExecPaths BindPaths BindReadOnlyPaths \
        TemporaryFileSystem PrivateIPC PrivateNetwork MountFlags RootDirectory RootImage MountAPIVFS \
        DynamicUser; do
        if grep -q "^$k=" <<<"$active"; then echo "$k= would put kmemleakd in its own mount namespace"; bad=1; fi
    done
    # A user or PID namespace would cut the daemon off from the clients (capabilities, /proc).
    for k in PrivateUsers PrivatePIDs User; do
        if grep -q "^$k=" <<<"$active"; then echo "$k= would keep kmemleakd from reading other processes"; bad=1; fi
    done
    # Only known placeholders.
    if grep -o '@[a-z]*@' "$u" systemd/kmemleak.conf systemd/examples/override-kmemleak.conf pkgconfig/kmemleak.pc.in |
        grep -v -E ':@(prefix|bindir|libdir|includedir|docdir|tmpfilesdir|version)@$'; then
        echo "unknown placeholder(s) above"; bad=1
    fi
    return $bad
}

t_unit_verify() {
    command -v systemd-analyze >/dev/null || skip "systemd-analyze missing (package systemd)"
    local d=$TMPROOT/verify u rc out
    install_into "$d" /usr || fail "install-only failed"
    # ExecStart must name an existing executable: point it at the DESTDIR copy (the real daemon when
    # built, else a stub).
    u=$TMPROOT/kmemleakd.service
    sed "s|^ExecStart=/usr/bin/kmemleakd|ExecStart=$d/usr/bin/kmemleakd|" "$d/usr/lib/systemd/system/kmemleakd.service" >"$u"
    have_daemon && echo "ExecStart: the real daemon" || echo "ExecStart: a stub (daemon not built)"
    out=$(systemd-analyze verify --recursive-errors=no --man=no "$u" 2>&1); rc=$?
    echo "$out"
    [ "$rc" -eq 0 ] || fail "systemd-analyze verify: rc=$rc"
    [ -z "$out" ] || fail "systemd-analyze verify printed warnings"
    # Control: the same check must catch a typo (unknown keys are errors only with --recursive-errors=no).
    sed 's/^Restart=/Restrat=/' "$u" >"$TMPROOT/typo.service"
    systemd-analyze verify --recursive-errors=no --man=no "$TMPROOT/typo.service" >/dev/null 2>&1 &&
        fail "control: a unit with Restrat= passed verify"
    return 0
}

# The drop-in example, installed, applied to a sample service (verify reads NAME.service.d/ next to it).
t_dropin_verify() {
    command -v systemd-analyze >/dev/null || skip "systemd-analyze missing"
    local d=$TMPROOT/dropin u=$TMPROOT/dropin-units
    install_into "$d" /usr || fail "install-only failed"
    mkdir -p "$u/sample.service.d"
    printf '[Unit]\nDescription=sample client\n[Service]\nExecStart=/bin/true\n' >"$u/sample.service"
    cp "$d/usr/share/doc/kmemleak/examples/override-kmemleak.conf" "$u/sample.service.d/"
    systemd-analyze verify --recursive-errors=no --man=no "$u/sample.service" || fail "verify failed"
    sed 's/^Environment=/Environmnt=/' "$d/usr/share/doc/kmemleak/examples/override-kmemleak.conf" \
        >"$u/sample.service.d/override-kmemleak.conf"
    systemd-analyze verify --recursive-errors=no --man=no "$u/sample.service" >/dev/null 2>&1 &&
        fail "control: a typo in the drop-in passed verify"
    return 0
}

t_unit_security() {
    command -v systemd-analyze >/dev/null || skip "systemd-analyze missing"
    local d=$TMPROOT/security u out
    install_into "$d" /usr || fail "install-only failed"
    u=$TMPROOT/security/kmemleakd.service
    sed "s|^ExecStart=/usr/bin/kmemleakd|ExecStart=$d/usr/bin/kmemleakd|" "$d/usr/lib/systemd/system/kmemleakd.service" >"$u"
    # --threshold is in tenths of the displayed level (0..100): 50 = "5.0".
    out=$(systemd-analyze security --offline=true --threshold=50 --no-pager "$u" 2>&1) || {
        echo "$out" | tail -5; fail "exposure above 5.0"; }
    echo "$out" | grep 'Overall exposure'
}

t_tmpfiles() {
    command -v systemd-tmpfiles >/dev/null || skip "systemd-tmpfiles missing"
    [ "$(id -u)" -eq 0 ] || skip "needs root (chown root:root)"
    local r=$TMPROOT/tmpfiles-root st
    mkdir -p "$r/run"
    systemd-tmpfiles --create --root="$r" "$ROOT/systemd/kmemleak.conf" || fail "systemd-tmpfiles --create failed"
    st=$(stat -c '%a %U %G' "$r/run/kmemleak") || fail "/run/kmemleak not created"
    echo "/run/kmemleak: $st"
    [ "$st" = "1777 root root" ] || fail "expected 1777 root root"
}

# ---- install / uninstall / pkg-config --------------------------------------------------------------
t_install_tree() {
    local d=$TMPROOT/tree tree bad=0 f
    install_into "$d" /usr || fail "install-only failed"
    tree=$(cd "$d" && find . \( -type f -o -type l \) | sed 's|^\./||' | sort)
    echo "$tree"
    [ "$tree" = "$EXPECTED_TREE" ] || { diff <(echo "$EXPECTED_TREE") <(echo "$tree"); fail "tree differs"; }
    [ "$(stat -c %a "$d/usr/bin/kmemleakd")" = 755 ] || { echo "kmemleakd not 0755"; bad=1; }
    for f in usr/lib/libkmemleak.so usr/include/kmemleak.h usr/lib/pkgconfig/kmemleak.pc \
        usr/lib/systemd/system/kmemleakd.service usr/lib/tmpfiles.d/kmemleak.conf \
        usr/share/doc/kmemleak/examples/override-kmemleak.conf; do
        [ "$(stat -c %a "$d/$f")" = 644 ] || { echo "$f not 0644"; bad=1; }
    done
    if grep -l '@[a-z]*@' "$d/usr/lib/systemd/system/kmemleakd.service" "$d/usr/lib/tmpfiles.d/kmemleak.conf" \
        "$d/usr/lib/pkgconfig/kmemleak.pc" "$d/usr/share/doc/kmemleak/examples/override-kmemleak.conf"; then
        echo "placeholders left in the files above"; bad=1
    fi
    grep -qx 'ExecStart=/usr/bin/kmemleakd --control-link /mnt/kmemleak /run/kmemleakd' "$d/usr/lib/systemd/system/kmemleakd.service" || { echo "ExecStart not substituted"; bad=1; }
    grep -qx 'Environment=LD_PRELOAD=/usr/lib/libkmemleak.so KMEMLEAK_RUN_DIR=/run/kmemleak' \
        "$d/usr/share/doc/kmemleak/examples/override-kmemleak.conf" || { echo "drop-in Environment= not substituted"; bad=1; }
    # SYSTEMDUNITDIR is overridable.
    make --no-print-directory -s install-only DESTDIR="$TMPROOT/unitdir" PREFIX=/usr SYSTEMDUNITDIR=/etc/systemd/system \
        KMEMLEAKD_BIN="$d/usr/bin/kmemleakd" LIBKMEMLEAK_SO="$d/usr/lib/libkmemleak.so" KMEMLEAK_HEADER="$d/usr/include/kmemleak.h" &&
        [ -f "$TMPROOT/unitdir/etc/systemd/system/kmemleakd.service" ] || { echo "SYSTEMDUNITDIR not honoured"; bad=1; }
    return $bad
}

t_uninstall() {
    local d=$TMPROOT/uninstall left
    install_into "$d" /usr || fail "install-only failed"
    make --no-print-directory -s uninstall DESTDIR="$d" PREFIX=/usr || fail "make uninstall failed"
    left=$(cd "$d" && find . \( -type f -o -type l \) | sort)
    [ -z "$left" ] || { echo "left behind:"; echo "$left"; fail "uninstall left files"; }
    [ ! -e "$d/usr/share/doc/kmemleak" ] || fail "uninstall left usr/share/doc/kmemleak"
}

t_install_prefix() {
    local d=$TMPROOT/prefix
    install_into "$d" /opt/kmemleak || fail "install-only failed"
    grep -qx 'ExecStart=/opt/kmemleak/bin/kmemleakd --control-link /mnt/kmemleak /run/kmemleakd' "$d/opt/kmemleak/lib/systemd/system/kmemleakd.service" ||
        fail "ExecStart does not follow PREFIX"
    [ -f "$d/opt/kmemleak/lib/tmpfiles.d/kmemleak.conf" ] || fail "tmpfiles.d does not follow PREFIX"
    make --no-print-directory -s uninstall DESTDIR="$d" PREFIX=/opt/kmemleak || fail "uninstall failed"
    [ -z "$(find "$d" -type f)" ] || fail "uninstall with PREFIX left files"
}

t_pkgconfig() {
    command -v pkg-config >/dev/null || skip "pkg-config missing"
    local d=$TMPROOT/pc out
    install_into "$d" /usr || fail "install-only failed"
    out=$(PKG_CONFIG_PATH=$d/usr/lib/pkgconfig PKG_CONFIG_ALLOW_SYSTEM_CFLAGS=1 PKG_CONFIG_ALLOW_SYSTEM_LIBS=1 \
        pkg-config --cflags --libs kmemleak) || fail "pkg-config failed"
    echo "PREFIX=/usr: $out"
    [ "$(echo $out)" = "-I/usr/include -L/usr/lib -lkmemleak" ] || fail "unexpected flags"
    out=$(PKG_CONFIG_PATH=$d/usr/lib/pkgconfig pkg-config --modversion kmemleak) || fail "no version"
    echo "version: $out"
    [ -n "$out" ] || fail "empty version"
    install_into "$TMPROOT/pc2" /opt/kmemleak || fail "install-only failed"
    out=$(PKG_CONFIG_PATH=$TMPROOT/pc2/opt/kmemleak/lib/pkgconfig pkg-config --cflags --libs kmemleak) || fail "pkg-config failed"
    echo "PREFIX=/opt/kmemleak: $out"
    [ "$(echo $out)" = "-I/opt/kmemleak/include -L/opt/kmemleak/lib -lkmemleak" ] || fail "unexpected flags"
}

t_pkgconfig_build() {
    [ -f "$BUILD/libkmemleak.so" ] && [ -f Sources/libkmemleak/include/kmemleak.h ] ||
        skip "libkmemleak.so / kmemleak.h not built yet"
    command -v "${CC:-cc}" >/dev/null || skip "no C compiler"
    local d=$TMPROOT/pcbuild flags
    install_into "$d" /usr || fail "install-only failed"
    flags=$(PKG_CONFIG_SYSROOT_DIR=$d PKG_CONFIG_PATH=$d/usr/lib/pkgconfig PKG_CONFIG_ALLOW_SYSTEM_CFLAGS=1 \
        PKG_CONFIG_ALLOW_SYSTEM_LIBS=1 pkg-config --cflags --libs kmemleak) || fail "pkg-config failed"
    printf '#include <kmemleak.h>\nint main(void) { return 0; }\n' >"$TMPROOT/pc-main.c"
    echo "${CC:-cc} pc-main.c $flags"
    # --no-as-needed must precede -lkmemleak: the program only includes the header, and a toolchain
    # that links --as-needed by default would otherwise drop the library.
    "${CC:-cc}" -o "$TMPROOT/pc-main" "$TMPROOT/pc-main.c" -Wl,--no-as-needed $flags || fail "compile/link failed"
    readelf -d "$TMPROOT/pc-main" | grep -q 'NEEDED.*libkmemleak.so' || fail "not linked against libkmemleak.so"
    LD_LIBRARY_PATH=$d/usr/lib "$TMPROOT/pc-main" || fail "linked program does not run"
}

# ---- sd_notify -----------------------------------------------------------------------------------
notify_check() { # DAEMON [WRAPPER]
    local dir
    dir=$(mktemp -d "$TMPROOT/notify.XXXXXX")
    mkdir "$dir/mnt" "$dir/run"
    python3 "$HERE/notify-check.py" --wrapper "${2:-}" "$1" "$dir/mnt" "$dir/run"
}
t_notify_harness() { need_root_fuse; notify_check "$FAKES/fake-kmemleakd"; }
t_notify() {
    have_daemon || skip "kmemleakd not built yet (.build/release/kmemleakd)"
    need_root_fuse
    notify_check "$BUILD/kmemleakd"
}
t_notify_unit_caps() {
    have_daemon || skip "kmemleakd not built yet (.build/release/kmemleakd)"
    need_root_fuse
    command -v setpriv >/dev/null || skip "setpriv missing"
    notify_check "$BUILD/kmemleakd" "$(unit_caps_setpriv)"
}

# Control for the emulation above: it must be able to fail.
t_seccomp_control() {
    have_daemon || skip "kmemleakd not built yet (.build/release/kmemleakd)"
    need_root_fuse
    local dir=$TMPROOT/seccomp-control
    mkdir -p "$dir/mnt" "$dir/run"
    printf 'SystemCallFilter=@system-service\nSystemCallErrorNumber=EPERM\n' >"$dir/nomount.service"
    timeout -k 5 20 python3 "$HERE/seccomp-exec.py" "$dir/nomount.service" \
        "$BUILD/kmemleakd" --run-dir "$dir/run" "$dir/mnt" >"$dir/log" 2>&1 &
    local pid=$! i
    for ((i = 0; i < 100; i++)); do kill -0 $pid 2>/dev/null || break; [ -e "$dir/mnt/kmemleak" ] && break; sleep 0.1; done
    if [ -e "$dir/mnt/kmemleak" ]; then kill -TERM $pid; wait $pid; fail "mounted although mount(2) was filtered"; fi
    kill -TERM $pid 2>/dev/null; wait $pid 2>/dev/null
    cat "$dir/log"
}

# ExecStopPost= of the unit, run for a temporary mount point instead of /run/kmemleakd.
stop_post() { # MOUNTPOINT
    local cmd
    cmd=$(sed -n 's/^ExecStopPost=-//p' "$UNIT_TEMPLATE" | sed 's/\$\$/$/g')
    cmd=${cmd//\/run\/kmemleakd/$1}
    eval "$cmd"
}
t_stop_post_leaves_others() {
    [ "$(id -u)" -eq 0 ] || skip "needs root"
    local m=$TMPROOT/other-mount
    mkdir -p "$m"
    mount -t tmpfs -o size=16k kmemleak "$m" || fail "cannot mount a tmpfs"
    stop_post "$m"
    if awk -v m="$m" '$5 == m { f = 1 } END { exit !f }' /proc/self/mountinfo; then
        umount "$m"; echo "a tmpfs (not our FUSE file system) was left alone"
    else fail "ExecStopPost unmounted a file system that is not kmemleak's"; fi
}
t_stop_post_stale() {
    have_daemon || skip "kmemleakd not built yet (.build/release/kmemleakd)"
    need_root_fuse
    local dir=$TMPROOT/stale pid i
    mkdir -p "$dir/mnt" "$dir/run"
    "$BUILD/kmemleakd" --run-dir "$dir/run" "$dir/mnt" >"$dir/log" 2>&1 &
    pid=$!
    for ((i = 0; i < 300; i++)); do [ -e "$dir/mnt/kmemleak" ] && break; sleep 0.1; done
    [ -e "$dir/mnt/kmemleak" ] || { kill -KILL $pid; cat "$dir/log"; fail "daemon did not mount"; }
    findmnt -rn -M "$dir/mnt" -o SOURCE,FSTYPE
    kill -KILL $pid; wait $pid 2>/dev/null
    stop_post "$dir/mnt"
    if awk -v m="$dir/mnt" '$5 == m { f = 1 } END { exit !f }' /proc/self/mountinfo; then
        fail "the stale mount left by kill -9 is still there after ExecStopPost"
    fi
}

# The installed unit's ExecStartPre= and ExecStart=, run for real with /mnt and /run/kmemleakd moved
# under a test root (and a run directory of the test's own): the mount is in its own directory, the
# link gives /mnt/kmemleak, and what an administrator keeps under /mnt stays visible.
unit_start_command() { # ROOT KEY: the unit's KEY= command with the test root's paths
    local root=$1 key=$2
    sed -n "s/^$key=-\{0,1\}//p" "$root/unit/usr/lib/systemd/system/kmemleakd.service" |
        sed -e "s|/run/kmemleakd|$root/run/kmemleakd|g" -e "s| /mnt/| $root/mnt/|g" \
            -e "s|^/usr/bin/kmemleakd|$root/unit/usr/bin/kmemleakd --run-dir $root/clients --scan-period 0|"
}
wait_for() { # SECONDS COMMAND...: polls every 0.1 s
    local i n=$(($1 * 10)); shift
    for ((i = 0; i < n; i++)); do "$@" && return 0; sleep 0.1; done
    return 1
}
# Installs under ROOT/unit, runs ExecStartPre= and ExecStart= (log in ROOT/log) and waits for the mount:
# UNIT_PID is the daemon.
unit_start() { # ROOT
    local r=$1
    install_into "$r/unit" /usr || fail "install-only failed"
    eval "$(unit_start_command "$r" ExecStartPre)" || fail "ExecStartPre failed"
    bash -c "exec $(unit_start_command "$r" ExecStart)" >"$r/log" 2>&1 &
    UNIT_PID=$!
    wait_for 30 is_our_mount "$r/run/kmemleakd" || { kill -KILL $UNIT_PID; cat "$r/log"; fail "the unit's command did not mount"; }
}
is_our_mount() { [ "$(findmnt -rn -M "$1" -o SOURCE,FSTYPE)" = "kmemleak fuse.kmemleak" ]; }
t_unit_keeps_mnt() {
    have_daemon || skip "kmemleakd not built yet (.build/release/kmemleakd)"
    need_root_fuse
    local r=$TMPROOT/keeps-mnt pid
    mkdir -p "$r/mnt/disk" "$r/run" "$r/clients"
    echo "an administrator's file" >"$r/mnt/disk/notes"
    unit_start "$r"
    pid=$UNIT_PID
    wait_for 10 test -L "$r/mnt/kmemleak" || { kill -TERM $pid; cat "$r/log"; fail "no $r/mnt/kmemleak link"; }
    echo scan >"$r/mnt/kmemleak" || { kill -TERM $pid; fail "echo scan > mnt/kmemleak failed"; }
    cat "$r/mnt/kmemleak" >/dev/null || { kill -TERM $pid; fail "cat mnt/kmemleak failed"; }
    [ "$(cat "$r/mnt/disk/notes")" = "an administrator's file" ] || { kill -TERM $pid; fail "mnt/disk hidden"; }
    findmnt -rn -M "$r/mnt" >/dev/null && { kill -TERM $pid; fail "something is mounted on mnt itself"; }
    kill -TERM $pid; wait $pid || fail "daemon exit status $?"
    [ ! -e "$r/mnt/kmemleak" ] && [ ! -L "$r/mnt/kmemleak" ] || fail "the link is left after stop"
    is_our_mount "$r/run/kmemleakd" && fail "still mounted after stop"
    [ "$(ls "$r/mnt")" = disk ] || fail "mnt changed: $(ls "$r/mnt")"
}
# Something of the administrator's at /mnt/kmemleak is never replaced; the mount still serves.
t_unit_link_occupied() {
    have_daemon || skip "kmemleakd not built yet (.build/release/kmemleakd)"
    need_root_fuse
    local r=$TMPROOT/occupied pid
    mkdir -p "$r/mnt" "$r/run" "$r/clients"
    echo "keep me" >"$r/mnt/kmemleak"
    unit_start "$r"
    pid=$UNIT_PID
    wait_for 10 grep -q "not replaced" "$r/log" || { kill -TERM $pid; cat "$r/log"; fail "no error line for the occupied path"; }
    echo scan >"$r/run/kmemleakd/kmemleak" || { kill -TERM $pid; fail "the mount does not serve"; }
    kill -TERM $pid; wait $pid || fail "daemon exit status $?"
    cat "$r/log"
    [ "$(cat "$r/mnt/kmemleak")" = "keep me" ] || fail "the administrator's file was changed"
}

# ---- the demo --------------------------------------------------------------------------------------
demo_check() { # OUTPUT-FILE RC
    local out=$1 rc=$2
    cat "$out"
    [ "$rc" -eq 0 ] || fail "demo exited with $rc"
    grep -q '^unreferenced object (percpu) 0x' "$out" || fail "no per-CPU leak report in the demo output"
    grep -qE '^demo: ([0-9]+) of \1 leaks reported, 0 unexpected \(loaded\)$' "$out" || fail "loaded: summary missing or mismatched"
    grep -qE '^demo: ([0-9]+) of \1 leaks reported, 0 unexpected \(unloaded\)$' "$out" || fail "unloaded: summary missing or mismatched"
    [ -z "$(ls -d /tmp/kmemleak-demo.* 2>/dev/null | grep -Fxv -f "$TMPROOT/demo-before")" ] || fail "demo left a temporary directory"
}
demo_run() { # OUTPUT-FILE, then environment assignments
    local out=$1
    shift
    ls -d /tmp/kmemleak-demo.* >"$TMPROOT/demo-before" 2>/dev/null
    env KMEMLEAKD="$BUILD/kmemleakd" LIBKMEMLEAK="$BUILD/libkmemleak.so" KMEMLEAK_TEST="$BUILD/kmemleak-test" "$@" \
        timeout -k 10 600 bash scripts/demo.sh --no-build >"$out" 2>&1
}
t_demo_harness() {
    need_root_fuse
    : >"$TMPROOT/not-an-elf.so"   # the fake client needs no shim
    demo_run "$TMPROOT/demo-harness.out" KMEMLEAKD="$FAKES/fake-kmemleakd" KMEMLEAK_TEST="$FAKES/fake-kmemleak-test" \
        LIBKMEMLEAK="$TMPROOT/not-an-elf.so"
    demo_check "$TMPROOT/demo-harness.out" $?
}
t_demo() {
    have_daemon && have_client || skip "kmemleakd/libkmemleak.so/kmemleak-test not built yet (make build)"
    need_root_fuse
    demo_run "$TMPROOT/demo.out"
    demo_check "$TMPROOT/demo.out" $?
}
# The unit's capability set, no_new_privs, and a client of another user: proves the bounding set is enough.
t_demo_unit_caps_other_user() {
    have_daemon && have_client || skip "kmemleakd/libkmemleak.so/kmemleak-test not built yet (make build)"
    need_root_fuse
    command -v setpriv >/dev/null || skip "setpriv missing"
    id nobody >/dev/null 2>&1 || skip "no user nobody"
    # The client (user nobody) must be able to read the build output.
    local p=$BUILD
    while [ "$p" != / ]; do
        case $(stat -L -c %A "$p" | cut -c10) in x | t) ;; *) skip "$p is not searchable by other users" ;; esac
        p=$(dirname "$p")
    done
    demo_run "$TMPROOT/demo-caps.out" DEMO_DAEMON_WRAPPER="$(unit_caps_setpriv)" DEMO_CLIENT_USER=nobody
    demo_check "$TMPROOT/demo-caps.out" $?
}

echo "== service tests ($(have_daemon && echo "kmemleakd built" || echo "kmemleakd NOT built"), $(have_client && echo "shim built" || echo "shim NOT built"))"
run "unit: required settings, no mount-namespace options" t_unit_contents
run "unit: systemd-analyze verify" t_unit_verify
run "drop-in example: systemd-analyze verify on a sample service" t_dropin_verify
run "unit: systemd-analyze security --offline (exposure <= 5.0)" t_unit_security
run "tmpfiles.d: /run/kmemleak 1777 root root" t_tmpfiles
run "install: exact tree, modes, substitutions" t_install_tree
run "uninstall: no files left" t_uninstall
run "install/uninstall: PREFIX=/opt/kmemleak" t_install_prefix
run "pkg-config: --cflags --libs" t_pkgconfig
run "pkg-config: compile and link a client" t_pkgconfig_build
run "unit: ExecStopPost leaves a non-kmemleak mount alone" t_stop_post_leaves_others
run "unit: ExecStopPost removes a stale kmemleak mount (kill -9)" t_stop_post_stale
run "unit: mounts its own directory, /mnt/kmemleak is a link, nothing under /mnt hidden" t_unit_keeps_mnt
run "unit: an existing /mnt/kmemleak is left alone, the mount still serves" t_unit_link_occupied
run "harness: sd_notify check against fake-kmemleakd" t_notify_harness
run "sd_notify: READY=1 after mount, STOPPING=1 + exit 0 on SIGTERM" t_notify
run "sd_notify: with the unit's capabilities, no_new_privs and SystemCallFilter" t_notify_unit_caps
run "unit: a SystemCallFilter without @mount breaks the mount (control)" t_seccomp_control
run "harness: demo against fake-kmemleakd/fake-kmemleak-test" t_demo_harness
run "demo: all leaks reported, per-CPU leak report" t_demo
run "demo: unit's capabilities + SystemCallFilter, client as user nobody" t_demo_unit_caps_other_user

if [ "$SKIPPED" -gt 0 ]; then echo "$SKIPPED skipped (not counted as passed):"; printf '  %s\n' "${SKIPPED_NAMES[@]}"; fi
if [ "$FAILED" -gt 0 ]; then printf 'failed: %s\n' "${FAILED_NAMES[@]}"; fi
echo "$PASSED passed, $FAILED failed"
[ "$FAILED" -eq 0 ]
