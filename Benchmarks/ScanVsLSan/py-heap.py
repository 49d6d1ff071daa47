#!/usr/bin/env -S PYTHONMALLOC=malloc /usr/bin/python3
"""py-heap: a python3 heap for the scan benchmark (issue 10), with scan-client's protocol.

    py-heap.py [N] [L]      N: live objects to aim at (default 1500000), L: planted leaks (default 1000)

PYTHONMALLOC=malloc (set by the #! line) makes every Python object a malloc block. Builds records of
dicts, lists, strings and ints (about 6.5 blocks each) until about N blocks are live, plants L leaks
(malloc'd through ctypes, their only pointers dropped), prints "LEAK 0x..." per leak and "READY", then
obeys stdin: "lsan" runs __lsan_do_recoverable_leak_check() (when liblsan is preloaded) and prints
"LSAN <nanoseconds> <found>"; "exit" (or EOF) exits.
"""
import ctypes
import sys
import time

live = int(sys.argv[1]) if len(sys.argv) > 1 else 1500000
leaks = int(sys.argv[2]) if len(sys.argv) > 2 else 1000
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.memset.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t]

records = []
for i in range(live * 2 // 13):
    records.append({"id": i + 1000, "name": "user-%d" % i, "tags": [i * 7 + 1000, str(i)], "score": i * 0.5})


def plant(count):
    out = []
    for k in range(count):
        size = 16 + (k * 7919) % 1024
        p = libc.malloc(size)
        libc.memset(p, 0x5A, size)
        out.append("LEAK 0x%x\n" % p)
    return "".join(out)


sys.stdout.write(plant(leaks))
sys.stdout.write("READY\n")
sys.stdout.flush()
check = getattr(libc, "__lsan_do_recoverable_leak_check", None) if hasattr(libc, "__lsan_do_recoverable_leak_check") else None
for line in sys.stdin:
    if line.startswith("lsan"):
        if check is None:
            print("LSAN unavailable", flush=True)
        else:
            start = time.monotonic_ns()
            found = check()
            print("LSAN %d %d" % (time.monotonic_ns() - start, found), flush=True)
    elif line.startswith("exit"):
        break
