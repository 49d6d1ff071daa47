/* churn: allocation-heavy workload for the shim overhead benchmark (Benchmarks/ShimOverhead).
 * A live window of 100k objects; every operation frees a random slot's object and allocates a
 * new one of a random size in [16, 1039] bytes, three noinline calls deep. Single thread.
 * usage: churn [operations (default 10000000)]
 * prints "ops=<n> ns_per_op=<wall> cpu_ns_per_op=<thread CPU time> checksum=<c>" */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "workload.h"

#define WINDOW 100000

static void *slots[WINDOW];

int main(int argc, char **argv)
{
    long ops = argc > 1 ? atol(argv[1]) : 10000000L;
    uint64_t s = 0x2545f4914f6cdd1dull, sum = 0;
    for (int i = 0; i < WINDOW; i++) {
        size_t n = 16 + rnd(&s) % 1024;
        unsigned char *p = alloc_level1(n);
        p[0] = (unsigned char)n;
        slots[i] = p;
    }
    struct timespec a, b, ca, cb;
    clock_gettime(CLOCK_MONOTONIC, &a);
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ca);
    for (long op = 0; op < ops; op++) {
        uint64_t r = rnd(&s);
        int i = (int)(r % WINDOW);
        size_t n = 16 + (r >> 32) % 1024;
        sum += *(unsigned char *)slots[i];
        free(slots[i]);
        unsigned char *p = alloc_level1(n);
        p[0] = (unsigned char)n;
        slots[i] = p;
    }
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &cb);
    clock_gettime(CLOCK_MONOTONIC, &b);
    double ns = (double)(b.tv_sec - a.tv_sec) * 1e9 + (double)(b.tv_nsec - a.tv_nsec);
    double cns = (double)(cb.tv_sec - ca.tv_sec) * 1e9 + (double)(cb.tv_nsec - ca.tv_nsec);
    /* cpu_ns_per_op: thread CPU time, immune to being descheduled on a busy machine */
    printf("ops=%ld ns_per_op=%.1f cpu_ns_per_op=%.1f checksum=%llu\n", ops, ns / (double)ops, cns / (double)ops,
           (unsigned long long)sum);
    for (int i = 0; i < WINDOW; i++)
        free(slots[i]);
    return 0;
}
