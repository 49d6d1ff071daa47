/*
 * roots-client: places the only copy of a pointer where a detector must (or must not) see it.
 * Prints "LEAK 0x..." for each object that must be reported, "KEEP 0x..." for each that must not,
 * then "READY"; reads commands on stdin until EOF or "exit".
 *
 *   roots-client deadstack  a spinning thread and a blocked thread each keep the only pointer to a
 *                           LEAK 128 KiB below their stack pointer (dead frames, same stack mapping);
 *                           the spinning one holds a KEEP in a live frame
 *   roots-client xmm        a spinning thread keeps the only pointer to an object in xmm0 (KEEP);
 *                           command "erase" clears xmm0 (prints "ERASED"): it is a leak then
 *   roots-client guard      a tracked 1 MiB mmap object with a PROT_NONE page in its middle and the
 *                           only pointer to a KEEP block after it
 *   roots-client noreserve  a tracked 4 GiB MAP_NORESERVE object, untouched but for one page that
 *                           holds the only pointer to a KEEP block; plus 3 plain LEAKs
 *   roots-client reserve    what a JIT's heap (V8) does: a 64 MiB PROT_NONE reservation (its address in a
 *                           global) with 16 pages made writable by mprotect, the last holding the only
 *                           pointer to a KEEP block; a second reservation nothing points to (not reported,
 *                           never a leak: nothing of it was written); plus 2 plain LEAKs
 *   roots-client reserve-move
 *                           the same, then the 16 pages grown by mremap, so that they move out of the
 *                           reservation to an address nothing holds: still part of it, never a leak
 *   roots-client fakestack FILE
 *                           a thread's record in the shim's table is rewritten to claim a MAP_SHARED
 *                           mapping of FILE as its stack; that mapping holds the only pointer to a LEAK
 *   roots-client fakestack-ro FILE
 *                           the same claim on a PROT_READ MAP_PRIVATE mapping of FILE that is never
 *                           touched (FILE may be served by a FUSE server that never answers a read)
 *   roots-client table-cover FILE
 *                           nothing of its own; command "cover" maps FILE (PROT_READ, MAP_PRIVATE,
 *                           never touched: a FUSE server's that never answers) over the shim's whole
 *                           table and answers "COVERED" with a raw write (nothing may allocate then:
 *                           the shim would fault on the file); kill it afterwards
 *   roots-client vfork      one thread loops vfork + exec of /bin/true (the child sleeping 300 ms
 *                           first, so the parent waits uninterruptibly), another spins holding the
 *                           only pointer to a KEEP object in a live frame
 *   roots-client exit N     N objects (KEEP) in a global array and 256 MiB touched; "exit" exits,
 *                           "exec" execs /bin/sleep 600 without the shim (same pid and start time)
 *                           without freeing anything
 */
#define _GNU_SOURCE
#include "../../Sources/CKmemleakABI/include/kmemleak_abi.h"
#include "own-table.h"
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

static volatile int stop_threads;
static pthread_mutex_t print_lock = PTHREAD_MUTEX_INITIALIZER;

static __attribute__((noinline)) void say(const char *tag, void *p) {
    pthread_mutex_lock(&print_lock);
    printf("%s %p\n", tag, p);
    fflush(stdout);
    pthread_mutex_unlock(&print_lock);
}

/* Zeroes the 16 KiB below the caller's frame: no dead frame keeps a stray copy of a pointer. */
static __attribute__((noinline)) void scrub_stack(void) {
    char buffer[16384];
    explicit_bzero(buffer, sizeof buffer);
    __asm__ volatile("" : : "r"(buffer) : "memory");
}

