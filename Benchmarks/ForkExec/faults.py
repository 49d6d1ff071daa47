#!/usr/bin/python3
"""Classifies the page faults of a `perf record -e page-faults -d` run of the fork benchmark's loop
(faults.sh) by the memory they hit: the shim's table (header, object slots, depot, thread records,
...), its private area (object index, stripes, depot buckets, ...), the shim's .data/.bss, the CFI rule
cache, the rest. Prints faults per iteration, parent (the looping bash) and children apart.
env DETAIL=<region name part>: the faulting pages of those regions
usage: faults.py <perf.data> <maps of the parent> <header dump (first 4 KiB of the table) or -> N
Not a test: a benchmark's analysis aid (issue 10 goal 4)."""
import collections, os, re, struct, subprocess, sys

perf_data, maps_path, hdr_path, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
maps = []
for line in open(maps_path):
    f = line.split()
    lo, hi = (int(x, 16) for x in f[0].split('-'))
    maps.append((lo, hi, f[1], f[5] if len(f) > 5 else ''))

def page(a): return a & ~4095
regions = []  # (lo, hi, name), the first match wins
# the table: the private rw mapping between two one-page PROT_NONE guards (named "[anon:kmemleak..."
# only where the kernel has CONFIG_ANON_VMA_NAME)
tbl = None
for i in range(1, len(maps) - 1):
    lo, hi, perm, name = maps[i]
    if (perm == 'rw-p' and maps[i - 1][2] == '---p' and maps[i + 1][2] == '---p' and maps[i - 1][1] == lo
            and maps[i + 1][0] == hi and maps[i - 1][1] - maps[i - 1][0] == 4096):
        tbl = (lo, hi)
if tbl and hdr_path != '-':
    h = open(hdr_path, 'rb').read(4096)
    off = {k: struct.unpack_from('<Q', h, o)[0] for k, o in
           (('objects', 56), ('traces', 80), ('threads', 104), ('comms', 128), ('regions', 152), ('areas', 176))}
    total = struct.unpack_from('<Q', h, 16)[0]
    b = tbl[0]
    order = sorted(off.items(), key=lambda kv: kv[1]) + [('end', total)]
    regions.append((b, b + order[0][1], 'table: header'))
    for (k, o), (_, o2) in zip(order, order[1:]):
        regions.append((b + o, b + o2, 'table: ' + k))
# the private area: the object index (2^23 entries of 16 bytes at the default capacity, its own
# mapping after madvise(MADV_HUGEPAGE)), then its growth scratch, the stripes (MADV_WIPEONFORK), the
# depot buckets, the lists
OIX = (1 << 23) * 16
for i, (lo, hi, perm, name) in enumerate(maps):
    if name == '' and perm == 'rw-p' and hi - lo == OIX:
        regions.append((lo, hi, 'private: object index'))
        for j, what in enumerate(('private: index scratch', 'private: stripes', 'private: depot buckets',
                                  'private: mm/thread/batch lists')):
            if i + 1 + j < len(maps):
                regions.append((maps[i + 1 + j][0], maps[i + 1 + j][1], what))
        break
shim_rw = [(lo, hi) for lo, hi, perm, name in maps if name.endswith('libkmemleak.so') and 'w' in perm]
for i, (lo, hi, perm, name) in enumerate(maps):
    if name.endswith('libkmemleak.so') and 'w' in perm:
        regions.append((lo, hi, 'shim .data'))
        if i + 1 < len(maps) and maps[i + 1][3] == '' and maps[i + 1][0] == hi:
            regions.append((hi, maps[i + 1][1], 'shim .bss'))
for lo, hi, perm, name in maps:
    if name.startswith('/dev/zero') or name.startswith('/SYSV') or name == '[anon_shmem]' or 'zero (deleted)' in name:
        regions.append((lo, hi, 'CFI rule cache (shared)'))
for lo, hi, perm, name in maps:
    if name in ('[stack]', '[heap]'):
        regions.append((lo, hi, name))
    elif name.startswith('/'):
        regions.append((lo, hi, 'file ' + name.rsplit('/', 1)[-1] + ' ' + perm))
    elif name == '':
        before = [m for m in maps if m[1] == lo]
        after = before[0][3].rsplit('/', 1)[-1] if before and before[0][3] else ''
        regions.append((lo, hi, f"anonymous {(hi - lo) >> 10} KiB" + (f" after {after}" if after else '')))

def classify(a):
    for lo, hi, name in regions:
        if lo <= a < hi:
            return name
    return 'unmapped in parent (new in the child / TLS / vdso)'

out = subprocess.run(['perf', 'script', '-i', perf_data, '-F', 'comm,pid,ip,sym,dso,addr'], capture_output=True, text=True).stdout
parent = None
counts = collections.Counter()
detailed = collections.Counter()
detail = os.environ.get('DETAIL')
pages = collections.defaultdict(set)
syms = collections.defaultdict(collections.Counter)
line_re = re.compile(r'^\s*(\S+)\s+(\d+)\s+([0-9a-f]+)\s+(.*?)\s+\((.*?)\)\s+([0-9a-f]+)\s+(.*?)\s+\((.*?)\)$')
for line in out.splitlines():
    m = line_re.match(line)
    if not m or m.group(1) != 'bash':
        continue
    pid, addr, data_sym, ip_sym = int(m.group(2)), int(m.group(3), 16), m.group(4), m.group(7)
    if parent is None:
        parent = pid
    who = 'parent' if pid == parent else 'child'
    c = classify(addr)
    counts[(who, c)] += 1
    if detail and detail in c:
        base = next(lo for lo, hi, name in regions if name == c and lo <= addr < hi)
        pages[(who, c)].add(0)
        detailed[(who, c, (addr - base) >> 12, ip_sym if data_sym == '[unknown]' else data_sym)] += 1
    syms[(who, c)][ip_sym if data_sym == '[unknown]' else data_sym + ' (data) in ' + ip_sym] += 1
total = sum(counts.values())
print(f"{total} faults, {n} iterations: {total / n:.1f} per iteration")
print(f"{'who':7} {'region':44} {'per iter':>8}  top faulting functions (or data symbols)")
for (who, c), k in sorted(counts.items(), key=lambda kv: -kv[1]):
    if k / n < 0.05:
        continue
    top = ', '.join(f"{s} {v / n:.1f}" for s, v in syms[(who, c)].most_common(3))
    print(f"{who:7} {c:44} {k / n:8.2f}  {top}")
if detail:
    print(f"pages of regions matching {detail!r} (page index in the region, function or data symbol):")
    for (who, c, pg, sym), k in sorted(detailed.items(), key=lambda kv: -kv[1]):
        if k / n >= 0.05:
            print(f"  {who:7} {c:32} page {pg:6} {k / n:6.2f}  {sym}")
