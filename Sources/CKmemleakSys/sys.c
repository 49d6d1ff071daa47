#define _GNU_SOURCE
#include <malloc.h>
#include "ckmemleak_sys.h"
#include <errno.h>
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <pthread.h>
#include <stdlib.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/vfs.h>
#include <unistd.h>

ssize_t ckml_process_vm_read(pid_t pid, void *local, size_t len, uint64_t remote) {
    struct iovec l = { local, len };
    struct iovec r = { (void *)(uintptr_t)remote, len };
    return process_vm_readv(pid, &l, 1, &r, 1, 0);
}

ssize_t ckml_process_vm_write(pid_t pid, const void *local, size_t len, uint64_t remote) {
    struct iovec l = { (void *)local, len };
    struct iovec r = { (void *)(uintptr_t)remote, len };
    return process_vm_writev(pid, &l, 1, &r, 1, 0);
}

ssize_t ckml_process_vm_readv(pid_t pid, const struct ckml_range *ranges, size_t count) {
    enum { MAXV = 1024 };
    struct iovec l[MAXV], r[MAXV];
    if (count > MAXV) { errno = EINVAL; return -1; }
    for (size_t i = 0; i < count; i++) {
        l[i].iov_base = ranges[i].local; l[i].iov_len = ranges[i].len;
        r[i].iov_base = (void *)(uintptr_t)ranges[i].remote; r[i].iov_len = ranges[i].len;
    }
    return process_vm_readv(pid, l, count, r, count, 0);
}

_Static_assert(sizeof(struct ckml_iovec) == sizeof(struct iovec), "ckml_iovec is struct iovec");

ssize_t ckml_process_vm_scatter(pid_t pid, const struct ckml_iovec *local, size_t nlocal,
                                const struct ckml_iovec *remote, size_t nremote) {
    if (nlocal > 1024 || nremote > 1024) { errno = EINVAL; return -1; }
    return process_vm_readv(pid, (const struct iovec *)local, nlocal, (const struct iovec *)remote, nremote, 0);
}

long ckml_statfs_type(const char *path) {
    struct statfs s;
    if (statfs(path, &s) != 0) return -1;
    return (long)s.f_type;
}

pid_t ckml_gettid(void) { return (pid_t)syscall(SYS_gettid); }

int ckml_malloc_set_mmap_threshold(int bytes) { return mallopt(M_MMAP_THRESHOLD, bytes); }

int ckml_malloc_set_arena_max(int arenas) { return mallopt(M_ARENA_MAX, arenas); }
int ckml_malloc_trim(void) { return malloc_trim(0); }

int ckml_memfd_create(const char *name, unsigned int flags) { return memfd_create(name, flags); }

int ckml_pipe_cloexec(int fds[2]) { return pipe2(fds, O_CLOEXEC); }

int64_t ckml_seek_data(int fd, int64_t offset) { return (int64_t)lseek(fd, (off_t)offset, SEEK_DATA); }

void ckml_set_thread_name(const char *name) { prctl(PR_SET_NAME, name, 0, 0, 0); }

int ckml_pidfd_open(pid_t pid) { return (int)syscall(SYS_pidfd_open, pid, 0); }

int ckml_pidfd_getfd(int pidfd, int fd) { return (int)syscall(SYS_pidfd_getfd, pidfd, fd, 0); }

int ckml_uffd_register_wp(int uffd, uint64_t start, uint64_t len) {
    struct uffdio_register reg = {.range = {start, len}, .mode = UFFDIO_REGISTER_MODE_WP};
    return ioctl(uffd, UFFDIO_REGISTER, &reg);
}

int ckml_uffd_unregister(int uffd, uint64_t start, uint64_t len) {
    struct uffdio_range range = {start, len};
    return ioctl(uffd, UFFDIO_UNREGISTER, &range);
}

/* Debian 12's headers predate PAGEMAP_SCAN (Linux 6.7): its ABI, from include/uapi/linux/fs.h. */
#define CKML_PAGE_IS_WRITTEN (1 << 1)
#define CKML_PAGE_IS_PRESENT (1 << 3)
#define CKML_PAGE_IS_SWAPPED (1 << 4)
#define CKML_PM_SCAN_WP_MATCHING (1 << 0)
#define CKML_PM_SCAN_CHECK_WPASYNC (1 << 1)
struct ckml_pm_scan_arg {
    uint64_t size, flags, start, end, walk_end, vec, vec_len, max_pages, category_inverted, category_mask,
        category_anyof_mask, return_mask;
};
#define CKML_PAGEMAP_SCAN _IOWR('f', 16, struct ckml_pm_scan_arg)

long ckml_pagemap_scan(int pagemap, uint64_t start, uint64_t end, int protect,
                       struct ckml_page_region *vec, uint64_t vec_len, uint64_t *walk_end) {
    struct ckml_pm_scan_arg arg = {.size = sizeof arg, .start = start, .end = end};
    if (protect) {
        arg.flags = CKML_PM_SCAN_WP_MATCHING | CKML_PM_SCAN_CHECK_WPASYNC;
        arg.category_anyof_mask = CKML_PAGE_IS_PRESENT | CKML_PAGE_IS_SWAPPED;
    } else {
        arg.flags = CKML_PM_SCAN_CHECK_WPASYNC;
        arg.category_mask = CKML_PAGE_IS_WRITTEN;
        arg.return_mask = CKML_PAGE_IS_WRITTEN;
        arg.vec = (uint64_t)(uintptr_t)vec;
        arg.vec_len = vec_len;
    }
    long n = ioctl(pagemap, CKML_PAGEMAP_SCAN, &arg);
    *walk_end = arg.walk_end;
    return n;
}

int ckml_pagemap_first_present(int pagemap, uint64_t start, uint64_t end, uint64_t *found) {
    struct ckml_page_region region;
    struct ckml_pm_scan_arg arg = {.size = sizeof arg, .start = start, .end = end, .vec = (uint64_t)(uintptr_t)&region,
                                   .vec_len = 1, .max_pages = 1,
                                   .category_anyof_mask = CKML_PAGE_IS_PRESENT | CKML_PAGE_IS_SWAPPED,
                                   .return_mask = CKML_PAGE_IS_PRESENT | CKML_PAGE_IS_SWAPPED};
    long n = ioctl(pagemap, CKML_PAGEMAP_SCAN, &arg);
    if (n < 0)
        return -1;
    if (n > 0)
        *found = region.start;
    return n > 0;
}

static void *close_fd(void *arg) {
    close((int)(intptr_t)arg);
    return NULL;
}

int ckml_close_detached(int fd) {
    pthread_t t;
    pthread_attr_t a;
    if (pthread_attr_init(&a) == 0 && pthread_attr_setdetachstate(&a, PTHREAD_CREATE_DETACHED) == 0 &&
        pthread_create(&t, &a, close_fd, (void *)(intptr_t)fd) == 0) {
        pthread_attr_destroy(&a);
        return 0;
    }
    close(fd);
    return -1;
}
