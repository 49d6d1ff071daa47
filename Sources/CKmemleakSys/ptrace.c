#define _GNU_SOURCE
#include "ckmemleak_ptrace.h"
#include <elf.h>
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ptrace.h>
#include <sys/uio.h>
#include <sys/user.h>
#include <sys/wait.h>
#include <time.h>

_Static_assert(sizeof(struct user_regs_struct) == CKML_NREGS * sizeof(uint64_t), "x86_64 regs layout");
_Static_assert(sizeof(struct user_fpregs_struct) == 512, "FXSAVE legacy region");

#ifndef NT_X86_XSTATE
#define NT_X86_XSTATE 0x202
#endif

static long now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000L + ts.tv_nsec / 1000000L;
}

/* Runs on the tracer thread. On a timeout the thread stays seized with the interrupt pending: a
 * tracee can only be detached from a ptrace-stop, and one in an uninterruptible wait (vfork, disk
 * I/O) reaches none in bounded time. The tracer thread's exit lets it go (see ckml_tracer_end). */
static int seize_and_stop(pid_t tid, int timeout_ms, int *pending_signal) {
    *pending_signal = 0;
    if (ptrace(PTRACE_SEIZE, tid, 0, 0) != 0) return -1;
    if (ptrace(PTRACE_INTERRUPT, tid, 0, 0) != 0) return -1; /* gone: nothing left to detach */
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
            return -1;
        }
        if (now_ms() > deadline) { errno = ETIMEDOUT; return -1; }
        struct timespec pause = { 0, 100000 }; /* 0.1 ms between polls of a bounded wait */
        nanosleep(&pause, NULL);
    }
}

static int get_regs(pid_t tid, uint64_t *regs) {
    struct user_regs_struct r;
    if (ptrace(PTRACE_GETREGS, tid, 0, &r) != 0) return -1;
    memcpy(regs, &r, sizeof r);
    return 0;
}

static long get_vector_state(pid_t tid, void *buffer, size_t length) {
    struct iovec iov = { buffer, length };
    if (ptrace(PTRACE_GETREGSET, tid, (void *)(long)NT_X86_XSTATE, &iov) == 0) return (long)iov.iov_len;
    if (length < sizeof(struct user_fpregs_struct)) { errno = EINVAL; return -1; }
    if (ptrace(PTRACE_GETFPREGS, tid, 0, buffer) != 0) return -1;
    return (long)sizeof(struct user_fpregs_struct);
}

/* ---- the tracer thread ---- */

enum { OP_NONE, OP_SEIZE, OP_REGS, OP_VECTOR, OP_DETACH, OP_QUIT };

struct ckml_tracer {
    pthread_t thread;
    pthread_mutex_t lock;
    pthread_cond_t cond;
    int op, busy;
    pid_t tid;
    int arg;
    void *buffer;
    size_t length;
    long result;
    int error, out;
};

static void *tracer_main(void *opaque) {
    struct ckml_tracer *t = opaque;
    pthread_mutex_lock(&t->lock);
    for (;;) {
        while (t->op == OP_NONE) pthread_cond_wait(&t->cond, &t->lock);
        int op = t->op;
        if (op == OP_QUIT) break;
        errno = 0;
        long r = -1;
        switch (op) {
        case OP_SEIZE: r = seize_and_stop(t->tid, t->arg, &t->out); break;
        case OP_REGS: r = get_regs(t->tid, t->buffer); break;
        case OP_VECTOR: r = get_vector_state(t->tid, t->buffer, t->length); break;
        case OP_DETACH: r = ptrace(PTRACE_DETACH, t->tid, 0, (void *)(long)t->arg); break;
        }
        t->result = r;
        t->error = r < 0 ? errno : 0;
        t->op = OP_NONE;
        pthread_cond_broadcast(&t->cond);
    }
    pthread_mutex_unlock(&t->lock);
    return NULL;
}

struct ckml_tracer *ckml_tracer_start(void) {
    struct ckml_tracer *t = calloc(1, sizeof *t);
    if (!t) return NULL;
    pthread_mutex_init(&t->lock, NULL);
    pthread_cond_init(&t->cond, NULL);
    int rc = pthread_create(&t->thread, NULL, tracer_main, t);
    if (rc != 0) {
        pthread_cond_destroy(&t->cond);
        pthread_mutex_destroy(&t->lock);
        free(t);
        errno = rc;
        return NULL;
    }
    return t;
}

/* Runs one operation on the tracer thread and waits for it (each is bounded). */
static long tracer_call(struct ckml_tracer *t, int op, pid_t tid, int arg, void *buffer, size_t length, int *out) {
    pthread_mutex_lock(&t->lock);
    t->op = op; t->tid = tid; t->arg = arg; t->buffer = buffer; t->length = length; t->out = 0;
    pthread_cond_broadcast(&t->cond);
    while (t->op != OP_NONE) pthread_cond_wait(&t->cond, &t->lock);
    long r = t->result;
    int e = t->error;
    if (out) *out = t->out;
    pthread_mutex_unlock(&t->lock);
    errno = e;
    return r;
}

int ckml_tracer_seize_and_stop(struct ckml_tracer *t, pid_t tid, int timeout_ms, int *pending_signal) {
    return (int)tracer_call(t, OP_SEIZE, tid, timeout_ms, NULL, 0, pending_signal);
}

int ckml_tracer_get_regs(struct ckml_tracer *t, pid_t tid, uint64_t regs[CKML_NREGS]) {
    return (int)tracer_call(t, OP_REGS, tid, 0, regs, 0, NULL);
}

long ckml_tracer_get_vector_state(struct ckml_tracer *t, pid_t tid, void *buffer, size_t length) {
    return tracer_call(t, OP_VECTOR, tid, 0, buffer, length, NULL);
}

int ckml_tracer_detach(struct ckml_tracer *t, pid_t tid, int signal) {
    return (int)tracer_call(t, OP_DETACH, tid, signal, NULL, 0, NULL);
}

void ckml_tracer_end(struct ckml_tracer *t) {
    if (!t) return;
    pthread_mutex_lock(&t->lock);
    t->op = OP_QUIT;
    pthread_cond_broadcast(&t->cond);
    pthread_mutex_unlock(&t->lock);
    pthread_join(t->thread, NULL);
    pthread_cond_destroy(&t->cond);
    pthread_mutex_destroy(&t->lock);
    free(t);
}
