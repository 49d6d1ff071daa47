// A scriptable client for the real-process tests (compiled once with -O2, no frame pointers,
// against kmemleak.h): one command per stdin line, one reply line per command.
import Glibc

enum ShimFixture {
    static let source = #"""
    #define _GNU_SOURCE
    #include <pthread.h>
    #include <stdint.h>
    #include <stdio.h>
    #include <stdlib.h>
    #include <string.h>
    #include <fcntl.h>
    #include <linux/filter.h>
    #include <linux/seccomp.h>
    #include <malloc.h>
    #include <sys/mman.h>
    #include <sys/prctl.h>
    #include <sys/resource.h>
    #include <sys/syscall.h>
    #include <sys/wait.h>
    #include <unistd.h>
    #include "kmemleak.h"

    void *volatile sink;
    __attribute__((noinline)) void *kml_fixture_level3(size_t n) { void *p = malloc(n); sink = p; return p; }
    __attribute__((noinline)) void *kml_fixture_level2(size_t n) { void *p = kml_fixture_level3(n); sink = p; return p; }
    __attribute__((noinline)) void *kml_fixture_level1(size_t n) { void *p = kml_fixture_level2(n); sink = p; return p; }

    static void *many[200000];
    static unsigned long many_count;

    /* a malloc under a distinct stack for each `bits`: 12 frames of stack_a or stack_b (noipa and a
     * different body each, so that the compiler neither merges nor inlines them) */
    static volatile int stack_b_calls;
    __attribute__((noinline, noipa)) void *stack_b(unsigned long bits, int depth);
    __attribute__((noinline, noipa)) void *stack_a(unsigned long bits, int depth) {
        void *p = depth == 0 ? malloc(24) : (bits & 1) ? stack_a(bits >> 1, depth - 1) : stack_b(bits >> 1, depth - 1);
        __asm__ volatile("" ::: "memory");
        return p;
    }
    __attribute__((noinline, noipa)) void *stack_b(unsigned long bits, int depth) {
        stack_b_calls++;
        void *p = depth == 0 ? malloc(24) : (bits & 1) ? stack_a(bits >> 1, depth - 1) : stack_b(bits >> 1, depth - 1);
        __asm__ volatile("" ::: "memory");
        return p;
    }
    static void print_many(void) {
        for (unsigned long i = 0; i < many_count; i++) {
            if (i % 256 == 0) printf(i ? "\nMANY" : "MANY");
            printf(" %p", many[i]);
        }
        printf("\nMANYEND %lu\n", many_count);
    }

    /* churn: threads that malloc(3000 + thread) and free a random one of their own kept blocks a
     * third of the time, all at once (the index grows and shifts entries under every stripe) */
    #define CHURN_MAX_THREADS 8
    #define CHURN_MAX_OPS 50000
    static void *churn_kept[CHURN_MAX_THREADS][CHURN_MAX_OPS];
    static unsigned long churn_count[CHURN_MAX_THREADS], churn_ops;
    static pthread_barrier_t churn_start;
    static int aligned; /* "... aligned": memalign(32, n), whose blocks are in the shim's object index
                           (a malloc block carries a header instead) */
    static void *alloc(size_t n) { return aligned ? memalign(32, n) : malloc(n); }
    static void *churn_main(void *arg) {
        unsigned long t = (unsigned long)(uintptr_t)arg, n = 0, s = 0x9e3779b97f4a7c15ul * (t + 1);
        pthread_barrier_wait(&churn_start);
        for (unsigned long i = 0; i < churn_ops; i++) {
            s ^= s << 13; s ^= s >> 7; s ^= s << 17;
            if (n && s % 3 == 0) {
                unsigned long k = (s >> 8) % n;
                free(churn_kept[t][k]);
                churn_kept[t][k] = churn_kept[t][--n];
            } else {
                churn_kept[t][n++] = alloc(3000 + t);
            }
        }
        churn_count[t] = n;
        return NULL;
    }

