/*
 * pause-client: the heap the pause benchmark measures (issue 10, goal 2). N live objects (default
 * 1,000,000, random sizes 16-1039 B) in 1000 singly linked chains hanging off a global array, and a
 * gap thread that reads CLOCK_MONOTONIC every 200 us and keeps the largest gap between two
 * consecutive readings: a ptrace freeze of the process stops that thread too, so its largest gap
 * bounds the pause from below (and, when nothing else delays it, measures it). Prints "READY", then
 * obeys stdin:
 *   plant  leak L more objects (default 1000; their last pointers are erased), print "LEAK 0x..." per
 *          leak, then "PLANTED"
 *   gap    print "GAP <largest gap ns> <gaps over 1 ms> <readings>" since the last `gap`, and reset
 *   exit   (or EOF) exit 0
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
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
static _Atomic uint64_t max_gap_ns, gaps_over_1ms, readings;
static atomic_bool reset_requested;

/* Sleeps between readings (not a spin): on a 2-core machine a spinning thread would take a core
 * from the daemon it measures. A 200 us sleep adds ~0.2 ms + wake-up latency to every gap. */
static void *gap_thread(void *arg) {
    (void)arg;
    struct timespec nap = {0, 200000};
    uint64_t last = now_ns();
    for (;;) {
        nanosleep(&nap, NULL);
        uint64_t t = now_ns();
        if (atomic_exchange(&reset_requested, false)) {
            atomic_store(&max_gap_ns, 0);
            atomic_store(&gaps_over_1ms, 0);
            atomic_store(&readings, 0);
        } else {
            uint64_t gap = t - last;
            if (gap > atomic_load(&max_gap_ns)) atomic_store(&max_gap_ns, gap);
            if (gap > 1000000) atomic_fetch_add(&gaps_over_1ms, 1);
            atomic_fetch_add(&readings, 1);
        }
        last = t;
    }
    return NULL;
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
    pthread_t gap;
    if (pthread_create(&gap, NULL, gap_thread, NULL) != 0) { perror("pthread_create"); return 1; }
    printf("READY\n");
    fflush(stdout);
    char line[64];
    while (fgets(line, sizeof line, stdin)) {
        if (strncmp(line, "plant", 5) == 0) {
            leak_some(leaks, &seed);
            printf("PLANTED\n");
        } else if (strncmp(line, "gap", 3) == 0) {
            printf("GAP %llu %llu %llu\n", (unsigned long long)atomic_load(&max_gap_ns),
                   (unsigned long long)atomic_load(&gaps_over_1ms), (unsigned long long)atomic_load(&readings));
            atomic_store(&reset_requested, true);
        } else if (strncmp(line, "exit", 4) == 0) {
            break;
        }
        fflush(stdout);
    }
    return 0;
}
