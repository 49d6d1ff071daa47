/*
 * scan-client: the heap the scan benchmark measures. N live objects (default 1,000,000, random sizes
 * 16-1039 B) in 1000 singly linked chains hanging off a global array, plus L leaked objects (default
 * 1000) whose last pointers are erased.
 *   scan-client [N] [L] [zero|real]
 * zero (default, issue 4's heap): the live objects' payloads are zero. real (issue 10's heap): mixed
 * sizes (mostly small, some large), and payload words as a real program's: pointers to (and into) other
 * live objects, heap-range values that are not object starts, small integers, text, zeros.
 * Prints "LEAK 0x..." per leak and "READY", then obeys stdin:
 *   lsan   run LeakSanitizer's __lsan_do_recoverable_leak_check() (when preloaded) and print
 *          "LSAN <nanoseconds> <leaks found: 0|1>"
 *   exit   (or EOF) exit 0
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "../bench-util.h"

#define CHAINS 1000

struct node {
    struct node *next;
    uint64_t payload[];
};

static struct node *chains[CHAINS];

int __lsan_do_recoverable_leak_check(void) __attribute__((weak));

/* A real program's size mix: most objects small, a few large (up to 16 KiB). */
static size_t real_size(uint64_t *seed) {
    uint64_t r = xorshift(seed) % 100;
    if (r < 60) return 16 + xorshift(seed) % 48;
    if (r < 90) return 64 + xorshift(seed) % 448;
    if (r < 99) return 512 + xorshift(seed) % 3584;
    return 4096 + xorshift(seed) % 12288;
}

/* Fills the payload after `next` with the words of a real heap. Only objects allocated before n are
 * pointed at (so the leaks, allocated last, stay unreferenced). */
static void fill_real(struct node *n, size_t size, struct node **made, unsigned long count, uint64_t lo,
                      uint64_t hi, uint64_t *seed) {
    size_t words = (size - sizeof(struct node)) / 8;
    for (size_t w = 0; w < words; w++) {
        uint64_t r = xorshift(seed) % 100, v = 0;
        if (r < 25 && count > 0) {
            struct node *to = made[xorshift(seed) % count];
            v = (uint64_t)(uintptr_t)to + (r < 20 ? 0 : 8 * (xorshift(seed) % 2));  /* start, or just inside */
        } else if (r < 35 && hi > lo) {
            v = lo + xorshift(seed) % (hi - lo);  /* inside [min, max], not an object start */
        } else if (r < 55) {
            v = xorshift(seed) % 100000;  /* counters, lengths, flags */
        } else if (r < 80) {
            memcpy(&v, "name=val" + (xorshift(seed) % 4), 4);  /* text */
            v |= (uint64_t)(0x61 + xorshift(seed) % 26) << 40;
        }
        n->payload[w] = v;
    }
}

int main(int argc, char **argv) {
    unsigned long live = argc > 1 ? strtoul(argv[1], NULL, 0) : 1000000;
    unsigned leaks = argc > 2 ? (unsigned)strtoul(argv[2], NULL, 0) : 1000;
    int real = argc > 3 && strcmp(argv[3], "real") == 0;
    uint64_t seed = 0x2545f4914f6cdd1dULL;
    /* The objects made so far (real heap only; freed before READY, so it is no root). */
    struct node **made = real ? malloc(live * sizeof *made) : NULL;
    uint64_t lo = UINT64_MAX, hi = 0;
    for (unsigned long i = 0; i < live; i++) {
        size_t size = real ? real_size(&seed) : 16 + xorshift(&seed) % 1024;
        if (size < sizeof(struct node)) size = sizeof(struct node);
        struct node *n = malloc(size);
        memset(n, 0, size);
        if (real) {
            fill_real(n, size, made, i, lo, hi, &seed);
            made[i] = n;
            uint64_t a = (uint64_t)(uintptr_t)n;
            if (a < lo) lo = a;
            if (a + size > hi) hi = a + size;
        }
        n->next = chains[i % CHAINS];
        chains[i % CHAINS] = n;
    }
    free(made);
    leak_some(leaks, &seed);
    printf("READY\n");
    fflush(stdout);
    char line[64];
    while (fgets(line, sizeof line, stdin)) {
        if (strncmp(line, "lsan", 4) == 0) {
            if (!__lsan_do_recoverable_leak_check) {
                printf("LSAN unavailable\n");
            } else {
                uint64_t start = now_ns();
                int found = __lsan_do_recoverable_leak_check();
                printf("LSAN %llu %d\n", (unsigned long long)(now_ns() - start), found);
            }
            fflush(stdout);
        } else if (strncmp(line, "exit", 4) == 0) {
            break;
        }
    }
    return 0;
}
