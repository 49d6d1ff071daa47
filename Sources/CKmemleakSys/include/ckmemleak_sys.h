/* Thin wrappers for what Swift's Glibc module does not import. */
#ifndef CKMEMLEAK_SYS_H
#define CKMEMLEAK_SYS_H
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* process_vm_readv of one remote range into one local buffer; -1 and errno on failure. */
ssize_t ckml_process_vm_read(pid_t pid, void *local, size_t len, uint64_t remote);

/* Several remote ranges in one call (iovecs built by the caller); -1 and errno on failure. */
struct ckml_range { uint64_t remote; void *local; size_t len; };
ssize_t ckml_process_vm_readv(pid_t pid, const struct ckml_range *ranges, size_t count);

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
#endif
