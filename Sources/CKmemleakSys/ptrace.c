#define _GNU_SOURCE
#include "ckmemleak_ptrace.h"
#include <errno.h>
#include <signal.h>
#include <string.h>
#include <sys/ptrace.h>
#include <sys/user.h>
#include <sys/wait.h>
#include <time.h>

_Static_assert(sizeof(struct user_regs_struct) == CKML_NREGS * sizeof(uint64_t), "x86_64 regs layout");

static long now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000L + ts.tv_nsec / 1000000L;
}

int ckml_ptrace_seize_and_stop(pid_t tid, int timeout_ms, int *pending_signal) {
    *pending_signal = 0;
    if (ptrace(PTRACE_SEIZE, tid, 0, 0) != 0) return -1;
    if (ptrace(PTRACE_INTERRUPT, tid, 0, 0) != 0) {
        int saved = errno;
        ptrace(PTRACE_DETACH, tid, 0, 0);
        errno = saved;
        return -1;
    }
    long deadline = now_ms() + timeout_ms;
    for (;;) {
        int status = 0;
        pid_t r = waitpid(tid, &status, __WALL | WNOHANG);
        if (r == tid) {
            if (WIFEXITED(status) || WIFSIGNALED(status)) { errno = ESRCH; return -1; }
            if (WIFSTOPPED(status)) {
                /* PTRACE_EVENT_STOP is our interrupt (or a group stop); anything else is a
                 * signal-delivery stop whose signal must be re-injected at detach. */
                if ((status >> 16) != PTRACE_EVENT_STOP) *pending_signal = WSTOPSIG(status);
                return 0;
            }
        } else if (r < 0 && errno != EINTR) {
            int saved = errno;
            ptrace(PTRACE_DETACH, tid, 0, 0);
            errno = saved;
            return -1;
        }
        if (now_ms() > deadline) {
            ptrace(PTRACE_DETACH, tid, 0, 0);
            errno = ETIMEDOUT;
            return -1;
        }
        struct timespec pause = { 0, 100000 }; /* 0.1 ms between polls of a bounded wait */
        nanosleep(&pause, NULL);
    }
}

int ckml_ptrace_get_regs(pid_t tid, uint64_t regs[CKML_NREGS]) {
    struct user_regs_struct r;
    if (ptrace(PTRACE_GETREGS, tid, 0, &r) != 0) return -1;
    memcpy(regs, &r, sizeof r);
    return 0;
}

int ckml_ptrace_detach(pid_t tid, int signal) { return ptrace(PTRACE_DETACH, tid, 0, (void *)(long)signal); }
