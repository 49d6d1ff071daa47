/*
 * three-sites - leaks from three call sites, for the views' end-to-end tests (kmemleak.summary,
 * kmemleak.json). Built with -g so that file:line is known.
 *
 *   leak_loop_site   1000 blocks of 24 bytes, called from one loop: one backtrace, all direct.
 *   leak_pair_site   2 blocks of 64 bytes pointing at each other (a leaked cycle: one direct, one
 *                    indirect), each also pointing at one child.
 *   leak_child_site  2 blocks of 32 bytes, each pointed to only by a pair block: indirect. Made
 *                    right after their pair (LEAK lines: pair, child, pair, child), from
 *                    lose_a_cycle: no frame of theirs is leak_pair_site.
 *
 * Prints, one per line: "LEAK 0x<addr>" for every leaked block, "DIRECT 0x<addr>" for the ones that
 * must be direct (every loop block, and the older pair block: allocated first), then READY. Exits on
 * "exit" or EOF. As in many-leaks.c, leaked pointers become text at once and the stack is scrubbed.
 *
 * `three-sites N` loops N times instead of 1000 and prints no lines for the loop's blocks (for
 * measurements with 100k leaks from one site).
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct pair {
    struct pair *other;
    void *child;
    char payload[48];
};

static char out[128 * 1024];
static size_t out_len;
static int quiet_loop;

static void emit(const char *tag, const void *p)
{
    out_len += (size_t)snprintf(out + out_len, sizeof(out) - out_len, "%s %p\n", tag, p);
}

static __attribute__((noinline)) void leak_loop_site(void)
{
    char *volatile p = malloc(24);
    if (p)
        memset(p, 0x41, 24);
    if (!quiet_loop) {
        emit("LEAK", p);
        emit("DIRECT", p);
    }
    p = NULL;
}

static __attribute__((noinline)) void *leak_child_site(void)
{
    char *p = malloc(32);
    if (p)
        memset(p, 0x43, 32);
    emit("LEAK", p);
    return p;
}

static __attribute__((noinline)) struct pair *leak_pair_site(void)
{
    struct pair *p = malloc(sizeof(*p));
    if (!p)
        return NULL;
    memset(p, 0x42, sizeof(*p));
    p->other = NULL;
    p->child = NULL;
    emit("LEAK", p);
    return p;
}

static __attribute__((noinline)) void lose_a_cycle(void)
{
    struct pair *volatile pairs[2];
    /* one call site for both, so that they share one backtrace (and so do their children); each
     * child is made right after its pair, from here: its backtrace has no leak_pair_site frame */
    for (int i = 0; i < 2; i++) {
        pairs[i] = leak_pair_site();
        if (pairs[i])
            pairs[i]->child = leak_child_site();
    }
    if (pairs[0] && pairs[1]) {
        pairs[0]->other = pairs[1];
        pairs[1]->other = pairs[0];
    }
    emit("DIRECT", pairs[0]);
    pairs[0] = NULL;
    pairs[1] = NULL;
}

static __attribute__((noinline)) void scrub_stack(void)
{
    volatile char junk[32 * 1024];
    memset((char *)junk, 0, sizeof(junk));
}

int main(int argc, char **argv)
{
    int loops = 1000;
    if (argc > 1) {
        loops = atoi(argv[1]);
        quiet_loop = 1;
    }
    for (int i = 0; i < loops; i++)
        leak_loop_site();
    lose_a_cycle();
    fwrite(out, 1, out_len, stdout);
    memset(out, 0, out_len);
    out_len = 0;
    fputs("READY\n", stdout);
    fflush(stdout);
    scrub_stack();

    char line[64];
    while (fgets(line, sizeof(line), stdin))
        if (strncmp(line, "exit", 4) == 0)
            break;
    return 0;
}
