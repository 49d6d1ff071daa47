/*
 * pointer-churn: a client whose threads move pointers between memory slots nonstop, while every object
 * stays reachable at every instant. A detector that reports any of these objects has a false positive.
 *
 * Slots live in three kinds of memory: a global array (.bss), heap arrays reachable from a global, and a
 * linked chain of heap nodes. A move copies the pointer into an empty slot (CAS from NULL) before it
 * clears the old slot (CAS from the pointer), so at every instant at least one slot holds each object.
 *
 *   pointer-churn [THREADS [OBJECTS]]     prints "OBJ 0x..." per object, "READY", then churns until
 *                                         stdin says "exit" or reaches EOF; prints "MOVES n" at the end.
 */
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define GLOBAL_SLOTS 2048
#define HEAP_ARRAYS 4
#define HEAP_SLOTS 1024
#define CHAIN_NODES 64
#define CHAIN_SLOTS 16

struct chain_node {
    struct chain_node *next;
    void *slots[CHAIN_SLOTS];
};

static void *global_slots[GLOBAL_SLOTS];
static void **heap_arrays[HEAP_ARRAYS];
static struct chain_node *chain_head;
static struct chain_node *chain_index[CHAIN_NODES]; /* only used to pick a node quickly */
static volatile int stop_churning;
static uint64_t total_moves[64];

#define TOTAL_SLOTS (GLOBAL_SLOTS + HEAP_ARRAYS * HEAP_SLOTS + CHAIN_NODES * CHAIN_SLOTS)

static void **slot_at(unsigned n) {
    if (n < GLOBAL_SLOTS) return &global_slots[n];
    n -= GLOBAL_SLOTS;
    if (n < HEAP_ARRAYS * HEAP_SLOTS) return &heap_arrays[n / HEAP_SLOTS][n % HEAP_SLOTS];
    n -= HEAP_ARRAYS * HEAP_SLOTS;
    return &chain_index[n / CHAIN_SLOTS]->slots[n % CHAIN_SLOTS];
}

static uint64_t xorshift(uint64_t *s) {
    uint64_t x = *s;
    x ^= x << 13; x ^= x >> 7; x ^= x << 17;
    return *s = x;
}

static void *churn(void *arg) {
    unsigned index = (unsigned)(uintptr_t)arg;
    uint64_t seed = 0x9e3779b97f4a7c15ULL * (index + 1), moves = 0;
    while (!__atomic_load_n(&stop_churning, __ATOMIC_RELAXED)) {
        void **from = slot_at((unsigned)(xorshift(&seed) % TOTAL_SLOTS));
        void **to = slot_at((unsigned)(xorshift(&seed) % TOTAL_SLOTS));
        if (from == to) continue;
        void *object = __atomic_load_n(from, __ATOMIC_ACQUIRE);
        if (!object) continue;
        void *expected = NULL;
        if (!__atomic_compare_exchange_n(to, &expected, object, 0, __ATOMIC_SEQ_CST, __ATOMIC_RELAXED))
            continue;
        /* The copy is in place; now the old slot may go. If another thread moved it meanwhile,
         * the object simply has one more copy. */
        expected = object;
        __atomic_compare_exchange_n(from, &expected, NULL, 0, __ATOMIC_SEQ_CST, __ATOMIC_RELAXED);
        moves++;
    }
    total_moves[index] = moves;
    return NULL;
}

int main(int argc, char **argv) {
    unsigned threads = argc > 1 ? (unsigned)atoi(argv[1]) : 2;
    unsigned objects = argc > 2 ? (unsigned)atoi(argv[2]) : 1024;
    if (threads < 1 || threads > 64 || objects < 1 || objects > TOTAL_SLOTS / 2) {
        fprintf(stderr, "usage: pointer-churn [THREADS(1-64) [OBJECTS(1-%d)]]\n", TOTAL_SLOTS / 2);
        return 64;
    }
    for (int i = 0; i < HEAP_ARRAYS; i++) heap_arrays[i] = calloc(HEAP_SLOTS, sizeof(void *));
    for (int i = 0; i < CHAIN_NODES; i++) {
        struct chain_node *node = calloc(1, sizeof *node);
        node->next = chain_head;
        chain_head = node;
        chain_index[i] = node;
    }
    /* chain_index keeps the nodes reachable too; the chain itself is what a real program would have. */
    for (unsigned i = 0; i < objects; i++) {
        char *object = malloc(48);
        snprintf(object, 48, "churned object %u", i);
        *slot_at(i * 3 % TOTAL_SLOTS) = object;
        printf("OBJ %p\n", (void *)object);
    }
    pthread_t tids[64];
    for (unsigned i = 0; i < threads; i++) pthread_create(&tids[i], NULL, churn, (void *)(uintptr_t)i);
    printf("READY\n");
    fflush(stdout);

    char line[64];
    while (fgets(line, sizeof line, stdin) && strncmp(line, "exit", 4) != 0) {
    }
    __atomic_store_n(&stop_churning, 1, __ATOMIC_RELAXED);
    uint64_t moves = 0;
    for (unsigned i = 0; i < threads; i++) {
        pthread_join(tids[i], NULL);
        moves += total_moves[i];
    }
    printf("MOVES %llu\n", (unsigned long long)moves);
    return 0;
}