    /* collide: custom objects (kmemleak_alloc) every 16 bytes of the 4 KiB spans whose hashes share
     * their top 4 bits (oix_hash in kmemleak.c), i.e. one domain of the shim's object index while it
     * has at most 4096 entries (KMEMLEAK_MAX_OBJECTS=1024): a program choosing its pointers to collide */
    static char collide_pool[1 << 20];
    static unsigned long collide(unsigned long n) {
        unsigned long done = 0;
        for (uintptr_t p = (uintptr_t)collide_pool; done < n && p < (uintptr_t)collide_pool + sizeof collide_pool; p += 16) {
            uint64_t h = (uint64_t)(p >> 12) * 0xff51afd7ed558ccdull;
            uint32_t hash = (uint32_t)(h >> 32) ^ (uint32_t)h;
            if (hash >> 28 == 0) { kmemleak_alloc((void *)p, 16, 1); done++; }
        }
        return done;
    }

    /* dense: custom objects every 16 bytes of a 1 MiB pool, the densest heap a 16-byte-aligned
     * allocator makes: each 4 KiB span fills its whole run of the object index */
    static char dense_pool[1 << 20] __attribute__((aligned(4096)));
    static unsigned long dense_count;
    static unsigned long dense(unsigned long n) {
        for (dense_count = 0; dense_count < n && dense_count < sizeof dense_pool / 16; dense_count++)
            kmemleak_alloc(dense_pool + 16 * dense_count, 16, 1);
        return dense_count;
    }

    static int thread_pipe[2];
    static pthread_t threads[64];
    static int nthreads;
    static void *thread_main(void *arg) {
        printf("THREAD %ld\n", (long)syscall(SYS_gettid));
        char c;
        while (read(thread_pipe[0], &c, 1) < 0) {}
        return NULL;
    }

