#!/usr/bin/python3
"""A python3 client for the real-programs suite (run with Debian's /usr/bin/python3).

At start: 16 blocks planted for a later leak (see plant), 20 threads created and joined, a
ThreadPoolExecutor's work, and an http.server.ThreadingHTTPServer on 127.0.0.1, port 0, served from
a thread. Prints "PORT <n>" and "READY", then reads commands from stdin, one a line:
  load N   N GET requests to the server from a client thread (one connection each); prints
           "LOADED N <seconds>" after checking every answer
  leak     drops the planted blocks of libc's malloc (ctypes.CDLL(None).malloc, 8 + (i * 997) % 4089
           bytes), whose addresses it prints as "LEAK 0x<addr>", with no copy of them left behind;
           then "LEAKED 16"
  exit     (or EOF) shuts the server down and exits 0
"""
import concurrent.futures
import ctypes
import http.client
import http.server
import sys
import threading
import time


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = ("hello " + self.path + "\n").encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format, *args):
        pass


def threads_once():
    results = [0] * 20

    def work(i):
        results[i] = sum(range(i * 1000))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        squares = list(pool.map(lambda x: x * x, range(100)))
    assert squares[99] == 99 * 99 and results[19] == sum(range(19000))


def load(port, count):
    errors = []

    def client():
        for i in range(count):
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            try:
                connection.request("GET", "/r%d" % i)
                response = connection.getresponse()
                body = response.read()
                if response.status != 200 or body != ("hello /r%d\n" % i).encode():
                    errors.append((i, response.status, body))
            finally:
                connection.close()

    start = time.monotonic()
    thread = threading.Thread(target=client)
    thread.start()
    thread.join()
    elapsed = time.monotonic() - start
    if errors:
        print("ERROR %r" % errors[:3], flush=True)
    print("LOADED %d %.3f" % (count, elapsed), flush=True)


PLANTED = 16
# The warm-up blocks (see plant), as raw pointers: reachable for good, never reported.
KEPT = (ctypes.c_void_p * 4096)()
# glibc's HEAP_MAX_SIZE on 64-bit: a thread arena's heap is a mapping aligned to it.
HEAP_MAX = 64 << 20


def leak_size(i):
    return 8 + (i * 997) % 4089


class Address(ctypes.c_void_p):
    """A c_void_p subclass: a foreign function returning it gives a ctypes object, not a Python int
    (a one-digit int would hold a low heap address as a plain 8-byte word)."""


def writable_end(address):
    """The end of the /proc/self/maps mapping that holds address."""
    with open("/proc/self/maps") as maps:
        for line in maps:
            lo, hi = (int(x, 16) for x in line.split()[0].split("-"))
            if lo <= address < hi:
                return hi
    raise RuntimeError("no mapping holds 0x%x" % address)


def plant(count):
    """Allocates the blocks of a later leak, 8 to 4096 bytes, at start-up on a new thread, so that they
    come from its new malloc arena, each at an address that arena never handed out before. A
    conservative scan cannot tell a stale copy of an address from a live one: a block that reused
    memory the thread's start had used and freed a moment ago (glibc merges it back into the arena's
    top) would still be pointed into by stale words of freed Python objects. So every block that
    comes from below the arena heap's writable end as it was before planting (which bounds all it
    ever handed out, with glibc's top pad) is kept for good instead, with spacers, until malloc returns
    one beyond it. The thread then ends: the pointers passed through ctypes' result buffer on its C
    stack only. Returns the array that holds the blocks (reachable until `leak` zeroes it)."""
    libc = ctypes.CDLL(None)
    malloc = libc.malloc
    malloc.restype = Address
    malloc.argtypes = [ctypes.c_size_t]
    blocks = (ctypes.c_void_p * count)()
    sizes = [leak_size(i) for i in range(count)]
    failure = []

    def work():
        # 4096 bytes are past the tcache: this thread's arena serves them, not a block another
        # thread freed.
        first = malloc(4096)
        KEPT[0] = first
        heap = first.value & ~(HEAP_MAX - 1)
        fresh = writable_end(first.value)
        first.value = None
        kept = 1
        for i, size in enumerate(sizes):
            while True:
                block = malloc(size)
                if fresh <= block.value < heap + HEAP_MAX:
                    blocks[i] = block
                    block.value = None
                    break
                if kept == len(KEPT):
                    failure.append("%d warm-up blocks did not reach 0x%x" % (kept, fresh))
                    return
                # Blocks from the arena's top below that end: a spacer of up to 64 KiB (below the
                # mmap threshold) moves the top there faster than blocks of this size would.
                gap = fresh - block.value
                KEPT[kept] = block
                block.value = None
                kept += 1
                if 0 < gap < HEAP_MAX and kept < len(KEPT):
                    spacer = malloc(min(gap, 64 << 10))
                    KEPT[kept] = spacer
                    spacer.value = None
                    kept += 1

    thread = threading.Thread(target=work)
    thread.start()
    thread.join()
    if failure:
        raise RuntimeError(failure[0])
    return blocks


def leak(blocks):
    """Prints the planted blocks' addresses, one byte (a cached small int) at a time, then zeroes the
    only binary copy: the blocks are leaked."""
    raw = (ctypes.c_ubyte * ctypes.sizeof(blocks)).from_buffer(blocks)
    lines = []
    for i in range(len(blocks)):
        digits = "".join("%02x" % raw[8 * i + j] for j in range(7, -1, -1)).lstrip("0")
        lines.append("LEAK 0x" + (digits or "0"))
    del raw
    ctypes.memset(blocks, 0, ctypes.sizeof(blocks))
    print("\n".join(lines), flush=True)
    print("LEAKED %d" % len(blocks), flush=True)


def main():
    planted = plant(PLANTED)
    threads_once()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    serving = threading.Thread(target=server.serve_forever, daemon=True)
    serving.start()
    port = server.server_address[1]
    print("PORT %d" % port, flush=True)
    print("READY", flush=True)
    for line in sys.stdin:
        words = line.split()
        if not words:
            continue
        if words[0] == "load":
            load(port, int(words[1]))
        elif words[0] == "leak" and planted is not None:
            leak(planted)
            planted = None
        elif words[0] == "exit":
            break
    server.shutdown()
    server.server_close()


if __name__ == "__main__":
    main()
