/*
 * write-churn: a client that writes its memory nonstop while the daemon scans it, for the confirmation
 * pass that re-reads only the pages written since the main pass began (issue 10 goal 2). Every object it
 * prints as OBJ stays reachable at every instant; every one printed as LEAK is unreachable.
 *
 *   write-churn moves    pointers move back and forth between two heap arrays, one the main pass reads
 *                        early and one it reads late (copy first, clear after): a pointer that moves
 *                        from the late array to the early one between the two reads is missed by the
 *                        main pass and must be found by the confirmation.
 *   write-churn pages    threads rewrite every page of a 32 MiB heap buffer, each page holding the only
 *                        pointer to one object, moved within the page (copy first, clear after).
 *   write-churn replace  threads replace objects nonstop (malloc the new one, store it, free the old
 *                        one): the table changes during every scan, its re-sync while frozen must see it.
 *   write-churn stress   writes, forks (children write, some exec /bin/true), mremaps and munmaps
 *                        anonymous memory nonstop: nothing may hang or crash. Prints "ALIVE n" (rounds of
 *                        every activity done) on each "status" line on stdin.
 *
 * Prints OBJ/LEAK lines, READY, then runs until stdin says "exit" or reaches EOF; prints "DONE".
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#define HOLDERS 64            /* holders [0, 32) are read before [32, 64): the roots list them in order */
#define HOLDER_SLOTS 8192     /* 64 KiB each */
#define MOVED_OBJECTS 512
#define PAGES 8192            /* 32 MiB */
#define LEAKS 64

static void **holders[HOLDERS];
static char *pages;
static volatile int stop;
static uint64_t rounds[4];

static void *move_between_holders(void *arg) {
    unsigned half = (unsigned)(uintptr_t)arg;
    while (!__atomic_load_n(&stop, __ATOMIC_RELAXED)) {
        for (unsigned k = half; k < MOVED_OBJECTS; k += 2) {
            void **early = &holders[k % 32][k / 32 * 8 + 1];
            void **late = &holders[32 + k % 32][k / 32 * 8 + 1];
            void **from = __atomic_load_n(early, __ATOMIC_ACQUIRE) ? early : late;
            void **to = from == early ? late : early;
            void *object = __atomic_load_n(from, __ATOMIC_ACQUIRE);
            __atomic_store_n(to, object, __ATOMIC_SEQ_CST);
            __atomic_store_n(from, NULL, __ATOMIC_SEQ_CST);
        }
        rounds[half]++;
    }
    return NULL;
}

static void *rewrite_pages(void *arg) {
    unsigned half = (unsigned)(uintptr_t)arg;
    uint64_t n = 0;
    while (!__atomic_load_n(&stop, __ATOMIC_RELAXED)) {
        for (unsigned p = half; p < PAGES; p += 2) {
            void **page = (void **)(pages + (size_t)p * 4096);
            void **from = __atomic_load_n(&page[0], __ATOMIC_ACQUIRE) ? &page[0] : &page[256];
            void **to = from == &page[0] ? &page[256] : &page[0];
            void *object = __atomic_load_n(from, __ATOMIC_ACQUIRE);
            __atomic_store_n(to, object, __ATOMIC_SEQ_CST);
            __atomic_store_n(from, NULL, __ATOMIC_SEQ_CST);
            ((uint64_t *)page)[100 + half] = ++n; /* not a pointer */
        }
        rounds[half]++;
    }
    return NULL;
}

static void *replace_objects(void *arg) {
    unsigned half = (unsigned)(uintptr_t)arg;
    while (!__atomic_load_n(&stop, __ATOMIC_RELAXED)) {
        for (unsigned k = half; k < HOLDER_SLOTS; k += 2) {
            void **slot = &holders[k % HOLDERS][k / HOLDERS];
            void *old = *slot;
            void *fresh = malloc(16 + k % 200);
            memset(fresh, 0, 16);
            __atomic_store_n(slot, fresh, __ATOMIC_SEQ_CST);
            free(old);
        }
        rounds[half]++;
    }
    return NULL;
}

/* Anonymous memory that comes and goes: mmap, write, mremap (grow in place or move), munmap. */
static void *remap_memory(void *arg) {
    (void)arg;
    while (!__atomic_load_n(&stop, __ATOMIC_RELAXED)) {
        size_t len = 64 << 10;
        char *m = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (m == MAP_FAILED) continue;
        memset(m, 1, len);
        char *g = mremap(m, len, 4 * len, MREMAP_MAYMOVE);
        if (g != MAP_FAILED) {
            m = g;
            len *= 4;
            memset(m, 2, len);
        }
        /* punch a hole and write around it */
        madvise(m + 4096, 4096, MADV_DONTNEED);
        m[0] = 3;
        m[8192] = 3;
        munmap(m, len);
        rounds[2]++;
    }
    return NULL;
}

static void *fork_children(void *arg) {
    (void)arg;
    while (!__atomic_load_n(&stop, __ATOMIC_RELAXED)) {
        pid_t child = fork();
        if (child == 0) {
            /* the parent's memory, write-protected for the parent's daemon: the child writes it */
            memset(pages, 7, 1 << 20);
            void *p = malloc(100);
            free(p);
            if (rounds[3] % 2)
                execl("/bin/true", "true", (char *)NULL);
            _exit(0);
        }
        if (child > 0)
            waitpid(child, NULL, 0);
        rounds[3]++;
    }
    return NULL;
}