/* Clears the registers that calls may have left a pointer in (rbp aside: it may be the frame pointer). */
#define SCRUB_REGISTERS()                                                                        \
    __asm__ volatile("xor %%eax, %%eax\n xor %%ecx, %%ecx\n xor %%edx, %%edx\n xor %%esi, %%esi\n" \
                     "xor %%edi, %%edi\n xor %%r8d, %%r8d\n xor %%r9d, %%r9d\n xor %%r10d, %%r10d\n" \
                     "xor %%r11d, %%r11d\n xor %%ebx, %%ebx\n xor %%r12d, %%r12d\n xor %%r13d, %%r13d\n" \
                     "xor %%r14d, %%r14d\n xor %%r15d, %%r15d\n"                                  \
                     : : : "rax", "rbx", "rcx", "rdx", "rsi", "rdi", "r8", "r9", "r10", "r11", "r12", \
                       "r13", "r14", "r15", "memory")

/* ---- deadstack ---- */

/* Allocates a LEAK and leaves its only pointer 128 KiB below the current stack pointer. */
static __attribute__((noinline)) void plant_below(void) {
    char *sp = __builtin_frame_address(0);
    void **slot = (void **)(((uintptr_t)sp - 128 * 1024) & ~(uintptr_t)7);
    void *object = malloc(96);
    memset(object, 0x5a, 96);
    say("LEAK", object);
    *(void *volatile *)slot = object;
    object = NULL;
}

static __attribute__((noinline)) void spin_holding(void *volatile *slot) {
    while (!stop_threads) __asm__ volatile("pause" : : "r"(*slot) : "memory");
}

static void *spin_with_dead_pointer(void *arg) {
    (void)arg;
    plant_below();
    /* A live frame of this running thread holds the only pointer to a KEEP object. */
    void *volatile kept = malloc(64);
    memset(kept, 0x5b, 64);
    say("KEEP", kept);
    scrub_stack();
    SCRUB_REGISTERS();
    spin_holding(&kept);
    return NULL;
}

static int blocker_pipe[2];

static void *block_with_dead_pointer(void *arg) {
    (void)arg;
    plant_below();
    scrub_stack();
    char c;
    while (read(blocker_pipe[0], &c, 1) < 0) {
    }
    return NULL;
}

/* ---- xmm ---- */

static volatile int erase_xmm, xmm_erased;
/* Volatile: every use reloads it, so no callee-saved register keeps a copy across the calls. */
static void *volatile xmm_slot;

static void *spin_with_xmm_pointer(void *arg) {
    (void)arg;
    xmm_slot = malloc(80);
    memset(xmm_slot, 0x3c, 80);
    say("KEEP", xmm_slot);
    scrub_stack();
    __asm__ volatile("movq %0, %%xmm0" : : "m"(xmm_slot) : "xmm0");
    xmm_slot = NULL;
    SCRUB_REGISTERS();
    /* Neither loop touches xmm0 (only loads of the flags and "pause"). */
    while (!erase_xmm) __asm__ volatile("pause" ::: "memory");
    __asm__ volatile("pxor %%xmm0, %%xmm0" : : : "xmm0");
    xmm_erased = 1;
    while (!stop_threads) __asm__ volatile("pause" ::: "memory");
    return NULL;
}

/* ---- guard, noreserve ---- */

static char *volatile big_object;

static int guard(void) {
    size_t size = 1 << 20, page = 4096;
    big_object = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (big_object == MAP_FAILED) return 1;
    memset(big_object, 0, size);
    if (mprotect(big_object + size / 2, page, PROT_NONE) != 0) return 1;
    void *object = malloc(72);
    memset(object, 0x77, 72);
    *(void **)(big_object + size / 2 + 3 * page + 40) = object;
    say("KEEP", object);
    return 0;
}

static int noreserve(void) {
    size_t size = (size_t)4 << 30;
    big_object = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (big_object == MAP_FAILED) return 1;
    void *object = malloc(56);
    memset(object, 0x66, 56);
    *(void **)(big_object + ((size_t)3 << 30) + 1234 * 8) = object; /* the one page touched */
    say("KEEP", object);
    for (int i = 0; i < 3; i++) {
        void *leak = malloc(40 + i);
        memset(leak, 0x22, 40 + i);
        say("LEAK", leak);
    }
    return 0;
}

