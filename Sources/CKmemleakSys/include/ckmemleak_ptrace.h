/* Stopping a client's threads briefly with ptrace (PTRACE_SEIZE + PTRACE_INTERRUPT), to confirm leak
 * candidates against a frozen image of the referrers and the threads' registers.
 *
 * Every ptrace call runs on a dedicated tracer thread: the kernel ties tracees to the thread that
 * attached them, and when that thread exits it detaches every tracee it still has, whether or not
 * the tracee reached a ptrace-stop (PTRACE_DETACH works only from a stop). So ending the tracer
 * thread is the one way to let go of a thread that did not stop in time (vfork, disk or NFS I/O).
 * Each call returns 0 (or a size) or -1 with errno; ptrace is variadic, so Swift cannot call it. */
#ifndef CKMEMLEAK_PTRACE_H
#define CKMEMLEAK_PTRACE_H
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#define CKML_NREGS 27 /* x86_64 struct user_regs_struct: 27 unsigned long */

struct ckml_tracer;

/* Starts a tracer thread; NULL with errno when it cannot. */
struct ckml_tracer *ckml_tracer_start(void);
/* Attach without stopping, then ask the thread to stop; waits (bounded by timeout_ms) for the stop.
 * If the thread stopped for a signal being delivered, *pending_signal receives it and must be passed
 * back to ckml_tracer_detach so the program still gets it; otherwise it is 0. On ETIMEDOUT the thread
 * stays seized until ckml_tracer_end. */
int ckml_tracer_seize_and_stop(struct ckml_tracer *tracer, pid_t tid, int timeout_ms, int *pending_signal);
/* The general-purpose registers of a stopped tracee (CKML_NREGS words). */
int ckml_tracer_get_regs(struct ckml_tracer *tracer, pid_t tid, uint64_t regs[CKML_NREGS]);
/* The x87/SSE/AVX/AVX-512 state of a stopped tracee in the standard XSAVE layout
 * (PTRACE_GETREGSET NT_X86_XSTATE; PTRACE_GETFPREGS's 512-byte legacy region when that fails).
 * Returns the bytes stored (at most length). */
long ckml_tracer_get_vector_state(struct ckml_tracer *tracer, pid_t tid, void *buffer, size_t length);
/* Detach a stopped tracee (resumes it), delivering `signal` if nonzero. */
int ckml_tracer_detach(struct ckml_tracer *tracer, pid_t tid, int signal);
/* Ends the tracer thread and frees it: the kernel detaches every tracee it still has. The detach
 * of a tracee that never stopped completes shortly after this returns (the thread's exit runs on). */
void ckml_tracer_end(struct ckml_tracer *tracer);
#endif
