/* threads: multi-threaded allocation churn for the shim scaling benchmark (Benchmarks/Threads,
 * issue 10 goal 6). T threads, each with its own live window of 10000 objects; every operation
 * frees a random slot's object and allocates a new one of 16..1039 bytes, three noinline calls deep.
 * Only the churn is timed: the threads fill their windows, meet at a barrier, and each measures its
 * own CPU time around its loop.
 * usage: threads [threads (default 8)] [operations per thread (default 1000000)]
 * prints "threads=<t> ops=<total> wall_ns_per_op=<wall / total ops> cpu_ns_per_op=<threads' CPU / total ops>
 * voluntary_switches=<the threads' context switches in their loops where they blocked (a futex)>
 * involuntary_switches=<those where they were preempted or called sched_yield>" */
#define _GNU_SOURCE /* RUSAGE_THREAD */
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <time.h>

#include "../ShimOverhead/workload.h"

#define WINDOW 10000

static long ops_per_thread;
static pthread_barrier_t start_line;
static double cpu_ns[256];
static long voluntary_switches[256], involuntary_switches[256]; /* each thread's, during its loop */

static double ns_of(const struct timespec *a, const struct timespec *b)
{
    return (double)(b->tv_sec - a->tv_sec) * 1e9 + (double)(b->tv_nsec - a->tv_nsec);
}

static void *worker(void *arg)
{
    uint64_t s = 0x2545f4914f6cdd1dull ^ ((uint64_t)(uintptr_t)arg * 0x9e3779b97f4a7c15ull), sum = 0;
    void **slots = malloc(WINDOW * sizeof(void *));
    for (int i = 0; i < WINDOW; i++)
        slots[i] = alloc_level1(16 + rnd(&s) % 1024);
    struct timespec ca, cb;
    struct rusage ua, ub;
    pthread_barrier_wait(&start_line);
    getrusage(RUSAGE_THREAD, &ua);
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ca);
    for (long op = 0; op < ops_per_thread; op++) {
        uint64_t r = rnd(&s);
        int i = (int)(r % WINDOW);
        sum += *(unsigned char *)slots[i];
        free(slots[i]);
        unsigned char *p = alloc_level1(16 + (r >> 32) % 1024);
        p[0] = (unsigned char)r;
        slots[i] = p;
    }
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &cb);
    getrusage(RUSAGE_THREAD, &ub);
    cpu_ns[(uintptr_t)arg - 1] = ns_of(&ca, &cb);
    voluntary_switches[(uintptr_t)arg - 1] = ub.ru_nvcsw - ua.ru_nvcsw;       /* blocked (a futex) */
    involuntary_switches[(uintptr_t)arg - 1] = ub.ru_nivcsw - ua.ru_nivcsw; /* preempted, or yielded */
    for (int i = 0; i < WINDOW; i++)
        free(slots[i]);
    free(slots);
    return (void *)(uintptr_t)sum;
}

int main(int argc, char **argv)
{
    int nthreads = argc > 1 ? atoi(argv[1]) : 8;
    ops_per_thread = argc > 2 ? atol(argv[2]) : 1000000L;
    if (nthreads < 1 || nthreads > 256)
        return 2;
    pthread_t th[256];
    struct timespec a, b;
    pthread_barrier_init(&start_line, NULL, (unsigned)nthreads + 1);
    for (int i = 0; i < nthreads; i++)
        pthread_create(&th[i], NULL, worker, (void *)(uintptr_t)(i + 1));
    pthread_barrier_wait(&start_line);
    clock_gettime(CLOCK_MONOTONIC, &a);
    uint64_t sum = 0;
    for (int i = 0; i < nthreads; i++) {
        void *r;
        pthread_join(th[i], &r);
        sum += (uint64_t)(uintptr_t)r;
    }
    clock_gettime(CLOCK_MONOTONIC, &b);
    double total = (double)nthreads * (double)ops_per_thread, cns = 0;
    long vcsw = 0, ivcsw = 0;
    for (int i = 0; i < nthreads; i++)
        cns += cpu_ns[i], vcsw += voluntary_switches[i], ivcsw += involuntary_switches[i];
    double ns = ns_of(&a, &b); /* includes the threads' final frees: a rough figure */
    printf("threads=%d ops=%.0f wall_ns_per_op=%.1f cpu_ns_per_op=%.1f voluntary_switches=%ld involuntary_switches=%ld checksum=%llu\n",
           nthreads, total, ns / total, cns / total, vcsw, ivcsw, (unsigned long long)sum);
    return 0;
}