/* A program that uses userfaultfd itself: registers its own buffer with its own userfaultfd. Between
 * scans that must work (the daemon's registration would make it EBUSY). Prints OWNUFFD 0 or the errno. */
static void register_own_userfaultfd(void) {
    int err = 0;
    int fd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK | UFFD_USER_MODE_ONLY);
    struct uffdio_api api = {.api = UFFD_API};
    uintptr_t lo = ((uintptr_t)pages + 4095) & ~(uintptr_t)4095;
    uintptr_t hi = ((uintptr_t)pages + (size_t)PAGES * 4096) & ~(uintptr_t)4095;
    struct uffdio_register reg = {.range = {lo, hi - lo}, .mode = UFFDIO_REGISTER_MODE_WP};
    if (fd < 0 || ioctl(fd, UFFDIO_API, &api) != 0 || ioctl(fd, UFFDIO_REGISTER, &reg) != 0)
        err = errno;
    else
        ioctl(fd, UFFDIO_UNREGISTER, &reg.range);
    if (fd >= 0)
        close(fd);
    printf("OWNUFFD %d\n", err);
}

static __attribute__((noinline)) void plant_leaks(void) {
    for (int i = 0; i < LEAKS; i++) {
        char *leak = malloc(100);
        snprintf(leak, 100, "leak %d", i);
        printf("LEAK %p\n", (void *)leak);
    }
}

/* Overwrites the dead frames that held the leaks' pointers. */
static __attribute__((noinline)) void scrub_stack(void) {
    volatile char area[64 * 1024];
    memset((char *)area, 0, sizeof area);
}

int main(int argc, char **argv) {
    const char *mode = argc > 1 ? argv[1] : "moves";
    setvbuf(stdout, NULL, _IOLBF, 0);
    for (int i = 0; i < HOLDERS; i++) holders[i] = calloc(HOLDER_SLOTS, sizeof(void *));
    pages = malloc((size_t)PAGES * 4096);
    memset(pages, 0, (size_t)PAGES * 4096);
    plant_leaks();
    scrub_stack();
    pthread_t tids[4];
    int threads = 0;
    if (!strcmp(mode, "moves")) {
        for (unsigned k = 0; k < MOVED_OBJECTS; k++) {
            char *object = malloc(48);
            snprintf(object, 48, "moved object %u", k);
            holders[k % 32][k / 32 * 8 + 1] = object;
            printf("OBJ %p\n", (void *)object);
        }
        for (int i = 0; i < 2; i++) pthread_create(&tids[threads++], NULL, move_between_holders, (void *)(uintptr_t)i);
    } else if (!strcmp(mode, "pages")) {
        for (unsigned p = 0; p < PAGES; p++) {
            char *object = malloc(32);
            snprintf(object, 32, "page object %u", p);
            *(void **)(pages + (size_t)p * 4096) = object;
            printf("OBJ %p\n", (void *)object);
        }
        for (int i = 0; i < 2; i++) pthread_create(&tids[threads++], NULL, rewrite_pages, (void *)(uintptr_t)i);
    } else if (!strcmp(mode, "replace")) {
        for (unsigned k = 0; k < HOLDER_SLOTS; k++) holders[k % HOLDERS][k / HOLDERS] = malloc(16);
        for (int i = 0; i < 2; i++) pthread_create(&tids[threads++], NULL, replace_objects, (void *)(uintptr_t)i);
    } else if (!strcmp(mode, "stress")) {
        pthread_create(&tids[threads++], NULL, rewrite_pages, (void *)(uintptr_t)0);
        pthread_create(&tids[threads++], NULL, remap_memory, NULL);
        pthread_create(&tids[threads++], NULL, fork_children, NULL);
    } else {
        fprintf(stderr, "usage: write-churn moves|pages|replace|stress\n");
        return 64;
    }
    printf("READY\n");
    char line[64];
    while (fgets(line, sizeof line, stdin) && strncmp(line, "exit", 4) != 0) {
        if (!strncmp(line, "own-uffd", 8)) {
            register_own_userfaultfd();
        } else if (!strncmp(line, "status", 6)) {
            /* the rounds of the running activities: stress runs 0 (pages), 2 (remap), 3 (fork) */
            unsigned active = strcmp(mode, "stress") ? 0x3 : 0xd;
            uint64_t least = UINT64_MAX;
            for (int i = 0; i < 4; i++)
                if ((active >> i & 1) && __atomic_load_n(&rounds[i], __ATOMIC_RELAXED) < least)
                    least = __atomic_load_n(&rounds[i], __ATOMIC_RELAXED);
            printf("ALIVE %llu\n", (unsigned long long)least);
        }
    }
    __atomic_store_n(&stop, 1, __ATOMIC_RELAXED);
    for (int i = 0; i < threads; i++) pthread_join(tids[i], NULL);
    printf("DONE\n");
    return 0;
}
