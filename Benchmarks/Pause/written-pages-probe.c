/*
 * written-pages-probe: can this kernel tell the daemon which pages a client wrote since a moment, and
 * at what cost? (issue 10 goal 2: re-read only those while the client is frozen.) Not a test: prints
 * what it finds, exit 0 when the mechanism works.
 *
 * 1. soft-dirty: clear_refs 4, write a page, pagemap bit 55 (needs CONFIG_MEM_SOFT_DIRTY).
 * 2. userfaultfd write-protect in async mode + PAGEMAP_SCAN (Linux 6.7+), driven from ANOTHER process,
 *    as the daemon would: the "client" (a forked child) only creates the userfaultfd
 *    (UFFD_USER_MODE_ONLY: no privilege needed) and maps SIZE_MIB of touched anonymous memory; the
 *    "daemon" (the parent) takes the fd with pidfd_getfd, registers and write-protects the range,
 *    the client writes two pages, and the daemon asks /proc/<child>/pagemap (PAGEMAP_SCAN,
 *    PAGE_IS_WRITTEN, re-protecting what it reports) which pages were written.
 *
 *   written-pages-probe [SIZE_MIB]      (default 512)
 *
 * Debian 12's kernel headers predate PAGEMAP_SCAN and UFFD_FEATURE_WP_ASYNC: their ABI is below.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#ifndef UFFD_FEATURE_WP_UNPOPULATED
#define UFFD_FEATURE_WP_UNPOPULATED (1 << 13)
#endif
#ifndef UFFD_FEATURE_WP_ASYNC
#define UFFD_FEATURE_WP_ASYNC (1 << 15)
#endif
#ifndef PAGEMAP_SCAN
#define PAGE_IS_WRITTEN (1 << 1)
#define PM_SCAN_WP_MATCHING (1 << 0)
#define PM_SCAN_CHECK_WPASYNC (1 << 1)
struct page_region { uint64_t start, end, categories; };
struct pm_scan_arg {
    uint64_t size, flags, start, end, walk_end, vec, vec_len, max_pages, category_inverted, category_mask,
        category_anyof_mask, return_mask;
};
#define PAGEMAP_SCAN _IOWR('f', 16, struct pm_scan_arg)
#endif

#define PAGE 4096ul

static double now_ms(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e3 + t.tv_nsec / 1e6;
}

static int soft_dirty_works(void) {
    char *p = aligned_alloc(PAGE, PAGE);
    p[0] = 1;
    int fd = open("/proc/self/clear_refs", O_WRONLY);
    if (fd < 0 || write(fd, "4", 1) != 1) { perror("clear_refs"); return 0; }
    close(fd);
    p[0] = 2;
    int pm = open("/proc/self/pagemap", O_RDONLY);
    uint64_t entry = 0;
    if (pm < 0 || pread(pm, &entry, 8, (off_t)((uintptr_t)p / PAGE * 8)) != 8) { perror("pagemap"); return 0; }
    close(pm);
    return (entry >> 55) & 1;
}

int main(int argc, char **argv) {
    size_t len = (argc > 1 ? strtoul(argv[1], NULL, 0) : 512) << 20;
    printf("soft-dirty (pagemap bit 55 after clear_refs 4 and a write): %s\n",
           soft_dirty_works() ? "works" : "NOT available (kernel without CONFIG_MEM_SOFT_DIRTY)");

    struct shared { char *base; int uffd; int error; } *sh =
        mmap(NULL, PAGE, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    int go[2], ready[2];
    if (sh == MAP_FAILED || pipe(go) || pipe(ready)) { perror("setup"); return 1; }
    // Bounded: a kernel where the write-protection is not async would block the child's write forever.
    alarm(60);
    pid_t child = fork();
    if (child == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        char *q = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        int uffd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK | UFFD_USER_MODE_ONLY);
        struct uffdio_api api = {.api = UFFD_API, .features = UFFD_FEATURE_WP_ASYNC | UFFD_FEATURE_WP_UNPOPULATED};
        if (q == MAP_FAILED || uffd < 0 || ioctl(uffd, UFFDIO_API, &api)) sh->error = 1;
        else memset(q, 1, len);
        sh->base = q;
        sh->uffd = uffd;
        char b;
        if (write(ready[1], "r", 1) != 1 || read(go[0], &b, 1) != 1) _exit(1);
        q[3 * PAGE] = 5;
        q[len - PAGE] = 5;
        if (write(ready[1], "w", 1) != 1) _exit(1);
        pause();
        _exit(0);
    }
    char b;
    if (read(ready[0], &b, 1) != 1 || sh->error) { printf("userfaultfd WP_ASYNC: NOT available in the client\n"); goto out; }
    int pidfd = (int)syscall(SYS_pidfd_open, child, 0);
    int uffd = (int)syscall(SYS_pidfd_getfd, pidfd, sh->uffd, 0);
    if (uffd < 0) { perror("pidfd_getfd"); goto out; }
    double t0 = now_ms();
    struct uffdio_register reg = {.range = {(uintptr_t)sh->base, len}, .mode = UFFDIO_REGISTER_MODE_WP};
    if (ioctl(uffd, UFFDIO_REGISTER, &reg)) { perror("UFFDIO_REGISTER from the daemon"); goto out; }
    double t1 = now_ms();
    struct uffdio_writeprotect wp = {.range = {(uintptr_t)sh->base, len}, .mode = UFFDIO_WRITEPROTECT_MODE_WP};
    if (ioctl(uffd, UFFDIO_WRITEPROTECT, &wp)) { perror("UFFDIO_WRITEPROTECT from the daemon"); goto out; }
    double t2 = now_ms();
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/pagemap", child);
    int pm = open(path, O_RDONLY);
    if (write(go[1], "g", 1) != 1 || read(ready[0], &b, 1) != 1) goto out;
    static struct page_region regions[4096];
    struct pm_scan_arg scan = {.size = sizeof scan, .flags = PM_SCAN_WP_MATCHING | PM_SCAN_CHECK_WPASYNC,
                               .start = (uintptr_t)sh->base, .end = (uintptr_t)sh->base + len,
                               .vec = (uintptr_t)regions, .vec_len = 4096,
                               .category_mask = PAGE_IS_WRITTEN, .return_mask = PAGE_IS_WRITTEN};
    double t3 = now_ms();
    long n = ioctl(pm, PAGEMAP_SCAN, &scan);
    double t4 = now_ms();
    if (n < 0) { perror("PAGEMAP_SCAN"); goto out; }
    printf("userfaultfd WP_ASYNC + PAGEMAP_SCAN from another process: works; written pages reported:");
    for (long i = 0; i < n; i++)
        printf(" %lu-%lu", (unsigned long)((regions[i].start - (uintptr_t)sh->base) / PAGE),
               (unsigned long)((regions[i].end - (uintptr_t)sh->base) / PAGE));
    printf(" (expected 3-4 %lu-%lu)\n", len / PAGE - 1, len / PAGE);
    printf("over %zu MiB: register %.2f ms, write-protect %.2f ms, PAGEMAP_SCAN + re-protect %.2f ms\n",
           len >> 20, t1 - t0, t2 - t1, t4 - t3);
out:
    kill(child, SIGKILL);
    waitpid(child, NULL, 0);
    return 0;
}
