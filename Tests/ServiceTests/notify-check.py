#!/usr/bin/env python3
"""sd_notify check of kmemleakd, without systemd: play the service manager's side.

usage: notify-check.py [--timeout S] [--wrapper 'CMD ARGS'] DAEMON MOUNTPOINT RUN_DIR

Binds an AF_UNIX datagram socket, starts DAEMON --run-dir RUN_DIR MOUNTPOINT with NOTIFY_SOCKET
pointing at it, and checks: READY=1 arrives within the timeout; when it arrives MOUNTPOINT is already
mounted and MOUNTPOINT/kmemleak exists (READY means "mount up"); after SIGTERM, STOPPING=1 arrives,
the daemon exits with status 0 and nothing is mounted on MOUNTPOINT any more. Prints one line per
check and exits 0 only if all pass. The daemon is always killed and the mount always removed."""
import argparse, os, shlex, signal, socket, subprocess, sys, tempfile, time

ap = argparse.ArgumentParser()
ap.add_argument("--timeout", type=float, default=30)
ap.add_argument("--wrapper", default="")
ap.add_argument("daemon")
ap.add_argument("mountpoint")
ap.add_argument("run_dir")
a = ap.parse_args()
mnt = os.path.realpath(a.mountpoint)
failures = 0


def check(ok, what):
    global failures
    print(("ok:   " if ok else "FAIL: ") + what, flush=True)
    if not ok:
        failures += 1
    return ok


def mounted():
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == mnt for line in f)


def receive(sock, want, deadline, proc):
    """Datagrams until one contains the line `want`; None on timeout or if the daemon exits first."""
    seen = []
    while time.monotonic() < deadline:
        try:
            data = sock.recv(4096).decode(errors="replace")
        except socket.timeout:
            if proc.poll() is not None:
                break
            continue
        seen.append(data)
        if want in data.split("\n"):
            return seen
    print("      datagrams received: %r" % seen, flush=True)
    return None


tmp = tempfile.mkdtemp(prefix="kmemleak-notify.")
path = os.path.join(tmp, "notify.sock")
sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
sock.bind(path)
sock.settimeout(0.2)
env = dict(os.environ, NOTIFY_SOCKET=path)
log = open(os.path.join(tmp, "daemon.log"), "w+")
cmd = shlex.split(a.wrapper) + [a.daemon, "--run-dir", a.run_dir, mnt]
print("      " + " ".join(cmd), flush=True)
proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
try:
    got = receive(sock, "READY=1", time.monotonic() + a.timeout, proc)
    if check(got is not None, "READY=1 within %gs" % a.timeout):
        check(mounted() and os.path.exists(os.path.join(mnt, "kmemleak")),
              "mounted with %s/kmemleak when READY=1 arrived" % mnt)
        proc.send_signal(signal.SIGTERM)
        check(receive(sock, "STOPPING=1", time.monotonic() + a.timeout, proc) is not None,
              "STOPPING=1 after SIGTERM")
        try:
            rc = proc.wait(a.timeout)
        except subprocess.TimeoutExpired:
            rc = None
        check(rc == 0, "exit status 0 after SIGTERM (got %s)" % rc)
        check(not mounted(), "nothing mounted on %s after exit" % mnt)
finally:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    if mounted():
        subprocess.run(["fusermount3", "-u", "-z", mnt], stderr=subprocess.DEVNULL)
        if mounted():
            subprocess.run(["umount", "-l", mnt], stderr=subprocess.DEVNULL)
    if failures:
        log.seek(0)
        sys.stdout.write("      ---- daemon log ----\n" + "".join("      " + l for l in log) + "      ----\n")
    log.close()
    sock.close()
    for name in os.listdir(tmp):
        os.unlink(os.path.join(tmp, name))
    os.rmdir(tmp)
sys.exit(1 if failures else 0)
