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
KEPT = (ctypes.c_void_p * PLANTED)()


def leak_size(i):
    return 8 + (i * 997) % 4089


class Address(ctypes.c_void_p):
    """A c_void_p subclass: a foreign function returning it gives a ctypes object, not a Python int
    (a one-digit int would hold a low heap address as a plain 8-byte word)."""


def plant(count):
    """Allocates the blocks of a later leak, 8 to 4096 bytes, at start-up on the program's first thread,
    so that they come from a new malloc arena: addresses the program never used before. A conservative
    scan cannot tell a stale copy of an address from a live one, and a block that reused the address of
    an object freed a moment ago would still be pointed to by stale frames, pools and uninitialised
    buffers. The thread then ends: the pointers passed through ctypes' result buffer on its C stack
    only. Returns the array that holds the blocks (reachable until `leak` zeroes it)."""
    libc = ctypes.CDLL(None)
    malloc = libc.malloc
    malloc.restype = Address
    malloc.argtypes = [ctypes.c_size_t]
    blocks = (ctypes.c_void_p * count)()

    sizes = [leak_size(i) for i in range(count)]
    results = []

    def work():
        # A first round, kept for good, takes the chunks that the thread's start freed (whose addresses
        # stale copies still hold); the planted round then comes from memory never used. Nothing is
        # freed meanwhile: the result objects are zeroed and kept until the end.
        for size in sizes + sizes:
            results.append(malloc(size))
        for i, block in enumerate(results):
            if i < count:
                KEPT[i] = block
            else:
                blocks[i - count] = block
            block.value = None

    thread = threading.Thread(target=work)
    thread.start()
    thread.join()
    del results[:]
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
