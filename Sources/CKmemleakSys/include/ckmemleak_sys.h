/* Thin wrappers for what Swift's Glibc module does not import. */
#ifndef CKMEMLEAK_SYS_H
#define CKMEMLEAK_SYS_H
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* process_vm_readv of one remote range into one local buffer; -1 and errno on failure. */
ssize_t ckml_process_vm_read(pid_t pid, void *local, size_t len, uint64_t remote);

/* process_vm_writev of one local buffer into one remote range; -1 and errno on failure. */
ssize_t ckml_process_vm_write(pid_t pid, const void *local, size_t len, uint64_t remote);

/* Several remote ranges in one call (iovecs built by the caller); -1 and errno on failure. */
struct ckml_range { uint64_t remote; void *local; size_t len; };
ssize_t ckml_process_vm_readv(pid_t pid, const struct ckml_range *ranges, size_t count);

/* process_vm_readv with separate lists (each at most 1024): the remote bytes fill the local buffers in
   order, so one remote span can land in several places; -1 and errno on failure. */
struct ckml_iovec { void *base; size_t len; };
ssize_t ckml_process_vm_scatter(pid_t pid, const struct ckml_iovec *local, size_t nlocal,
                                const struct ckml_iovec *remote, size_t nremote);

/* mallopt(M_MMAP_THRESHOLD, bytes): a fixed threshold (glibc's dynamic one is then off). 1 on success. */
int ckml_malloc_set_mmap_threshold(int bytes);

/* mallopt(M_ARENA_MAX, arenas): at most this many malloc arenas. 1 on success. */
int ckml_malloc_set_arena_max(int arenas);

/* malloc_trim(0): 1 if memory was released. */
int ckml_malloc_trim(void);

/* statfs f_type of a path, or -1 and errno. */
long ckml_statfs_type(const char *path);

/* gettid() */
pid_t ckml_gettid(void);

/* memfd_create (used by tests that build tables) */
int ckml_memfd_create(const char *name, unsigned int flags);

/* lseek(fd, offset, SEEK_DATA): the next offset >= `offset` that holds data; -1 and errno (ENXIO: none). */
int64_t ckml_seek_data(int fd, int64_t offset);

/* pipe2(fds, O_CLOEXEC) (not imported by Glibc without _GNU_SOURCE); used by tests' child helper. */
int ckml_pipe_cloexec(int fds[2]);
/* Names the calling thread (prctl is variadic, so Swift cannot call it directly). */
void ckml_set_thread_name(const char *name);

/* ---- write tracking (userfaultfd write-protection in async mode + PAGEMAP_SCAN, Linux 6.7) ---- */
/* pidfd_open(pid, 0); pidfd_getfd(pidfd, fd, 0): -1 and errno. */
int ckml_pidfd_open(pid_t pid);
int ckml_pidfd_getfd(int pidfd, int fd);
/* UFFDIO_REGISTER [start, start+len) in write-protect mode: 0, or -1 and errno. */
int ckml_uffd_register_wp(int uffd, uint64_t start, uint64_t len);
/* UFFDIO_UNREGISTER of [start, start + len): the range's write-protection goes with it. */
int ckml_uffd_unregister(int uffd, uint64_t start, uint64_t len);
/* One region PAGEMAP_SCAN reports: [start, end) and its categories. */
struct ckml_page_region { uint64_t start, end, categories; };
/* PAGEMAP_SCAN on an open /proc/PID/pagemap over [start, end), failing (EPERM) where a mapping is not
 * registered for async write-protection. `protect` != 0: write-protects the present and swapped pages,
 * reports nothing (vec may be NULL). Else: reports the pages written since they were protected into
 * vec (at most vec_len regions). Returns the number of regions, or -1 and errno; *walk_end is where
 * the walk stopped (end when it went through). */
/* Closes fd on a detached thread: a file a hostile client handed over may block its close (a FUSE
 * server's flush). 0, or -1 (fd closed here then). */
int ckml_close_detached(int fd);
long ckml_pagemap_scan(int pagemap, uint64_t start, uint64_t end, int protect,
                       struct ckml_page_region *vec, uint64_t vec_len, uint64_t *walk_end);
/* PAGEMAP_SCAN (no write-protection) for the first present or swapped page in [start, end): 1 and
 * *found = its address, 0 when there is none, -1 and errno (ENOTTY/EINVAL before Linux 6.7). */
int ckml_pagemap_first_present(int pagemap, uint64_t start, uint64_t end, uint64_t *found);
#endif
