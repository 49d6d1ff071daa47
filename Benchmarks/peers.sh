# peers.sh - sourced by the issue 10 benchmark scripts: the configurations they compare and the
# statistics they print. Needs SHIM and LSAN set.
median() { sort -n | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
machine() { echo "machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(uname -r), load $(cut -d' ' -f1-3 /proc/loadavg)"; }
# peer_env <config>: sets the array PEER_ENV to the environment of that configuration
#   plain, shim, lsan (LeakSanitizer's preload, default fast unwinder), lsan_full (fast_unwind_on_malloc=0: full stacks),
#   shim_base (another libkmemleak.so, e.g. main's, for before/after figures from the same run)
peer_env() {
    case $1 in
    plain) PEER_ENV=() ;;
    shim) PEER_ENV=(LD_PRELOAD="$SHIM") ;;
    shim_base) PEER_ENV=(LD_PRELOAD="$SHIM_BASE") ;;
    lsan) PEER_ENV=(LD_PRELOAD="$LSAN" LSAN_OPTIONS=detect_leaks=0) ;;
    lsan_full) PEER_ENV=(LD_PRELOAD="$LSAN" LSAN_OPTIONS=detect_leaks=0:fast_unwind_on_malloc=0) ;;
    *) echo "unknown configuration $1" >&2; return 1 ;;
    esac
}
# with_base <configs...>: the configurations, plus shim_base after shim when SHIM_BASE is set
with_base() {
    local c
    for c in "$@"; do
        echo "$c"
        if [[ $c == shim && -n ${SHIM_BASE:-} ]]; then echo shim_base; fi
    done
}
