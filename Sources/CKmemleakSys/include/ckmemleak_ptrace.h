/* Stopping a client's threads briefly with ptrace (PTRACE_SEIZE + PTRACE_INTERRUPT), to confirm leak
 * candidates against a frozen image of the referrers and the threads' registers. Each call returns 0
 * or -1 with errno; ptrace is variadic, so Swift cannot call it directly. */
#ifndef CKMEMLEAK_PTRACE_H
#define CKMEMLEAK_PTRACE_H
#include <stdint.h>
#include <sys/types.h>

#define CKML_NREGS 27 /* x86_64 struct user_regs_struct: 27 unsigned long */

/* Attach without stopping, then ask the thread to stop; waits (bounded by timeout_ms) for the stop.
 * If the thread stopped for a signal being delivered, *pending_signal receives it and must be passed
 * back to ckml_ptrace_detach so the program still gets it; otherwise it is 0. */
int ckml_ptrace_seize_and_stop(pid_t tid, int timeout_ms, int *pending_signal);
/* The general-purpose registers of a stopped tracee (CKML_NREGS words). */
int ckml_ptrace_get_regs(pid_t tid, uint64_t regs[CKML_NREGS]);
/* Detach (resumes the thread), delivering `signal` if nonzero. */
int ckml_ptrace_detach(pid_t tid, int signal);
#endif
