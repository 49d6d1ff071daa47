/*
 * kmemleak-test - the user-space twin of the kernel's samples/kmemleak/kmemleak-test.c.
 *
 * On start ("module load") it makes the kernel module's leaks:
 *   - two orphaned mallocs each of 32, 1024, 2048 and 4096 bytes   (kmalloc)
 *   - five orphaned anonymous mmaps of 64 bytes (one page each)     (vmalloc)
 *   - ten 416-byte list nodes linked from a static list head         (kzalloc + list_add_tail)
 *   - for every possible CPU a 129-byte malloc stored in a per-CPU variable (never a leak: it
 *     proves per-CPU areas are scanned); the per-CPU variable is an alloc_percpu(void *) whose
 *     handle only a static variable holds
 *   - one __alloc_percpu(64, 4) leak
 * and prints, one per line:
 *   LEAK 0x<addr>         every object it leaked (8 mallocs, then 5 mmaps)
 *   PCPU-LEAK 0x<handle>  the per-CPU leak
 *   KEEP 0x<addr>         every object it keeps (10 nodes, then one 129-byte object per CPU)
 *   READY
 * then reads commands from stdin:
 *   unload  unlinks the list without freeing ("rmmod"), prints the 10 new "LEAK 0x<addr>" lines
 *           and "UNLOADED"
 *   exit    (or EOF) exits 0
 * Works the same without libkmemleak.so (kmemleak.h's weak fallbacks); only addresses differ.
 *
 * Leaked pointers must not survive anywhere the daemon scans: each is produced in a noinline
 * helper that turns it into text at once, and the stack below us is scrubbed afterwards.
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "kmemleak.h"

struct list_head {
    struct list_head *next, *prev;
};

struct test_node {
    long header[25];
    struct list_head list;
    long footer[25];
};

static struct list_head test_list = {&test_list, &test_list};
static void *__percpu *kmemleak_test_pointer; /* DEFINE_PER_CPU(void *, kmemleak_test_pointer) */

/* output is built as text first: no binary copy of a leaked pointer stays in our data */
static char out[64 * 1024];
static size_t out_len;

static void emit(const char *tag, const void *p)
{
    out_len += (size_t)snprintf(out + out_len, sizeof(out) - out_len, "%s %p\n", tag, p);
}

static void flush_out(void)
{
    fwrite(out, 1, out_len, stdout);
    fflush(stdout);
    memset(out, 0, out_len);
    out_len = 0;
}

static __attribute__((noinline)) void leak_malloc(size_t size)
{
    void *volatile p = malloc(size);
    emit("LEAK", p);
    p = NULL;
}

static __attribute__((noinline)) void leak_mmap(size_t size)
{
    void *volatile p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED)
        return;
    emit("LEAK", p);
    p = NULL;
}

static __attribute__((noinline)) void leak_percpu(void)
{
    void __percpu *volatile p = __alloc_percpu(64, 4);
    emit("PCPU-LEAK", p);
    p = NULL;
}

static __attribute__((noinline)) void add_node(void)
{
    struct test_node *volatile elem = calloc(1, sizeof(struct test_node));
    if (!elem)
        return;
    emit("KEEP", elem);
    /* list_add_tail(&elem->list, &test_list) */
    struct list_head *n = &elem->list;
    n->prev = test_list.prev;
    n->next = &test_list;
    test_list.prev->next = n;
    test_list.prev = n;
    elem = NULL;
}

static __attribute__((noinline)) void fill_percpu(void)
{
    unsigned int cpu;
    kmemleak_test_pointer = alloc_percpu(void *);
    for_each_possible_cpu(cpu) {
        void *volatile p = malloc(129);
        *per_cpu_ptr(kmemleak_test_pointer, cpu) = p;
        emit("KEEP", p);
        p = NULL;
    }
}

static __attribute__((noinline)) void unload(void)
{
    /* list_for_each_entry_safe + list_del, no kfree: the nodes become orphans */
    struct list_head *pos = test_list.next;
    while (pos != &test_list) {
        struct list_head *next = pos->next;
        struct test_node *elem = (struct test_node *)((char *)pos - offsetof(struct test_node, list));
        emit("LEAK", elem);
        pos->next = pos->prev = NULL;
        pos = next;
    }
    test_list.next = test_list.prev = &test_list;
    pos = NULL;
}

/* overwrite the dead stack frames below ours, where copies of leaked pointers may linger */
static __attribute__((noinline)) void scrub_stack(void)
{
    volatile char buf[256 * 1024];
    memset((char *)buf, 0, sizeof(buf));
    __asm__ volatile("" : : "r"(buf) : "memory");
}

int main(void)
{
    for (int i = 0; i < 2; i++) {
        leak_malloc(32);
        leak_malloc(1024);
        leak_malloc(2048);
        leak_malloc(4096);
    }
    for (int i = 0; i < 5; i++)
        leak_mmap(64);
    leak_percpu();
    for (int i = 0; i < 10; i++)
        add_node();
    fill_percpu();
    scrub_stack();
    flush_out();
    printf("READY\n");
    fflush(stdout);

    char line[128];
    while (fgets(line, sizeof(line), stdin)) {
        if (!strncmp(line, "unload", 6)) {
            unload();
            scrub_stack();
            flush_out();
            printf("UNLOADED\n");
            fflush(stdout);
        } else if (!strncmp(line, "exit", 4)) {
            break;
        }
        memset(line, 0, sizeof(line));
    }
    return 0;
}
