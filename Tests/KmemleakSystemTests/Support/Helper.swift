// A tiny C program the tests compile once (cc) and drive over stdin/stdout: it puts known patterns
// in its memory and reports addresses, so ProcessMemory and the symbolizer are tested on a real,
// separate process.
import Glibc

enum Helper {
    static let source = #"""
    #define _GNU_SOURCE
    #include <dlfcn.h>
    #include <stdint.h>
    #include <stdio.h>
    #include <stdlib.h>
    #include <string.h>
    #include <sys/mman.h>
    #include <unistd.h>

    __attribute__((noinline)) int helper_marker(int x) { return x * 3 + 1; }
    static char data_pattern[8192] = { 1 };
    static char bss_pattern[65536];

    int main(void) {
        setvbuf(stdout, NULL, _IOLBF, 0);
        long page = sysconf(_SC_PAGESIZE);
        printf("ready %d\n", getpid());
        char line[256];
        while (fgets(line, sizeof line, stdin)) {
            char arg[200];
            unsigned long n;
            if (sscanf(line, "alloc %lu", &n) == 1) {
                unsigned char *p = malloc(n);
                for (unsigned long i = 0; i < n; i++) p[i] = (unsigned char)(i * 7 + 3);
                printf("addr %lx\n", (unsigned long)(uintptr_t)p);
            } else if (strncmp(line, "hole", 4) == 0) {
                unsigned char *p = mmap(NULL, 3 * page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
                memset(p, 0xa1, page); memset(p + page, 0xa2, page); memset(p + 2 * page, 0xa3, page);
                munmap(p + page, page);
                printf("addr %lx %lx\n", (unsigned long)(uintptr_t)p, (unsigned long)page);
            } else if (sscanf(line, "sym %199s", arg) == 1) {
                void *a = dlsym(RTLD_DEFAULT, arg);
                printf("addr %lx\n", (unsigned long)(uintptr_t)a);
            } else if (strncmp(line, "marker", 6) == 0) {
                printf("addr %lx %d\n", (unsigned long)(uintptr_t)&helper_marker, helper_marker(1));
            } else if (strncmp(line, "data", 4) == 0) {
                memset(bss_pattern, 0x5a, sizeof bss_pattern);
                printf("addr %lx %lx\n", (unsigned long)(uintptr_t)data_pattern, (unsigned long)(uintptr_t)bss_pattern);
            } else if (strncmp(line, "exit", 4) == 0) {
                return 0;
            } else {
                printf("error %s", line);
            }
        }
        return 0;
    }
    """#

    /// Path of the compiled helper (built once per test process).
    static let path: Result<String, TestError> = {
        let dir = "/tmp/kml-sys-helper-\(getpid())"
        mkdir(dir, 0o755)
        removeBuildDirsAtExit()
        let src = dir + "/helper.c", exe = dir + "/helper"
        do {
            try writeFile(src, source)
            let r = try run("/usr/bin/cc", ["-O0", "-g", "-o", exe, src, "-ldl"])
            guard r.status == 0 else { return .failure(TestError("cc failed: \(r.output)")) }
            return .success(exe)
        } catch {
            return .failure(TestError("\(error)"))
        }
    }()

    static func start() throws -> (ChildProcess, Int32) {
        let c = try ChildProcess(try path.get())
        let ready = try c.waitFor("ready ")
        guard let pid = Int32(ready.dropFirst(6)), pid == c.pid else { throw TestError("bad ready line \(ready)") }
        return (c, pid)
    }
}

/// Parses "addr <hex> [more...]" into its numbers (hex first, the rest decimal or hex as given).
func addrs(_ line: String) throws -> [UInt64] {
    let parts = line.split(separator: " ")
    guard parts.first == "addr", parts.count >= 2 else { throw TestError("bad reply \(line)") }
    return try parts.dropFirst().map { p in
        guard let v = UInt64(p, radix: 16) else { throw TestError("bad number \(p) in \(line)") }
        return v
    }
}

/// The compiled helpers live in /tmp/kml-sys-{helper,fixture}-<pid>: removed when the test process exits.
func removeBuildDirsAtExit() {
    _ = registerCleanup
}

private let registerCleanup: Void = {
    atexit {
        removeTree("/tmp/kml-sys-helper-\(getpid())")
        removeTree("/tmp/kml-sys-fixture-\(getpid())")
    }
}()
