#!/usr/bin/env python3
"""Where does a process hold a pointer into given objects? (used to explain the leaks kmemleakd misses)

    find-refs.py PID ADDR:SIZE [ADDR:SIZE...]      (root; needs numpy)

Reads every readable mapping of PID through /proc/PID/mem and prints each aligned 8-byte word whose value
lies in [ADDR, ADDR+SIZE), with its mapping and whether it is on [stack] below the stack pointer (a dead
frame). The stack pointer comes from /proc/PID/syscall, so PID should be blocked in a system call (e.g.
scan-client waiting on stdin). Hits in /memfd:kmemleak-table are the shim's own records (not roots).
"""
import sys
import numpy as np

pid = int(sys.argv[1])
targets = [(int(a, 16), int(s)) for a, s in (x.split(':') for x in sys.argv[2:])]
fields = open(f'/proc/{pid}/syscall').read().split()
sp = int(fields[-2], 16) if len(fields) >= 3 else 0
print('sp', hex(sp))
mem = open(f'/proc/{pid}/mem', 'rb', 0)
for line in open(f'/proc/{pid}/maps'):
    f = line.split()
    lo, hi = [int(x, 16) for x in f[0].split('-')]
    name = f[5] if len(f) > 5 else ''
    if 'r' not in f[1] or name in ('[vvar]', '[vsyscall]', '[vvar_vclock]'):
        continue
    try:
        mem.seek(lo)
        buf = mem.read(hi - lo)
    except OSError:
        continue
    words = np.frombuffer(buf[:len(buf) // 8 * 8], dtype=np.uint64)
    for start, size in targets:
        for i in np.nonzero((words >= start) & (words < start + size))[0][:10]:
            at = lo + 8 * int(i)
            dead = ' below SP' if name == '[stack]' and at < sp else ''
            print(f'{start:#x}: word at {at:#x} ({name} {f[1]} +{at - lo:#x}{dead}) = {start:#x}+{int(words[i]) - start}')
