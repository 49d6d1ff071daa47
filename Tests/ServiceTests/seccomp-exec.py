#!/usr/bin/env python3
"""Run a command under the SystemCallFilter= of a unit, without systemd (PID 1 need not be systemd).

usage: seccomp-exec.py UNIT-FILE COMMAND [ARGS...]

Reads SystemCallFilter= and SystemCallErrorNumber= from UNIT-FILE, expands the @groups with
`systemd-analyze syscall-filter` (the same tables systemd uses), loads an allow-list seccomp filter
through libseccomp (calls outside the list fail with the unit's errno, EPERM by default) and execs
COMMAND. Also applied, when the unit has them: RestrictAddressFamilies=AF_UNIX (socket(2) of any other
family fails) and MemoryDenyWriteExecute=yes (mmap with PROT_WRITE|PROT_EXEC, mprotect/pkey_mprotect
with PROT_EXEC fail), as systemd implements them. An approximation of systemd, enough to tell whether
the daemon needs something the unit forbids; LockPersonality=, RestrictNamespaces= and the others are
not applied."""
import ctypes, ctypes.util, errno, os, subprocess, sys

if len(sys.argv) < 3:
    sys.exit(__doc__)
unit, cmd = sys.argv[1], sys.argv[2:]

allow, err, families, mdwe = [], "EPERM", None, False
for line in open(unit):
    line = line.strip()
    if line.startswith("RestrictAddressFamilies="):
        families = line.split("=", 1)[1].split()
    elif line == "MemoryDenyWriteExecute=yes":
        mdwe = True
    if line.startswith("SystemCallFilter="):
        value = line.split("=", 1)[1].split()
        if value and value[0].startswith("~"):
            sys.exit("seccomp-exec: deny-lists (~) are not supported")
        allow += value
    elif line.startswith("SystemCallErrorNumber="):
        err = line.split("=", 1)[1].strip()
if not allow:
    sys.exit("seccomp-exec: no SystemCallFilter= in " + unit)


def group(name, seen):
    """The system calls of @name, recursively."""
    if name in seen:
        return set()
    seen.add(name)
    out = subprocess.run(["systemd-analyze", "syscall-filter", name], capture_output=True, text=True, check=True).stdout
    calls = set()
    for line in out.splitlines()[1:]:
        word = line.strip()
        if not word or word.startswith("#") or " " in word:
            continue
        calls |= group(word, seen) if word.startswith("@") else {word}
    return calls


calls, seen = set(), set()
for item in allow:
    calls |= group(item, seen) if item.startswith("@") else {item}
# What systemd always permits so that the service can be started and can exit.
calls |= {"execve", "exit", "exit_group", "getrlimit", "rt_sigreturn", "sigreturn"}

lib = ctypes.CDLL(ctypes.util.find_library("seccomp") or "libseccomp.so.2", use_errno=True)
lib.seccomp_init.restype = ctypes.c_void_p
lib.seccomp_init.argtypes = [ctypes.c_uint32]
lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
lib.seccomp_rule_add.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint]
lib.seccomp_load.argtypes = [ctypes.c_void_p]


class ArgCmp(ctypes.Structure):  # struct scmp_arg_cmp
    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int), ("datum_a", ctypes.c_uint64), ("datum_b", ctypes.c_uint64)]


lib.seccomp_rule_add_array.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint, ctypes.POINTER(ArgCmp)]
SCMP_ACT_ALLOW = 0x7FFF0000
SCMP_CMP_EQ, SCMP_CMP_MASKED_EQ = 4, 7
PROT_WRITE, PROT_EXEC = 0x2, 0x4
errno_value = int(err) if err.isdigit() else getattr(errno, err)
ctx = lib.seccomp_init(0x00050000 | (errno_value & 0xFFFF))  # SCMP_ACT_ERRNO(errno)
if not ctx:
    sys.exit("seccomp-exec: seccomp_init failed")

def allow_if(name, arg, op, a, b=0):
    """Allow `name` only when argument `arg` compares (op, a, b); everything else gets the default."""
    nr = lib.seccomp_syscall_resolve_name(name.encode())
    cmp = ArgCmp(arg, op, a, b)
    if nr >= 0 and lib.seccomp_rule_add_array(ctx, SCMP_ACT_ALLOW, nr, 1, ctypes.byref(cmp)) != 0:
        sys.exit("seccomp-exec: rule for %s failed" % name)


conditional = set()
if families is not None and families and not families[0].startswith("~"):
    import socket
    conditional.add("socket")
    if "socket" in calls:
        for fam in families:
            allow_if("socket", 0, SCMP_CMP_EQ, int(getattr(socket, fam)))
if mdwe:
    conditional |= {"mmap", "mmap2", "mprotect", "pkey_mprotect"}
    for name in ("mmap", "mmap2"):
        if name in calls:
            for ok in (0, PROT_WRITE, PROT_EXEC):       # never both
                allow_if(name, 2, SCMP_CMP_MASKED_EQ, PROT_WRITE | PROT_EXEC, ok)
    for name in ("mprotect", "pkey_mprotect"):
        if name in calls:
            allow_if(name, 2, SCMP_CMP_MASKED_EQ, PROT_EXEC, 0)
allowed = 0
for name in sorted(calls - conditional):
    nr = lib.seccomp_syscall_resolve_name(name.encode())
    if nr < 0:          # not a system call on this architecture
        continue
    if lib.seccomp_rule_add(ctx, SCMP_ACT_ALLOW, nr, 0) == 0:
        allowed += 1
if lib.seccomp_load(ctx) != 0:
    sys.exit("seccomp-exec: seccomp_load failed")
sys.stderr.write("seccomp-exec: %d system calls allowed (%s)%s%s, others -> %s\n" % (
    allowed, " ".join(allow), "; socket: " + " ".join(families) if families else "",
    "; no W+X memory" if mdwe else "", err))
sys.stderr.flush()
os.execvp(cmd[0], cmd)