    int main(void) {
        setvbuf(stdout, NULL, _IOLBF, 0);
        pipe(thread_pipe);
        printf("READY %d\n", getpid());
        char line[256];
        while (fgets(line, sizeof line, stdin)) {
            unsigned long a, b, c;
            aligned = strstr(line, " aligned") != NULL;
            if (sscanf(line, "malloc %lu", &a) == 1) printf("OBJ %p\n", malloc(a));
            else if (sscanf(line, "levels %lu", &a) == 1) printf("OBJ %p\n", kml_fixture_level1(a));
            else if (sscanf(line, "free %lx", &a) == 1) { free((void *)a); printf("OK\n"); }
            else if (sscanf(line, "many %lu", &a) == 1 && a <= 200000) {
                /* a malloc(40) each, every other one freed again; the kept ones, 256 a line */
                many_count = 0;
                for (unsigned long i = 0; i < a; i++) {
                    void *q = alloc(40);
                    if (i % 2) free(q); else many[many_count++] = q;
                }
                print_many();
            }
            else if (sscanf(line, "stacks %lu %lu", &a, &b) == 2 && a <= 4096 && b <= 16) {
                /* b mallocs in a row under each of a stacks (the second and later: the trace memo's) */
                many_count = 0;
                for (unsigned long i = 0; i < a; i++)
                    for (unsigned long k = 0; k < b; k++) many[many_count++] = stack_a(i, 12);
                print_many();
            }
            else if (sscanf(line, "stacks %lu", &a) == 1 && a <= 4096) {
                /* a malloc(24) each under its own stack (index i: the low 12 bits of i choose it) */
                for (many_count = 0; many_count < a; many_count++) many[many_count] = stack_a(many_count, 12);
                print_many();
            }
            else if (sscanf(line, "churn %lu %lu", &a, &b) == 2 && a <= CHURN_MAX_THREADS && b <= CHURN_MAX_OPS) {
                pthread_t th[CHURN_MAX_THREADS];
                churn_ops = b;
                pthread_barrier_init(&churn_start, NULL, (unsigned)a);
                for (unsigned long t = 0; t < a; t++) pthread_create(&th[t], NULL, churn_main, (void *)(uintptr_t)t);
                for (unsigned long t = 0; t < a; t++) pthread_join(th[t], NULL);
                pthread_barrier_destroy(&churn_start);
                many_count = 0;
                for (unsigned long t = 0; t < a; t++)
                    for (unsigned long i = 0; i < churn_count[t] && many_count < 200000; i++) many[many_count++] = churn_kept[t][i];
                print_many();
            }
            else if (sscanf(line, "collide %lu", &a) == 1) printf("COLLIDED %lu\n", collide(a));
            else if (sscanf(line, "dense %lu", &a) == 1) printf("DENSE %lu %p\n", dense(a), (void *)dense_pool);
            else if (strncmp(line, "undense", 7) == 0) {
                for (unsigned long i = 0; i < dense_count; i++) kmemleak_free(dense_pool + 16 * i);
                dense_count = 0;
                printf("OK\n");
            }
            else if (strncmp(line, "freemany", 8) == 0) {
                for (unsigned long i = 0; i < many_count; i++) free(many[i]);
                many_count = 0;
                printf("OK\n");
            }
            else if (sscanf(line, "realloc %lx %lu", &a, &b) == 2) printf("OBJ %p\n", realloc((void *)a, b));
            else if (sscanf(line, "mmap %lu", &a) == 1)
                printf("OBJ %p\n", mmap(NULL, a, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
            else if (sscanf(line, "munmap %lx %lu", &a, &b) == 2) printf("OK %d\n", munmap((void *)a, b));
            else if (sscanf(line, "calloc %lu %lu", &a, &b) == 2) {
                unsigned char *q = calloc(a, b);
                size_t nz = 0;
                for (size_t i = 0; q && i < a * b; i++) nz += q[i] != 0;
                printf("OBJ %p %zu\n", (void *)q, nz); /* and how many bytes are not zero */
            }
            else if (sscanf(line, "memalign %lu %lu", &a, &b) == 2) printf("OBJ %p\n", memalign(a, b));
            else if (sscanf(line, "usable %lx", &a) == 1) printf("USABLE %zu\n", malloc_usable_size((void *)a));
            else if (sscanf(line, "fill %lx %lu", &a, &b) == 2) { memset((void *)a, 0xa5, b); printf("OK\n"); }
            else if (sscanf(line, "kfree %lx", &a) == 1) { kmemleak_free((void *)a); printf("OK\n"); }
            else if (sscanf(line, "freepart %lx %lu %lu", &a, &b, &c) == 3) { kmemleak_free_part((char *)a + b, c); printf("OK\n"); }
            else if (strncmp(line, "guarded", 7) == 0) {
                /* a shared (untracked) page whose page before is unmapped: p - 16 faults */
                char *m = mmap(NULL, 8192, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
                munmap(m, 4096);
                printf("PAGE %p\n", (void *)(m + 4096));
            }
            else if (strncmp(line, "seccomp", 7) == 0) {
                /* a filter that allows everything: the shim must not issue syscalls a filter might kill */
                struct sock_filter allow = BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW);
                struct sock_fprog prog = {1, &allow};
                printf("OK %d\n", prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0 &&
                                       prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog) == 0 ? 0 : -1);
            }
            else if (sscanf(line, "notleak %lx", &a) == 1) { kmemleak_not_leak((void *)a); printf("OK\n"); }
            else if (sscanf(line, "ignore %lx", &a) == 1) { kmemleak_ignore((void *)a); printf("OK\n"); }
            else if (sscanf(line, "noscan %lx", &a) == 1) { kmemleak_no_scan((void *)a); printf("OK\n"); }
            else if (sscanf(line, "transient %lx", &a) == 1) { kmemleak_transient_leak((void *)a); printf("OK\n"); }
            else if (sscanf(line, "area %lx %lu %lu", &a, &b, &c) == 3) { kmemleak_scan_area((char *)a + b, c); printf("OK\n"); }
            else if (sscanf(line, "percpu %lu", &a) == 1) {
                void *h = __alloc_percpu(a, 8);
                printf("PCPU %p %u", h, kmemleak_nr_cpu_ids());
                for (unsigned int cpu = 0; cpu < kmemleak_nr_cpu_ids(); cpu++) printf(" %p", kmemleak_per_cpu_ptr(h, cpu));
                printf("\n");
            }
            else if (sscanf(line, "freepercpu %lx", &a) == 1) { free_percpu((void *)a); printf("OK\n"); }
            else if (strncmp(line, "thread", 6) == 0) pthread_create(&threads[nthreads++], NULL, thread_main, NULL);
            else if (strncmp(line, "join", 4) == 0) {
                write(thread_pipe[1], "x", 1);
                pthread_join(threads[--nthreads], NULL);
                printf("JOINED\n");
            }
            else if (strncmp(line, "nofds", 5) == 0) {
                /* no new file descriptor from now on: the lowest free one becomes the limit */
                int fd = open("/dev/null", O_RDONLY);
                close(fd);
                struct rlimit rl;
                getrlimit(RLIMIT_NOFILE, &rl);
                rl.rlim_cur = (rlim_t)fd;
                printf("OK %d\n", setrlimit(RLIMIT_NOFILE, &rl));
            }
            else if (strncmp(line, "fork", 4) == 0 && line[4] != 'e') {
                pid_t p = fork();
                if (p == 0) {
                    void *q = malloc(777);
                    printf("CHILD %d %p\n", getpid(), q);
                    for (;;) pause();
                }
                printf("FORKED %d\n", p);
            }
            else if (strncmp(line, "forkexit", 8) == 0) {
                /* a child that allocates and exits through exit() (the shim's destructor runs) */
                pid_t p = fork();
                if (p == 0) { free(malloc(555)); exit(0); }
                int status = -1;
                waitpid(p, &status, 0);
                printf("REAPED %d %d\n", p, status);
            }
            else if (strncmp(line, "noshimexec", 10) == 0) { unsetenv("LD_PRELOAD"); execl("/proc/self/exe", "kml_sys_fixture", (char *)NULL); printf("ERROR exec\n"); }
            else if (strncmp(line, "exec", 4) == 0) { execl("/proc/self/exe", "kml_sys_fixture", (char *)NULL); printf("ERROR exec\n"); }
            else if (strncmp(line, "exit", 4) == 0) return 0;
            else printf("ERROR %s", line);
        }
        return 0;
    }
    """#

    static let path: Result<String, TestError> = {
        let dir = "/tmp/kml-sys-fixture-\(getpid())"
        mkdir(dir, 0o755)
        removeBuildDirsAtExit()
        let src = dir + "/kml_sys_fixture.c", exe = dir + "/kml_sys_fixture"
        do {
            try writeFile(src, source)
            let r = try run("/usr/bin/cc", ["-O2", "-g", "-fomit-frame-pointer", "-pthread",
                                            "-I", Shim.root + "/Sources/libkmemleak/include", "-o", exe, src])
            guard r.status == 0 else { return .failure(TestError("cc failed: \(r.output)")) }
            return .success(exe)
        } catch {
            return .failure(TestError("\(error)"))
        }
    }()

    /// Starts the fixture under the shim and waits for READY.
    static func start(env: [String: String] = [:]) throws -> ShimClient {
        let c = try ShimClient(try path.get(), env: env)
        _ = try c.child.waitFor("READY ")
        return c
    }
}

extension ShimClient {
    /// `fork`: the child's pid and its malloc(777) as the child reports them, and fork()'s result
    /// as the parent reports it (the two lines come in either order).
    func fork() throws -> (childPid: Int32, childObj: UInt64, forked: Int32) {
        try child.send("fork")
        var childPid: Int32 = 0, childObj: UInt64 = 0, forked: Int32 = 0
        while childPid == 0 || forked == 0 {
            let l = try child.readLine().split(separator: " ")
            if l.first == "CHILD", l.count == 3 { childPid = Int32(l[1]) ?? 0; childObj = hexArg(l[2]) ?? 0 }
            if l.first == "FORKED", l.count == 2 { forked = Int32(l[1]) ?? 0 }
        }
        return (childPid, childObj, forked)
    }

    /// A command that answers with MANY lines of addresses and MANYEND <count>: the addresses in order.
    func many(_ cmd: String) throws -> [UInt64] {
        try child.send(cmd)
        var addrs: [UInt64] = []
        while true {
            let l = try child.readLine(timeout: 60).split(separator: " ")
            if l.first == "MANYEND" {
                guard Int(l[1]) == addrs.count else { throw TestError("\(cmd): \(addrs.count) addresses, MANYEND \(l[1])") }
                return addrs
            }
            if l.first == "MANY" { addrs += l.dropFirst().compactMap { hexArg($0) } }
        }
    }

    /// Sends a command and returns the hex numbers of its reply (after the tag).
    func ask(_ cmd: String, _ tag: String) throws -> [UInt64] {
        let line = try child.request(cmd, expect: tag + " ")
        return line.split(separator: " ").dropFirst().compactMap { hexArg($0) }
    }
}
