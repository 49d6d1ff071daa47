#!/usr/bin/python3
"""Load driver for Benchmarks/RealPrograms/run.sh (Debian's python3, never under the shim).

  load.py http PORT N    N GET requests to 127.0.0.1:PORT, one connection each
  load.py redis PORT N   N SET/GET pairs on one connection (RESP)
  load.py wait PORT      waits (up to 30 s) until 127.0.0.1:PORT accepts
Prints the wall time of the loop in seconds.
"""
import socket
import sys
import time


def wait(port):
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    sys.exit("127.0.0.1:%d does not accept" % port)


def receive(sock, count):
    data = b""
    while len(data) < count:
        chunk = sock.recv(count - len(data))
        if not chunk:
            raise EOFError
        data += chunk
    return data


def http(port, n):
    for i in range(n):
        with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
            sock.sendall(b"GET /r%d HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n" % i)
            response = b""
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                response += chunk
            assert response.startswith(b"HTTP/1.1 200"), response[:100]


def resp(*words):
    return b"*%d\r\n" % len(words) + b"".join(b"$%d\r\n%s\r\n" % (len(w), w) for w in words)


def redis(port, n):
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        for i in range(n):
            value = b"value-%d" % i
            sock.sendall(resp(b"SET", b"key:%d" % i, value))
            assert receive(sock, 5) == b"+OK\r\n"
            sock.sendall(resp(b"GET", b"key:%d" % i))
            expected = b"$%d\r\n%s\r\n" % (len(value), value)
            assert receive(sock, len(expected)) == expected


mode, port = sys.argv[1], int(sys.argv[2])
if mode == "wait":
    wait(port)
else:
    start = time.monotonic()
    {"http": http, "redis": redis}[mode](port, int(sys.argv[3]))
    print("%.3f" % (time.monotonic() - start))
