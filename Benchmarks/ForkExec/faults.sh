#!/usr/bin/env bash
# Page faults per iteration of the fork benchmark's `$(true)` loop, by the memory they hit (the shim's
# table and private area by region, its .data/.bss, the CFI rule cache, the program's own): `perf
# record -e page-faults -d` of a bash loop under LD_PRELOAD=<shim>, classified by faults.py with the
# parent's maps and table header read before the loop. Not a test; issue 10 goal 4's analysis aid.
# usage: faults.sh <libkmemleak.so|none>    env: N (default 300), BODY (default '$(true)')
set -euo pipefail
SHIM=$1 N=${N:-300} BODY=${BODY:-'$(true)'}
here=$(dirname "$(realpath "$0")")
D=$(mktemp -d /tmp/kml-faults.XXXXXX); trap 'rm -rf "$D"' EXIT
export KMEMLEAK_RUN_DIR=$D
pre=(); [[ $SHIM != none ]] && pre=(LD_PRELOAD="$(realpath "$SHIM")")
# the dump's helpers (cat, dd) are not counted: faults.py counts processes named bash only
script='cat /proc/$$/maps > '"$D"'/maps
prev= b=
while read -r range perm rest; do
    if [[ $perm == rw-p && $prev == ---p ]]; then b=${range%-*}; fi
    prev=$perm
done < '"$D"'/maps
if [[ -n $b ]]; then dd if=/proc/$$/mem of='"$D"'/hdr bs=4096 skip=$((16#$b / 4096)) count=1 status=none; fi
for ((i = 0; i < '"$N"'; i++)); do x='"$BODY"'; done'
perf record -q -c 1 -e page-faults -d -o "$D/perf.data" -- env "${pre[@]}" bash -c "$script" 2>/dev/null
hdr=$D/hdr; [[ -s $hdr ]] || hdr=-
/usr/bin/python3 "$here/faults.py" "$D/perf.data" "$D/maps" "$hdr" "$N"
