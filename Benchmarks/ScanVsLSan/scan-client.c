/*
 * scan-client: the heap the scan benchmark measures. N live objects (default 1,000,000, random sizes
 * 16-1039 B) in 1000 singly linked chains hanging off a global array, plus L leaked objects (default
 * 1000) whose last pointers are erased. Prints "LEAK 0x..." per leak and "READY", then obeys stdin:
 *   lsan   run LeakSanitizer's __lsan_do_recoverable_leak_check() (when preloaded) and print
 *          "LSAN <nanoseconds> <leaks found: 0|1>"
 *   exit   (or EOF) exit 0
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define CHAINS 1000

struct node {
    struct node *next;
    uint64_t payload[];
};

static struct node *chains[CHAINS];

int __lsan_do_recoverable_leak_check(void) __attribute__((weak));

static uint64_t xorshift(uint64_t *s) {
    uint64_t x = *s;
    x ^= x << 13; x ^= x >> 7; x ^= x << 17;
    return *s = x;
}

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static __attribute__((noinline)) void leak_some(unsigned count, uint64_t *seed) {
    for (unsigned i = 0; i < count; i++) {
        size_t size = 16 + xorshift(seed) % 1024;
        volatile char *leak = malloc(size);
        memset((char *)leak, 0x5a, size);
        printf("LEAK %p\n", (void *)leak);
        leak = NULL;
    }
}

int main(int argc, char **argv) {
    unsigned long live = argc > 1 ? strtoul(argv[1], NULL, 0) : 1000000;
    unsigned leaks = argc > 2 ? (unsigned)strtoul(argv[2], NULL, 0) : 1000;
    uint64_t seed = 0x2545f4914f6cdd1dULL;
    for (unsigned long i = 0; i < live; i++) {
        size_t size = 16 + xorshift(&seed) % 1024;
        struct node *n = malloc(size < sizeof(struct node) ? sizeof(struct node) : size);
        memset(n, 0, size);
        n->next = chains[i % CHAINS];
        chains[i % CHAINS] = n;
    }
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
