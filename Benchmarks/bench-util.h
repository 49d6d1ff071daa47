/* bench-util.h - small helpers shared by the benchmark clients (scan-client, pause-client). */
#ifndef KMEMLEAK_BENCH_UTIL_H
#define KMEMLEAK_BENCH_UTIL_H
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* xorshift64: a fast deterministic pseudo-random sequence (seeded by the caller) */
static inline uint64_t xorshift(uint64_t *s) {
    uint64_t x = *s;
    x ^= x << 13; x ^= x >> 7; x ^= x << 17;
    return *s = x;
}

/* CLOCK_MONOTONIC in nanoseconds */
static inline uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* count leaks of 16..1039 bytes filled with 0x5a, each announced as "LEAK 0x..." and its last pointer
 * erased (noinline: the leaks share one backtrace) */
static __attribute__((noinline)) void leak_some(unsigned count, uint64_t *seed) {
    for (unsigned i = 0; i < count; i++) {
        size_t size = 16 + xorshift(seed) % 1024;
        volatile char *leak = malloc(size);
        memset((char *)leak, 0x5a, size);
        printf("LEAK %p\n", (void *)leak);
        leak = NULL;
    }
}
#endif
