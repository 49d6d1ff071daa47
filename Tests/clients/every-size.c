/*
 * every-size: leaks one malloc block of every size from 1 to 4096 and keeps one reachable block of
 * each size in a global array. Between the blocks lie freed spacers sorted into glibc's bins, so
 * main_arena (libc.so.6's data, a root) points at the chunk headers right after many blocks: for sizes
 * with size mod 16 in 1..8 that header lies inside the block's last 8 bytes.
 * Prints "LEAK 0x..." for each leaked block and "KEEP 0x..." for each kept one, then "READY", and
 * waits for stdin EOF or "exit".
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_SIZE 4096

/* Not static: the compiler must keep the stores (nothing in the program reads them). */
void *kept[MAX_SIZE + 1];
static char printed[64];

/* Writes the line without keeping the pointer anywhere but in the printed text. */
static __attribute__((noinline)) void say(const char *tag, uintptr_t p) {
    snprintf(printed, sizeof printed, "%s 0x%lx\n", tag, (unsigned long)p);
    fputs(printed, stdout);
}

static __attribute__((noinline)) void leak_every_size(void) {
    static void *spacers[MAX_SIZE + 1];
    for (size_t size = 1; size <= MAX_SIZE; size++) {
        void *leaked = malloc(size);
        memset(leaked, 0x5a, size);
        say("LEAK", (uintptr_t)leaked);
        /* Larger than tcache's sizes, so freeing it puts its chunk in main_arena's bins. */
        spacers[size] = malloc(1100 + (size % 97) * 16);
        kept[size] = malloc(size);
        memset(kept[size], 0xa5, size);
        say("KEEP", (uintptr_t)kept[size]);
    }
    for (size_t size = 1; size <= MAX_SIZE; size++) free(spacers[size]);
    memset(spacers, 0, sizeof spacers);
    /* A request no bin can serve sorts the unsorted chunks into the small and large bins. */
    free(malloc(200000));
}

/* Overwrites the dead frames the loop above used. */
static __attribute__((noinline)) void scrub_stack(void) {
    volatile char area[64 * 1024];
    memset((char *)area, 0, sizeof area);
}

int main(void) {
    leak_every_size();
    scrub_stack();
    memset(printed, 0, sizeof printed);
    printf("READY\n");
    fflush(stdout);
    char line[64];
    while (fgets(line, sizeof line, stdin) && strncmp(line, "exit", 4) != 0) {
    }
    return 0;
}
