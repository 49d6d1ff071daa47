/* bench-util.h - small helpers shared by the benchmark clients (scan-client, pause-client). */
#ifndef KMEMLEAK_BENCH_UTIL_H
#define KMEMLEAK_BENCH_UTIL_H
#include <stdint.h>
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
#endif
