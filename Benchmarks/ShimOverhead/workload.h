/* workload.h - what the allocation benchmarks share (ShimOverhead/churn.c, Threads/threads.c): a
 * xorshift generator and an allocation three noinline calls deep, so that every malloc has a
 * stack of a few frames to unwind. */
#ifndef KML_BENCH_WORKLOAD_H
#define KML_BENCH_WORKLOAD_H
#include <stdint.h>
#include <stdlib.h>

static inline uint64_t rnd(uint64_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

__attribute__((noinline)) static void *alloc_level3(size_t n)
{
    void *p = malloc(n);
    __asm__ volatile("" ::: "memory");
    return p;
}
__attribute__((noinline)) static void *alloc_level2(size_t n)
{
    void *p = alloc_level3(n);
    __asm__ volatile("" ::: "memory");
    return p;
}
__attribute__((noinline)) static void *alloc_level1(size_t n)
{
    void *p = alloc_level2(n);
    __asm__ volatile("" ::: "memory");
    return p;
}
#endif
