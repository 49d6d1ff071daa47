/*
 * annotate-later - one leaked block annotated after the daemon has adopted it, for the end-to-end
 * test of annotations that arrive between two scans (kmemleak_transient_leak).
 *
 * Leaks one 64-byte block filled with 0x5a (non-zero contents: a checksum change is visible), prints
 * "LEAK 0x<addr>" and READY, then serves one command per stdin line, one reply line each:
 *   transient   kmemleak_transient_leak(block)  -> OK
 *   exit        exits 0 (so does EOF)
 * The block's address is kept only masked (no word the daemon scans points to it), and the stack the
 * annotation used is scrubbed before the reply.
 */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "kmemleak.h"

#define MASK ((uintptr_t)0xa5a5a5a5a5a5a5a5ull)
static volatile uintptr_t hidden;

static __attribute__((noinline)) void leak_block(void)
{
    char *p = malloc(64);
    if (!p)
        exit(1);
    memset(p, 0x5a, 64);
    printf("LEAK %p\n", (void *)p);
    hidden = (uintptr_t)p ^ MASK;
}

static __attribute__((noinline)) void annotate_transient(void)
{
    kmemleak_transient_leak((void *)(hidden ^ MASK));
}

/* Overwrites the dead frames the calls above used. */
static __attribute__((noinline)) void scrub_stack(void)
{
    volatile char area[64 * 1024];
    memset((char *)area, 0, sizeof area);
}

int main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    leak_block();
    scrub_stack();
    printf("READY\n");
    char line[64];
    while (fgets(line, sizeof line, stdin) && strncmp(line, "exit", 4) != 0) {
        if (strncmp(line, "transient", 9) == 0) {
            annotate_transient();
            scrub_stack();
            printf("OK\n");
        } else {
            printf("ERR unknown command\n");
        }
    }
    return 0;
}