static char *volatile reservation;

static int reserve(int move) {
    size_t size = (size_t)64 << 20, page = 4096;
    reservation = mmap(NULL, size, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (reservation == MAP_FAILED) return 1;
    char *committed = reservation + ((size_t)32 << 20);
    if (mprotect(committed, 16 * page, PROT_READ | PROT_WRITE) != 0) return 1;
    void *object = malloc(88);
    memset(object, 0x55, 88);
    *(void **)(committed + 15 * page + 200) = object;
    say("KEEP", object);
    /* grown past the next (PROT_NONE) page, the pages cannot stay: they move out of the reservation,
     * and only this local knows where */
    if (move && mremap(committed, 16 * page, 32 * page, MREMAP_MAYMOVE) == MAP_FAILED) return 1;
    if (mmap(NULL, 1 << 20, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0) == MAP_FAILED) return 1;
    for (int i = 0; i < 2; i++) {
        void *leak = malloc(24 + i);
        memset(leak, 0x33, 24 + i);
        say("LEAK", leak);
    }
    return 0;
}

/* ---- fakestack ---- */

static volatile pid_t claimed_tid;

static void *idle_thread(void *arg) {
    (void)arg;
    claimed_tid = (pid_t)syscall(SYS_gettid);
    char c;
    while (read(blocker_pipe[0], &c, 1) < 0) {
    }
    return NULL;
}

/* Rewrites the table record of a new idle thread to claim [lo, lo + size) as its stack. */
static int claim_as_stack(void *lo, size_t size) {
    pthread_t t;
    pthread_create(&t, NULL, idle_thread, NULL);
    while (!claimed_tid) usleep(1000);
    struct kml_header *h = own_table();
    if (!h) return 1;
    for (uint32_t i = 0; i < h->threads_used; i++) {
        struct kml_thread *record = (struct kml_thread *)((char *)h + h->threads_offset + (size_t)i * h->thread_size);
        if (record->tid != claimed_tid) continue;
        record->stack_lo = (uint64_t)(uintptr_t)lo;
        record->stack_hi = (uint64_t)(uintptr_t)lo + size;
        return 0;
    }
    return 1;
}

static int fakestack(const char *file) {
    int fd = open(file, O_RDWR | O_CREAT | O_TRUNC, 0600);
    if (fd < 0 || ftruncate(fd, 65536) != 0) return 1;
    void **mapping = mmap(NULL, 65536, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    close(fd);
    if (mapping == MAP_FAILED) return 1;
    void *object = malloc(88);
    memset(object, 0x44, 88);
    mapping[100] = object;
    say("LEAK", object);
    return claim_as_stack(mapping, 65536);
}

/* Neither we nor the shim touch the mapping: mapping a file reads nothing from it. */
static int fakestack_readonly(const char *file) {
    size_t size = 1 << 20;
    int fd = open(file, O_RDONLY);
    if (fd < 0) return 1;
    void *mapping = mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (mapping == MAP_FAILED) return 1;
    return claim_as_stack(mapping, size);
}

/* ---- vfork ---- */

static void *vfork_loop(void *arg) {
    (void)arg;
    char *const argv[] = { "/bin/true", NULL }, *const envp[] = { NULL };
    while (!stop_threads) {
        pid_t child = vfork();
        if (child == 0) {
            struct timespec pause = { 0, 300 * 1000 * 1000 };
            nanosleep(&pause, NULL);
            execve("/bin/true", argv, envp);
            _exit(127);
        }
        if (child > 0) waitpid(child, NULL, 0);
    }
    return NULL;
}

static void *spin_with_live_pointer(void *arg) {
    (void)arg;
    void *volatile object = malloc(64);
    memset(object, 0x55, 64);
    say("KEEP", object);
    spin_holding(&object);
    free(object);
    return NULL;
}

/* ---- exit ---- */

static void **volatile kept_objects; /* volatile: a write-only static would be optimized away */
static char *volatile touched_area;

int main(int argc, char **argv) {
    const char *mode = argc > 1 ? argv[1] : "";
    pthread_t threads[2];
    if (pipe(blocker_pipe) != 0) return 1;
    if (strcmp(mode, "deadstack") == 0) {
        pthread_create(&threads[0], NULL, spin_with_dead_pointer, NULL);
        pthread_create(&threads[1], NULL, block_with_dead_pointer, NULL);
    } else if (strcmp(mode, "xmm") == 0) {
        pthread_create(&threads[0], NULL, spin_with_xmm_pointer, NULL);
    } else if (strcmp(mode, "guard") == 0) {
        if (guard() != 0) { perror("guard"); return 1; }
    } else if (strcmp(mode, "noreserve") == 0) {
        if (noreserve() != 0) { perror("noreserve"); return 1; }
    } else if (strcmp(mode, "reserve") == 0 || strcmp(mode, "reserve-move") == 0) {
        if (reserve(strcmp(mode, "reserve-move") == 0) != 0) { perror(mode); return 1; }
    } else if (strcmp(mode, "fakestack") == 0 && argc > 2) {
        if (fakestack(argv[2]) != 0) { perror("fakestack"); return 1; }
    } else if (strcmp(mode, "fakestack-ro") == 0 && argc > 2) {
        if (fakestack_readonly(argv[2]) != 0) { perror("fakestack-ro"); return 1; }
    } else if (strcmp(mode, "table-cover") == 0 && argc > 2) {
        /* nothing to set up */
    } else if (strcmp(mode, "vfork") == 0) {
        pthread_create(&threads[0], NULL, vfork_loop, NULL);
        pthread_create(&threads[1], NULL, spin_with_live_pointer, NULL);
    } else if (strcmp(mode, "exit") == 0 && argc > 2) {
        long n = atol(argv[2]);
        kept_objects = calloc((size_t)n, sizeof(void *));
        for (long i = 0; i < n; i++) kept_objects[i] = malloc(32 + (size_t)(i % 64));
        touched_area = malloc(256 << 20); /* its teardown keeps the exit going for a while */
        memset(touched_area, 1, 256 << 20);
    } else {
        fprintf(stderr, "usage: roots-client deadstack|xmm|guard|noreserve|reserve|reserve-move|fakestack FILE|fakestack-ro FILE|table-cover FILE|vfork|exit N\n");
        return 64;
    }
    /* Give the threads time to announce themselves before READY (they print under a lock). */
    usleep(100 * 1000);
    say("READY", NULL);
    char line[64];
    while (fgets(line, sizeof line, stdin) && strncmp(line, "exit", 4) != 0) {
        if (strncmp(line, "exec", 4) == 0 && strcmp(mode, "exit") == 0) {
            /* a new program in the same process (same pid and start time), without the shim */
            unsetenv("LD_PRELOAD");
            char *const argv_sleep[] = {"sleep", "600", NULL};
            execv("/bin/sleep", argv_sleep);
            _exit(127);
        }
        if (strncmp(line, "cover", 5) == 0 && strcmp(mode, "table-cover") == 0) {
            struct kml_header *h = own_table();
            int fd = h ? open(argv[2], O_RDONLY) : -1;
            size_t size = h ? (size_t)h->total_size : 0;
            if (fd < 0 || mmap(h, size, PROT_READ, MAP_PRIVATE | MAP_FIXED, fd, 0) != (void *)h) return 1;
            close(fd);
            const char msg[] = "COVERED\n";
            if (write(1, msg, sizeof msg - 1) < 0) return 1;
            continue;
        }
        if (strncmp(line, "erase", 5) == 0) {
            erase_xmm = 1;
            while (!xmm_erased) usleep(1000);
            printf("ERASED\n");
            fflush(stdout);
        }
    }
    if (strcmp(mode, "exit") == 0) exit(0);
    stop_threads = 1;
    return 0;
}
