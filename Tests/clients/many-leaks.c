/*
 * many-leaks - a realistic leaky program for the real-programs suite: leaks of many sizes (1..4096)
 * made from several threads and through every allocation call a program uses, next to memory it keeps.
 *
 * Four worker threads each leak one block of every size in SIZES, each thread through its own call:
 *   malloc, calloc, realloc (a block grown to the size, and one shrunk to it) and strdup (a string of
 *   size-1 characters). The main thread builds a linked list of LIST_NODES nodes and loses its head,
 *   so every node is unreachable. Each worker also keeps one block of every size in a global table
 *   (reachable: never to be reported).
 * Prints, one per line:
 *   LEAK 0x<addr>   every leaked block (the list's nodes included)
 *   KEEP 0x<addr>   every kept block
 *   READY
 * then exits 0 on "exit" or EOF.
 *
 * Leaked pointers must not survive anywhere the daemon scans: each is turned into text at once in a
 * noinline helper, workers are joined before READY, and the main stack below us is scrubbed.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const size_t SIZES[] = {
    1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 23, 24, 25, 31, 32, 33, 40, 47, 48, 49,
    63, 64, 65, 100, 127, 128, 129, 200, 255, 256, 257, 333, 500, 511, 512, 513, 1000, 1023, 1024, 1025,
    1500, 2000, 2047, 2048, 2049, 3000, 3333, 4000, 4088, 4095, 4096,
};
#define NSIZES (sizeof(SIZES) / sizeof(SIZES[0]))
#define WORKERS 4
#define LIST_NODES 32

enum call { CALL_MALLOC, CALL_CALLOC, CALL_REALLOC, CALL_STRDUP };

/* Text output per thread, built as text so that no binary copy of a leaked pointer stays in our data. */
struct text {
    char buf[16 * 1024];
    size_t len;
};
static struct text texts[WORKERS + 1];
/* external, so that the stores are never optimised away: these blocks stay referenced from .bss */
void *kept[WORKERS][NSIZES];

static void emit(struct text *t, const char *tag, const void *p)
{
    t->len += (size_t)snprintf(t->buf + t->len, sizeof(t->buf) - t->len, "%s %p\n", tag, p);
}

static __attribute__((noinline)) void *allocate(enum call call, size_t size, unsigned round)
{
    switch (call) {
    case CALL_MALLOC: {
        char *p = malloc(size);
        if (p)
            memset(p, (int)(0x40 + round), size);
        return p;
    }
    case CALL_CALLOC:
        return calloc(1, size);
    case CALL_REALLOC: {
        /* even rounds grow a small block to the size, odd rounds shrink a larger one to it */
        void *first = malloc(round % 2 ? size * 2 : 1);
        void *p = realloc(first, size);
        if (!p)
            free(first);
        return p;
    }
    case CALL_STRDUP: {
        char text[4096];
        memset(text, 'a' + (int)(round % 26), size - 1);
        text[size - 1] = '\0';
        return strdup(text);
    }
    }
    return NULL;
}

static __attribute__((noinline)) void leak_one(struct text *t, enum call call, size_t size, unsigned round)
{
    void *volatile p = allocate(call, size, round);
    emit(t, "LEAK", p);
    p = NULL;
}

static void *worker(void *arg)
{
    unsigned index = (unsigned)(uintptr_t)arg;
    struct text *t = &texts[index];
    for (unsigned i = 0; i < NSIZES; i++) {
        leak_one(t, (enum call)index, SIZES[i], i);
        kept[index][i] = allocate((enum call)index, SIZES[i], i + 1);
        emit(t, "KEEP", kept[index][i]);
    }
    return NULL;
}

struct node {
    struct node *next;
    char payload[40];
};

static __attribute__((noinline)) void lose_a_list(struct text *t)
{
    struct node *volatile head = NULL;
    for (unsigned i = 0; i < LIST_NODES; i++) {
        struct node *n = malloc(sizeof(*n));
        if (!n)
            break;
        n->next = head;
        snprintf(n->payload, sizeof(n->payload), "node %u", i);
        head = n;
        emit(t, "LEAK", n);
    }
    head = NULL;
}

static __attribute__((noinline)) void scrub_stack(void)
{
    volatile char junk[32 * 1024];
    memset((char *)junk, 0, sizeof(junk));
}

int main(void)
{
    pthread_t threads[WORKERS];
    for (unsigned i = 0; i < WORKERS; i++) {
        if (pthread_create(&threads[i], NULL, worker, (void *)(uintptr_t)i) != 0) {
            perror("pthread_create");
            return 1;
        }
    }
    for (unsigned i = 0; i < WORKERS; i++)
        pthread_join(threads[i], NULL);
    lose_a_list(&texts[WORKERS]);
    for (unsigned i = 0; i <= WORKERS; i++) {
        fwrite(texts[i].buf, 1, texts[i].len, stdout);
        memset(texts[i].buf, 0, texts[i].len);
        texts[i].len = 0;
    }
    fputs("READY\n", stdout);
    fflush(stdout);
    scrub_stack();

    char line[64];
    while (fgets(line, sizeof(line), stdin))
        if (strncmp(line, "exit", 4) == 0)
            break;
    return 0;
}
