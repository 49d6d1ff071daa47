#define _GNU_SOURCE
#include "ckmemleak_sys.h"
#include <errno.h>
#include <fcntl.h>
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

long ckml_statfs_type(const char *path) {
    struct statfs s;
    if (statfs(path, &s) != 0) return -1;
    return (long)s.f_type;
}

pid_t ckml_gettid(void) { return (pid_t)syscall(SYS_gettid); }

int ckml_memfd_create(const char *name, unsigned int flags) { return memfd_create(name, flags); }

int ckml_pipe_cloexec(int fds[2]) { return pipe2(fds, O_CLOEXEC); }

int64_t ckml_seek_data(int fd, int64_t offset) { return (int64_t)lseek(fd, (off_t)offset, SEEK_DATA); }

void ckml_set_thread_name(const char *name) { prctl(PR_SET_NAME, name, 0, 0, 0); }
